"""Trains the pacsflow reference network on synthetic phantoms and exports it.

    python model/train.py --out DIR [--steps N] [--seed 0] [--batch B]

Every step draws a fresh batch of phantoms and trains all tasks at once with one multi-task
loss: findings (binary cross-entropy); per-patch finding scores (binary cross-entropy against
the patches the true boxes cover, positives weighted up: dense supervision that teaches the
small findings far sooner than image labels alone); boxes (L1 + 1-IoU, present findings only);
report and answer tokens (cross-entropy up to and including eos); images (L1 for synthesize,
restore and convert, a synthesized finding's box weighted up by data.SYNTH_FINDING_WEIGHT).
Runs are reproducible: fixed seeds, deterministic TF ops, data from a seeded numpy stream
(bit for bit only with TF_ENABLE_ONEDNN_OPTS=0: oneDNN kernels round differently run to run).
``--steps 0`` exports the untrained network (contract-conforming).
DIR receives only the SavedModel and its assets: no checkpoints, no event files.
"""

import argparse
import math
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import data  # noqa: E402
import network  # noqa: E402
from pacsflow_contract import BOS_ID, PAD_ID  # noqa: E402

DEFAULT_STEPS = 1800
# A finding covers one to a few of the 64 patches; weighting those up keeps the per-patch
# scores from settling on "nothing anywhere" (it made nodules learnable ~2x sooner).
PATCH_POS_WEIGHT = 10.0
WEIGHTS = {"findings": 2.0, "patches": 2.0, "boxes": 2.0, "report": 1.0, "answer": 1.0,
           "image": 10.0}


class AdamW:
    """Adam with decoupled weight decay on matrices; its state stays out of the export."""

    def __init__(self, variables, decay=0.01, b1=0.9, b2=0.98, eps=1e-8):
        self.variables = variables
        self.m = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.v = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]
        self.t = tf.Variable(0.0, trainable=False)
        self.decay, self.b1, self.b2, self.eps = decay, b1, b2, eps

    def apply(self, grads, lr):
        self.t.assign_add(1.0)
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        for var, g, m, v in zip(self.variables, grads, self.m, self.v):
            m.assign(self.b1 * m + (1 - self.b1) * g)
            v.assign(self.b2 * v + (1 - self.b2) * g * g)
            update = (m / c1) / (tf.sqrt(v / c2) + self.eps)
            if len(var.shape) >= 2:
                update += self.decay * var
            var.assign_sub(lr * update)


def learning_rate(step, steps, peak=2e-3):
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warm = max(1, min(100, steps // 10))
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def token_loss(logits, targets):
    """Mean cross-entropy over the real tokens (up to and including eos)."""
    mask = tf.cast(tf.not_equal(targets, PAD_ID), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    return tf.reduce_sum(ce * mask) / tf.reduce_sum(mask)


def box_loss(pred, true, present):
    """L1 plus 1-IoU, averaged over present findings only."""
    l1 = tf.reduce_mean(tf.abs(pred - true), axis=-1)
    inter_h = tf.nn.relu(tf.minimum(pred[..., 2], true[..., 2]) -
                         tf.maximum(pred[..., 0], true[..., 0]))
    inter_w = tf.nn.relu(tf.minimum(pred[..., 3], true[..., 3]) -
                         tf.maximum(pred[..., 1], true[..., 1]))
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    inter = inter_h * inter_w
    iou = inter / (area(pred) + area(true) - inter + 1e-6)
    per = l1 + (1.0 - iou)
    return tf.reduce_sum(per * present) / tf.maximum(tf.reduce_sum(present), 1.0)


def losses(net, b):
    tokens = net.embed_image(b["images"])  # one stem pass serves understand and ask
    deep, cache = net.understand_features(tokens)
    logit, boxes, scores = net.finding_heads(deep)
    report = net.logits(net.text(teacher_inputs(b["report_tokens"]), cache, "understand"))
    ask_cache = net.ask_cache(tokens, b["question_tokens"])
    answer = net.logits(net.text(teacher_inputs(b["answer_tokens"]), ask_cache, "ask"))
    images = net.generate_images(b["task"], b["condition_tokens"], b["source_images"],
                                 b["noise"])
    return {
        "findings": tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(labels=b["labels"], logits=logit)),
        "patches": tf.reduce_mean(tf.nn.weighted_cross_entropy_with_logits(
            labels=b["patch_targets"], logits=scores, pos_weight=PATCH_POS_WEIGHT)),
        "boxes": box_loss(boxes, b["boxes"], b["labels"]),
        "report": token_loss(report, b["report_tokens"]),
        "answer": token_loss(answer, b["answer_tokens"]),
        "image": tf.reduce_mean(b["target_weights"] * tf.abs(images - b["target_images"])),
    }


def teacher_inputs(targets):
    """Teacher forcing: bos, then the targets shifted right."""
    return tf.pad(targets[:, :-1], [[0, 0], [1, 0]], constant_values=BOS_ID)


TENSOR_KEYS = ("images", "labels", "boxes", "patch_targets", "report_tokens", "question_tokens",
               "answer_tokens", "task", "condition_tokens", "source_images", "target_images",
               "target_weights", "noise")


def make_step(net, opt):
    variables = opt.variables

    # Plain graph mode: XLA took ~20 s to compile and ran no faster on CPU.
    @tf.function
    def step(batch, lr):
        with tf.GradientTape() as tape:
            parts = losses(net, batch)
            total = tf.add_n([WEIGHTS[k] * v for k, v in parts.items()])
        grads = tape.gradient(total, variables)
        grads, _ = tf.clip_by_global_norm(grads, 1.0)
        opt.apply(grads, lr)
        return total, parts

    return step


def train(steps, seed, batch_size, log_every=25):
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    tf.config.experimental.enable_op_determinism()
    net = network.PacsflowNet(len(data.TOKENIZER), seed=seed)
    opt = AdamW(list(net.trainable_variables))
    step_fn = make_step(net, opt)
    r = data.rng(data.TRAIN_STREAM, seed)
    print(f"parameters: {sum(int(np.prod(v.shape)) for v in net.trainable_variables)}",
          flush=True)
    start = time.time()
    for i in range(steps):
        b = data.make_batch(r, batch_size)
        feed = {k: tf.constant(b[k]) for k in TENSOR_KEYS}
        total, parts = step_fn(feed, tf.constant(learning_rate(i, steps), tf.float32))
        if i % log_every == 0 or i == steps - 1:
            detail = " ".join(f"{k}={float(v):.4f}" for k, v in parts.items())
            print(f"step {i + 1}/{steps} loss={float(total):.4f} {detail} "
                  f"elapsed={time.time() - start:.1f}s", flush=True)
    return net, time.time() - start


def main():
    ap = argparse.ArgumentParser(description="Train and export the pacsflow reference model.")
    ap.add_argument("--out", required=True, help="export directory (SavedModel + assets)")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    net, seconds = train(args.steps, args.seed, args.batch)
    print(f"trained {args.steps} steps in {seconds:.1f}s", flush=True)
    network.export(net, args.out, data.TOKENIZER)
    print(f"exported {args.out}", flush=True)


if __name__ == "__main__":
    main()
