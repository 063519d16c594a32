"""Worked example of the exporter recipe: a plain Keras CNN classifier as a pacsflow model.

    python model/examples/wrap_keras_classifier.py --out DIR [--steps N]

The classifier knows only "which findings are present". The wrapper adds what the contract's
``understand`` signature also needs, in the graph and with plain math:

- boxes: class activation maps (CAM). The classifier ends in global pooling and one dense
  layer, so a label's map over the last 8x8 feature grid is the dense weights applied at each
  cell (exact for average pooling; with the max pooling used here, which learns small findings
  much sooner, it is the usual approximation). The box is the bounding box of the cells whose
  map is at least half way from its minimum to its maximum, in normalized (y0, x0, y1, x1) of
  the 64x64 input.
- report tokens: a fixed template table. Each of the 2**K combinations of thresholded
  (p > 0.5) findings has one pre-encoded report row ("nodule . pleural effusion ."; "no acute
  findings ." when none); the graph picks the row by its index. No text processing runs in
  the graph.

The model provides only ``understand``; the contract lists only that, and pacsflow refuses to
start a service that needs ``ask`` or ``generate`` with it. See model/README.md.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import pacsflow_contract as pc  # noqa: E402
import phantoms  # noqa: E402

SIZE, LABELS, REPORT_LEN = phantoms.SIZE, phantoms.LABELS, 32
SENTENCES = {"nodule": "pulmonary nodule .", "effusion": "pleural effusion .",
             "fracture": "rib fracture ."}
NORMAL = "no acute findings ."
TOKENIZER = pc.Tokenizer.from_texts(list(SENTENCES.values()) + [NORMAL])


def build_classifier(seed):
    """The network being wrapped: any Keras model mapping images to K sigmoid outputs."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 1))
    x = inputs
    for filters in (16, 32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    features = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                                   name="features")(x)
    pooled = keras.layers.GlobalMaxPooling2D()(features)
    outputs = keras.layers.Dense(len(LABELS), activation="sigmoid", name="findings")(pooled)
    return keras.Model(inputs, outputs)


def phantom_batch(r, n):
    samples = [phantoms.sample(r) for _ in range(n)]
    x = np.stack([s[2]["radiograph"] for s in samples])[..., None]
    return x, np.array([s[1] for s in samples], dtype=np.float32)


def train(model, steps, seed, batch=32):
    r = np.random.default_rng(seed)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy")
    for _ in range(steps):
        model.train_on_batch(*phantom_batch(r, batch))


def accuracy(wrapped, seed, n=256):
    """Per-label accuracy of the exported-to-be understand() at p > 0.5, on fresh phantoms."""
    x, y = phantom_batch(np.random.default_rng((seed, 1)), n)
    p = wrapped.understand(tf.constant(x))["probabilities"].numpy()
    return {label: float(np.mean((p[:, k] > 0.5) == (y[:, k] > 0.5)))
            for k, label in enumerate(LABELS)}


def report_table():
    """Row i: the encoded report for the findings whose bits are set in i (bit k = label k)."""
    rows = []
    for i in range(2 ** len(LABELS)):
        present = [label for k, label in enumerate(LABELS) if i >> k & 1]
        text = " ".join(SENTENCES[label] for label in present) or NORMAL
        rows.append(TOKENIZER.encode(text, REPORT_LEN))
    return np.array(rows, dtype=np.int32)


class Wrapped(tf.Module):
    """The contract's ``understand`` around a classifier with a CAM-capable last layer."""

    def __init__(self, classifier):
        super().__init__()
        self.features = keras.Model(classifier.inputs, classifier.get_layer("features").output)
        self.classifier = classifier
        dense = classifier.get_layer("findings")
        self.cam_weights, self.cam_bias = dense.kernel, dense.bias
        self.reports = tf.constant(report_table())

    def boxes(self, features):
        """Bounding box of each label's CAM cells at >= half their maximum."""
        cam = tf.einsum("bhwc,ck->bkhw", features, self.cam_weights)
        grid = cam.shape[-1]
        peak = tf.reduce_max(cam, axis=[2, 3], keepdims=True)
        low = tf.reduce_min(cam, axis=[2, 3], keepdims=True)
        hot = tf.cast(cam >= low + 0.5 * (peak - low), tf.float32)
        index = tf.range(grid, dtype=tf.float32)
        rows, cols = tf.reduce_max(hot, axis=3), tf.reduce_max(hot, axis=2)
        first = lambda m: tf.reduce_min(index + grid * (1.0 - m), axis=-1)
        last = lambda m: tf.reduce_max(index * m, axis=-1)
        box = tf.stack([first(rows), first(cols), last(rows) + 1, last(cols) + 1], axis=-1)
        return box / grid

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 1], tf.float32)])
    def understand(self, images):
        probabilities = self.classifier(images, training=False)
        present = tf.cast(probabilities > 0.5, tf.int32)
        row = tf.reduce_sum(present * (2 ** tf.range(len(LABELS))), axis=-1)
        report = tf.matmul(tf.one_hot(row, 2 ** len(LABELS), dtype=tf.int32), self.reports)
        return {"probabilities": probabilities,
                "boxes": self.boxes(self.features(images, training=False)),
                "report_tokens": report}


def contract():
    return pc.contract(
        name="keras-cnn-example", version="0.1.0",
        description="Example: a small Keras CNN classifier wrapped into the pacsflow contract "
                    "(CAM boxes, template reports).",
        intended_use="Demonstration of the exporter recipe on synthetic phantoms; not for "
                     "clinical use.",
        labels=LABELS,
        signatures=pc.signature_specs(["understand"], (SIZE, SIZE), 1, len(LABELS),
                                      report_len=REPORT_LEN),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.time()
    classifier = build_classifier(args.seed)
    train(classifier, args.steps, args.seed)
    wrapped = Wrapped(classifier)
    print(f"trained {args.steps} steps in {time.time() - start:.1f}s; accuracy at p > 0.5: "
          + ", ".join(f"{k} {v:.2f}" for k, v in accuracy(wrapped, args.seed).items()))
    pc.export(wrapped, args.out, {"understand": wrapped.understand}, contract(), TOKENIZER,
              keras_models=[classifier])
    print(f"exported {args.out} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
