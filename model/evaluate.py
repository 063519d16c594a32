"""Evaluates an exported pacsflow model on held-out synthetic phantoms.

    python model/evaluate.py --model DIR [--n 1000] [--seed 0] [--json FILE]

Loads the EXPORTED SavedModel and uses only its signatures, as pacsflow would. The held-out
set comes from its own random stream (data.EVAL_STREAM), disjoint from training's, with
findings cycling through all 8 combinations so every label is present in exactly half.

Metrics:
- auc[label]: ROC AUC of ``probabilities`` per finding.
- box_iou[label], box_iou.mean: mean IoU of the predicted box with the truth, present findings.
- report_token_accuracy: greedy report vs reference, position by position over the
  reference's length including eos; report_exact_match: whole report identical.
- vqa_accuracy: answer tokens identical to the reference answer (one question per phantom).
- restore_psnr_gain_db: mean over images of PSNR(restored, clean) - PSNR(noisy, clean).
- convert_psnr_db: PSNR of the conversion against the true soft-tissue rendering
  (convert_psnr_identity_db: the unconverted radiograph against it, for scale).
- synthesize_psnr_db: PSNR of ``synthesize(prompt, z)`` against the phantom that (prompt, z)
  defines.
- faithfulness[label]: synthesize with the prompt naming one finding, then ``understand`` the
  result: fraction with that finding's probability > 0.5. unrequested_finding_rate: fraction
  of (image, other finding) pairs above 0.5 over those prompts. normal_prompt_clean_rate:
  prompt "normal", fraction of images with no finding above 0.5.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import phantoms  # noqa: E402
from network import CHANNELS, CONDITION_LEN, GENERATE_TASKS, IMAGE_SIZE  # noqa: E402

CHUNK = 250


def run(signature, chunk=CHUNK, **inputs):
    """Runs a signature over numpy inputs in chunks; returns numpy outputs."""
    n = len(next(iter(inputs.values())))
    parts = []
    for s in range(0, n, chunk):
        out = signature(**{k: tf.constant(v[s:s + chunk]) for k, v in inputs.items()})
        parts.append({k: v.numpy() for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def auc(scores, positive):
    """ROC AUC via the rank-sum statistic (ties get average ranks)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = positive.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def iou(a, b):
    inter = (np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
             * np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0,
                       None))
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def psnr(x, y):
    mse = np.mean((x.astype(np.float64) - y) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-12))


def token_scores(pred, ref):
    """Position-wise accuracy over each reference up to and including eos, and exact match."""
    correct = total = exact = 0
    for p, r in zip(pred, ref):
        length = int(np.argmax(r == 2)) + 1
        hits = int(np.sum(p[:length] == r[:length]))
        correct, total = correct + hits, total + length
        exact += int(hits == length)
    return correct / total, exact / len(ref)


def understanding(model, batch):
    out = run(model.signatures["understand"], images=batch["images"])
    labels = batch["labels"].astype(bool)
    ious = iou(out["boxes"], batch["boxes"])
    result = {
        "auc": {l: auc(out["probabilities"][:, k], labels[:, k])
                for k, l in enumerate(phantoms.LABELS)},
        "box_iou": {l: float(ious[labels[:, k], k].mean()) for k, l in enumerate(phantoms.LABELS)},
    }
    result["box_iou"]["mean"] = float(ious[labels].mean())
    acc, exact = token_scores(out["report_tokens"], batch["report_tokens"])
    result["report_token_accuracy"], result["report_exact_match"] = acc, exact
    return result


def asking(model, batch):
    out = run(model.signatures["ask"], images=batch["images"],
              question_tokens=batch["question_tokens"])
    same = np.all(out["answer_tokens"] == batch["answer_tokens"], axis=1)
    return {"vqa_accuracy": float(same.mean())}


def generate(model, task, sources, noise, prompts):
    n = len(sources)
    return run(model.signatures["generate"],
               task=np.full([n], GENERATE_TASKS[task], np.int32),
               condition_tokens=data.encode(prompts, CONDITION_LEN),
               source_images=sources, noise=noise)["images"]


