"""Derive StableHLO from an exported pacsflow model, for the PJRT runtime.

    .venv/bin/python model/export_stablehlo.py --model model/reference [--batch-sizes 1,8,32]

For each signature of the model's contract (assets/model-contract.json) and each batch size it
writes MODEL/stablehlo/<signature>.b<N>.mlirbc: the signature as a StableHLO module (MLIR
bytecode; the weights as constants; every shape fixed, the batch dimension to N) made by
TensorFlow's own converter (tensorflow_to_stablehlo, in the tensorflow wheel). Then
MODEL/stablehlo/manifest.json records, per signature, the order of the module's arguments (by
input name), the module of each batch size, and the SHA-256 of the
saved_model.pb they were derived from, so that a runtime refuses modules of another export.

The SavedModel stays the model: this only derives from it. The module's results come in an
order of the converter's choosing; pacsflow tells them apart by dtype and shape, which the
contract gives, so the export refuses a signature with two outputs of the same dtype and shape.
"""

import argparse
import hashlib
import json
import os
import re
import sys
import time

import tensorflow as tf
from tensorflow.compiler.mlir.tensorflow_to_stablehlo.python import (
    pywrap_tensorflow_to_stablehlo as tf2shlo,
)

MANIFEST_FORMAT = "pacsflow-stablehlo/1"


def convert(model_dir, signature, shapes):
    return tf2shlo.savedmodel_to_stablehlo(
        model_dir, exported_model_signatures=[signature], tag_names=["serve"], input_arg_shapes_str=shapes)


def entry_inputs(module, signature, names):
    """The order of a converted module's arguments, by input name.

    It is neither the signature's order nor alphabetical (ask: question_tokens, images); the
    module's tf.entry_function attribute keeps it, as "<signature>_<input>:0,...", which the
    bytecode holds as a string.
    """
    name = b"|".join(re.escape(f"{signature}_{n}:0".encode()) for n in names)
    for m in re.finditer(rb"(?:%s)(?:,(?:%s))*" % (name, name), module):
        found = [s[len(signature) + 1:-2] for s in m.group(0).decode().split(",")]
        if sorted(found) == sorted(names):
            return found
    raise ValueError(f"signature {signature}: no argument list naming {sorted(names)} in the converted module")


def check_outputs(signature, outputs):
    seen = {}
    for name, spec in sorted(outputs.items()):
        key = (spec["dtype"], tuple(spec["shape"]))
        if key in seen:
            raise ValueError(
                f"signature {signature}: outputs {seen[key]} and {name} have the same dtype and "
                "shape, which the PJRT runtime cannot tell apart in the module's results")
        seen[key] = name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an exported pacsflow model directory")
    ap.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes to compile for")
    ap.add_argument("--out", help="output directory (default MODEL/stablehlo)")
    args = ap.parse_args()
    sizes = sorted({int(b) for b in args.batch_sizes.split(",")})
    if not sizes or sizes[0] < 1:
        sys.exit("--batch-sizes: positive integers")
    out = args.out or os.path.join(args.model, "stablehlo")
    with open(os.path.join(args.model, "assets", "model-contract.json")) as f:
        contract = json.load(f)
    with open(os.path.join(args.model, "saved_model.pb"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    os.makedirs(out, exist_ok=True)
    manifest = {
        "format": MANIFEST_FORMAT,
        "saved_model_sha256": digest,
        "converter": f"tensorflow {tf.__version__} tensorflow_to_stablehlo",
        "batch_sizes": sizes,
        "signatures": {},
    }
    for sig, spec in sorted(contract["signatures"].items()):
        check_outputs(sig, spec["outputs"])
        # Shapes are given in the order of the module's arguments, which only a first
        # conversion (shapes left open) tells.
        order = entry_inputs(convert(args.model, sig, ""), sig, list(spec["inputs"]))
        modules = {}
        for n in sizes:
            shapes = ":".join(",".join(str(d) for d in [n] + spec["inputs"][name]["shape"][1:]) for name in order)
            start = time.time()
            module = convert(args.model, sig, shapes)
            if entry_inputs(module, sig, order) != order:
                raise ValueError(f"signature {sig}: the module's arguments changed order between conversions")
            name = f"{sig}.b{n}.mlirbc"
            with open(os.path.join(out, name), "wb") as f:
                f.write(module)
            modules[str(n)] = name
            print(f"{sig} batch {n}: {name}, {len(module)} bytes, {time.time() - start:.1f} s", flush=True)
        manifest["signatures"][sig] = {"inputs": order, "modules": modules}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {out}/manifest.json", flush=True)


if __name__ == "__main__":
    main()
