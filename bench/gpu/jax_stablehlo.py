"""JAX executing the StableHLO modules pacsflow's pjrt runtime runs, on the same device, for the
comparison bench/gpu/run.sh prints (the issue's target: pacsflow >= 0.8x JAX's images/s).

    python3 bench/gpu/jax_stablehlo.py --model DIR [--batches 1,8,32] [--seconds 5]

For each batch size it compiles DIR/stablehlo/understand.b<N>.mlirbc with JAX's backend for
its default device, then runs it on the same synthetic batch the Go program uses (pixel i is
(i mod 251) / 251) for --seconds, copying every result to the host as pacsflow does, and prints
RESULT lines like bench/gpu's. Needs jax and jaxlib (and, for a GPU, the CUDA plugin wheel).
"""

import argparse
import os
import time

import jax
import numpy as np
from jax._src.lib import xla_client
from jax.extend import backend


def compile_module(be, code):
    options = xla_client.CompileOptions()
    if hasattr(be, "compile_and_load"):
        return be.compile_and_load(code, be.devices()[:1], options)
    return be.compile(code, options)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    be = backend.get_backend()
    device = be.devices()[0]
    print(f"jax {jax.__version__} on {be.platform} ({device.device_kind})", flush=True)
    for n in (int(b) for b in args.batches.split(",")):
        path = os.path.join(args.model, "stablehlo", f"understand.b{n}.mlirbc")
        with open(path, "rb") as f:
            code = f.read()
        start = time.time()
        exe = compile_module(be, code)
        compile_s = time.time() - start
        x = (np.arange(n * 64 * 64, dtype=np.int64) % 251).astype(np.float32).reshape(n, 64, 64, 1) / 251
        [np.asarray(o) for o in exe.execute([jax.device_put(x, device)])]
        lat = []
        start = time.time()
        while time.time() - start < args.seconds:
            t = time.time()
            outs = exe.execute([jax.device_put(x, device)])
            [np.asarray(o) for o in outs]
            lat.append((time.time() - t) * 1e3)
        el = time.time() - start
        lat.sort()
        print(f"RESULT test=understand runtime=jax batch={n} runs={len(lat)} images_per_s={n * len(lat) / el:.1f} "
              f"p50_ms={lat[len(lat) // 2]:.2f} p95_ms={lat[len(lat) * 95 // 100]:.2f} compile_s={compile_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
