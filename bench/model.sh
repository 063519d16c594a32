#!/usr/bin/env bash
# Go (pkg/model over TensorFlow's C API) against Python TensorFlow on the same SavedModel, in
# one run on this machine:
#
#   bench/model.sh [MODEL_DIR]      default model/reference
#
# For the understand signature at batch sizes 1, 8 and 32: images/s of each and the ratio
# Go/Python (target ≥ 0.95), twice: with TensorFlow's default thread pools (one thread per
# core) and with one intra-op and one inter-op thread, which is faster for this small model on
# few cores; then the load time and the resident memory of each after loading. Environment:
# SECONDS_PER_SIZE (default 5) is how long each batch size runs on each side.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
need_tensorflow
MODEL=${1:-model/reference}
SECS=${SECONDS_PER_SIZE:-5}
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p bench/out
for THREADS in 0,0 1,1; do
  echo "== threads (intra-op,inter-op) $THREADS (0: one per core)"
  echo "-- Python TensorFlow $(.venv/bin/python -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null), $(nproc) cores, model $MODEL"
  .venv/bin/python model/bench.py --model "$MODEL" --batches 1,8,32 --seconds "$SECS" --threads "$THREADS" | tee bench/out/model-python.jsonl
  echo "-- Go, pkg/model over the C API of the same library"
  MODEL_THREADS=$THREADS go test -run '^$' -bench 'BenchmarkUnderstand' -benchtime "${SECS}s" ./pkg/model | tee bench/out/model-go.txt
  echo
  printf '%-8s %14s %14s %8s\n' batch "Python img/s" "Go img/s" "Go/Py"
  for b in 1 8 32; do
    py=$(grep '"throughput"' bench/out/model-python.jsonl | grep "\"batch\": $b," | sed 's/.*"images_per_second": \([0-9.]*\).*/\1/')
    go=$(grep "BenchmarkUnderstand/batch=$b-" bench/out/model-go.txt | awk '{for (i = 1; i < NF; i++) if ($(i+1) == "images/s") print $i}')
    awk -v b="$b" -v p="$py" -v g="$go" 'BEGIN {printf "%-8s %14.1f %14.1f %8.3f\n", b, p, g, g / p}'
  done
  echo
done
go build -o bench/out/pacsflow ./cmd/pacsflow
bench/out/pacsflow model inspect --run "$MODEL" > bench/out/model-go-load.txt
pyload=$(grep '"load"' bench/out/model-python.jsonl)
echo "Python: load $(echo "$pyload" | sed 's/.*"load_seconds": \([0-9.]*\).*/\1/') s, resident memory after load $(echo "$pyload" | sed 's/.*"rss_mib": \([0-9.]*\).*/\1/') MiB"
echo "Go:     $(grep '^loaded in' bench/out/model-go-load.txt) (pacsflow model inspect --run; includes the contract check and a warm-up run of each signature)"
