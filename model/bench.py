"""Python TensorFlow throughput of an exported model's ``understand`` signature.

    python model/bench.py --model DIR [--batches 1,8,32] [--seconds 5] [--threads INTRA,INTER]

Prints one JSON object per line: the load (time to load the SavedModel, resident memory
after it), then per batch size the images/s measured over --seconds after one warm-up call.
--threads sets TensorFlow's intra-op and inter-op thread pools (0: one thread per core).
The baseline pacsflow's Go runtime is compared with.
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


def rss_mib():
    """Resident set size of this process (VmRSS), MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def throughput(signature, images, seconds):
    signature(images=images)  # warm-up: the first call builds kernels and caches
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        signature(images=images)["probabilities"].numpy()
        calls += 1
    elapsed = time.perf_counter() - start
    return calls, elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", default="0,0", help="intra-op,inter-op threads (0: per core)")
    args = ap.parse_args()
    intra, inter = (int(t) for t in args.threads.split(","))
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    start = time.perf_counter()
    understand = tf.saved_model.load(args.model).signatures["understand"]
    print(json.dumps({"event": "load", "model": args.model,
                      "load_seconds": round(time.perf_counter() - start, 3),
                      "rss_mib": round(rss_mib(), 1)}), flush=True)
    pool = data.make_batch(data.rng(data.EVAL_STREAM, 0, part=2), 32, training=False)["images"]
    for batch in (int(b) for b in args.batches.split(",")):
        images = tf.constant(np.resize(pool, (batch,) + pool.shape[1:]))
        calls, elapsed = throughput(understand, images, args.seconds)
        print(json.dumps({"event": "throughput", "signature": "understand", "batch": batch,
                          "calls": calls, "seconds": round(elapsed, 3),
                          "images_per_second": round(calls * batch / elapsed, 2),
                          "ms_per_call": round(1000 * elapsed / calls, 3),
                          "rss_mib": round(rss_mib(), 1)}), flush=True)


if __name__ == "__main__":
    main()