def restoration_and_conversion(model, batch, r):
    clean, n = batch["images"], len(batch["images"])
    noisy = np.stack([phantoms.degrade(im[..., 0], r) for im in clean])[..., None]
    noise = r.standard_normal((n, phantoms.Z_DIM)).astype(np.float32)
    restored = generate(model, "restore", noisy, noise, [""] * n)
    converted = generate(model, "convert", clean, noise, [""] * n)
    before, after = psnr(noisy, clean), psnr(restored, clean)
    return {
        "restore_psnr_noisy_db": float(before.mean()),
        "restore_psnr_restored_db": float(after.mean()),
        "restore_psnr_gain_db": float((after - before).mean()),
        "convert_psnr_db": float(psnr(converted, batch["soft_tissue"]).mean()),
        "convert_psnr_identity_db": float(psnr(clean, batch["soft_tissue"]).mean()),
    }


def synthesis(model, n, r):
    """Prompts naming one finding each, and "normal"; each image understood afterwards."""
    per = max(1, n // (len(phantoms.LABELS) + 1))
    wanted = [tuple(j == k for j in range(len(phantoms.LABELS))) for k in
              range(len(phantoms.LABELS))] + [(False,) * len(phantoms.LABELS)]
    zs = r.standard_normal((len(wanted), per, phantoms.Z_DIM)).astype(np.float32)
    sources = np.zeros((per, IMAGE_SIZE, IMAGE_SIZE, CHANNELS), np.float32)
    result = {"faithfulness": {}}
    unrequested, psnrs = [], []
    for flags, z in zip(wanted, zs):
        prompt = phantoms.condition_prompt(flags)
        images = generate(model, "synthesize", sources, z, [prompt] * per)
        truth = np.stack([phantoms.render(v, flags)["radiograph"] for v in z])[..., None]
        psnrs.append(psnr(images, truth))
        seen = run(model.signatures["understand"], images=images)["probabilities"] > 0.5
        if any(flags):
            k = flags.index(True)
            result["faithfulness"][phantoms.LABELS[k]] = float(seen[:, k].mean())
            unrequested.append(np.delete(seen, k, axis=1).ravel())
        else:
            result["normal_prompt_clean_rate"] = float((~seen.any(axis=1)).mean())
    result["faithfulness"]["mean"] = float(np.mean(list(result["faithfulness"].values())))
    result["unrequested_finding_rate"] = float(np.concatenate(unrequested).mean())
    result["synthesize_psnr_db"] = float(np.concatenate(psnrs).mean())
    return result


def evaluate(model_dir, n, seed):
    start = time.time()
    model = tf.saved_model.load(model_dir)
    batch = data.make_batch(data.rng(data.EVAL_STREAM, seed), n, training=False,
                            balanced=True)
    r = data.rng(data.EVAL_STREAM, seed, part=1)
    metrics = {"model": model_dir, "n": n, "seed": seed}
    metrics.update(understanding(model, batch))
    metrics.update(asking(model, batch))
    metrics.update(restoration_and_conversion(model, batch, r))
    metrics.update(synthesis(model, n, r))
    metrics["seconds"] = time.time() - start
    return metrics


def print_table(m):
    rows = [("n", m["n"])]
    rows += [(f"AUC {l}", m["auc"][l]) for l in phantoms.LABELS]
    rows += [(f"box IoU {l}", m["box_iou"][l]) for l in phantoms.LABELS]
    rows += [("box IoU mean", m["box_iou"]["mean"]),
             ("report token accuracy", m["report_token_accuracy"]),
             ("report exact match", m["report_exact_match"]),
             ("VQA accuracy", m["vqa_accuracy"]),
             ("restore PSNR noisy (dB)", m["restore_psnr_noisy_db"]),
             ("restore PSNR restored (dB)", m["restore_psnr_restored_db"]),
             ("restore PSNR gain (dB)", m["restore_psnr_gain_db"]),
             ("convert PSNR (dB)", m["convert_psnr_db"]),
             ("convert PSNR, unconverted (dB)", m["convert_psnr_identity_db"]),
             ("synthesize PSNR vs phantom(z) (dB)", m["synthesize_psnr_db"])]
    rows += [(f"faithfulness {l}", m["faithfulness"][l]) for l in phantoms.LABELS]
    rows += [("faithfulness mean", m["faithfulness"]["mean"]),
             ("unrequested finding rate", m["unrequested_finding_rate"]),
             ("normal prompt clean rate", m["normal_prompt_clean_rate"]),
             ("seconds", m["seconds"])]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{name:<{width}}  {text}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the metrics here")
    args = ap.parse_args()
    metrics = evaluate(args.model, args.n, args.seed)
    print_table(metrics)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
