#!/usr/bin/env bash
# Prepares the GPU check of the pjrt runtime (bench/gpu/run.sh, on a machine with an NVIDIA GPU)
# and measures, here, what it is compared with:
#
#   bench/gpu/prepare.sh            # about 2 minutes on 2 CPUs
#
# Into bench/out/gpu (what the GPU machine needs; about 25 MB): a copy of model/reference with
# its StableHLO modules (model/export_stablehlo.py, batch sizes BATCHES, default 1,8,32); the
# reference inputs and Python TensorFlow's outputs for them (model/reference_outputs.py); and the
# bench/gpu program built with cgo but without TensorFlow, so that it runs where there is no
# TensorFlow, only the PJRT plugin.
# Then, here, the same program on the TensorFlow runtime (the CPU baseline the issue compares
# with) and on the pjrt runtime with XLA's CPU plugin, and JAX executing the same modules on CPU
# when a Python with jax is given as JAX_PYTHON. Results: bench/out/gpu-cpu/*.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/deps.sh
need_go
need_tensorflow
need_pjrt_cpu
BATCHES=${BATCHES:-1,8,32}
SECONDS_EACH=${SECONDS_EACH:-5s}
OUT=bench/out/gpu CPU=bench/out/gpu-cpu
rm -rf "$OUT" "$CPU"
mkdir -p "$OUT" "$CPU"
cp -r model/reference "$OUT/model"
rm -rf "$OUT/model/stablehlo"
echo "== StableHLO of the reference model, batch sizes $BATCHES"
.venv/bin/python model/export_stablehlo.py --model "$OUT/model" --batch-sizes "$BATCHES" 2>&1 | grep -v '^I0000\|^WARNING'
echo "== reference inputs and Python TensorFlow's outputs"
.venv/bin/python model/reference_outputs.py --model "$OUT/model" --out "$OUT/reference.json"
echo "== bench/gpu for the GPU machine (cgo, no TensorFlow)"
env -u GOFLAGS -u CGO_CFLAGS -u CGO_LDFLAGS CGO_ENABLED=1 go build -o "$OUT/gpu" ./bench/gpu
go build -o "$CPU/gpu-tf" ./bench/gpu # with need_tensorflow's tag: the TensorFlow runtime too
du -sh "$OUT"
args=(--model "$OUT/model" --reference "$OUT/reference.json" --batches "$BATCHES" --seconds "$SECONDS_EACH")
echo "== here: the TensorFlow runtime on CPU"
"$CPU/gpu-tf" --runtime tensorflow "${args[@]}" 2>&1 | grep -v '^I0000\|^W[0-9]' | tee "$CPU/tensorflow.txt"
echo "== here: the pjrt runtime with XLA's CPU plugin"
"$OUT/gpu" --runtime pjrt --pjrt-plugin "$PACSFLOW_PJRT_PLUGIN" "${args[@]}" 2>&1 | grep -v '^I0000\|^W[0-9]' | tee "$CPU/pjrt-cpu.txt"
if [ -n "${JAX_PYTHON:-}" ]; then
  echo "== here: JAX on CPU, the same modules"
  "$JAX_PYTHON" bench/gpu/jax_stablehlo.py --model "$OUT/model" --batches "$BATCHES" --seconds "${SECONDS_EACH%s}" | tee "$CPU/jax-cpu.txt"
fi
echo "prepared: carry bench/out/gpu to the GPU machine and run bench/gpu/run.sh there"
