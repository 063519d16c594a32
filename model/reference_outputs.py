"""Runs fixed, realistic inputs through an exported model and records inputs and outputs.

    python model/reference_outputs.py --model DIR --out FILE.json

For every signature the model's contract lists: a batch of 3 (held-out phantoms; encoded
questions and prompts; one example of each generate task; fixed noise). The JSON maps
signature -> {"inputs"|"outputs": {name: {"dtype", "shape", "data"}}}, data flat row-major.
Floats are written as the exact float32 values, so they round-trip bit for bit. pacsflow's Go
runtime runs the same inputs and compares (max abs diff <= 1e-5).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import phantoms  # noqa: E402
from network import CONDITION_LEN, GENERATE_TASKS, QUESTION_LEN  # noqa: E402

BATCH = 3


def reference_inputs():
    """Deterministic inputs for each contract signature."""
    r = data.rng(data.REFERENCE_STREAM, 0)
    flags = [(True, False, False), (False, True, True), (False, False, False)]
    samples = [phantoms.render(r.standard_normal(phantoms.Z_DIM), f) for f in flags]
    images = np.stack([s["radiograph"] for s in samples])[..., None].astype(np.float32)
    questions = ["is there a nodule ?", "where is the effusion ?", "how many findings ?"]
    prompts = ["effusion , fracture", "", ""]
    noisy = phantoms.degrade(samples[1]["radiograph"], r)
    sources = np.stack([np.zeros_like(noisy), noisy, samples[2]["radiograph"]])[..., None]
    return {
        "understand": {"images": images},
        "ask": {"images": images,
                "question_tokens": data.encode(questions, QUESTION_LEN)},
        "generate": {
            "task": np.array([GENERATE_TASKS[t] for t in ("synthesize", "restore", "convert")],
                             dtype=np.int32),
            "condition_tokens": data.encode(prompts, CONDITION_LEN),
            "source_images": sources.astype(np.float32),
            "noise": r.standard_normal((BATCH, phantoms.Z_DIM)).astype(np.float32),
        },
    }


def tensor_json(value):
    value = np.asarray(value)
    if value.dtype == np.float32:
        flat = [float(v) for v in value.ravel()]  # exact: every float32 is a float64
    elif value.dtype == np.int32:
        flat = [int(v) for v in value.ravel()]
    else:
        raise ValueError(f"unexpected dtype {value.dtype}")
    return {"dtype": value.dtype.name, "shape": list(value.shape), "data": flat}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(os.path.join(args.model, "assets", "model-contract.json")) as f:
        listed = json.load(f)["signatures"]
    model = tf.saved_model.load(args.model)
    inputs = reference_inputs()
    result = {}
    for name in listed:
        feed = inputs[name]
        outputs = model.signatures[name](**{k: tf.constant(v) for k, v in feed.items()})
        result[name] = {
            "inputs": {k: tensor_json(v) for k, v in feed.items()},
            "outputs": {k: tensor_json(v.numpy()) for k, v in sorted(outputs.items())},
        }
    with open(args.out, "w") as f:
        json.dump(result, f)
    print(f"wrote {args.out}: {', '.join(result)}")


if __name__ == "__main__":
    main()
