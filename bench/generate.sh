#!/usr/bin/env bash
# The generate service, in one process on this machine: the reference model through
# TensorFlow, an embedded NATS JetStream server in a temporary folder, the source and generated
# instances in its object store (bench/generate/main.go; --help lists its flags):
#
#   bench/generate.sh [FLAGS]       e.g. --requests 8, --count 8, --intra-op 2, --task synthesize
#
# Writes a few synthetic CR/DX source studies (pkg/synth, the Python phantom generator), then
# measures the model's generate signature alone at batch 1, 8 and 16 (restore and synthesize),
# and the throughput of a backlog of 40 restore requests × 4 images with batch 1 and with
# dynamic batching (target: dynamic ≥ 3× batch 1). About 20 s on 2 cores.
# The whole output is kept in bench/out/generate.txt; a summary follows it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
need_tensorflow
export TF_CPP_MIN_LOG_LEVEL=2
mkdir -p bench/out
go build -o bench/out/generate-bench ./bench/generate
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
bench/out/generate-bench "$@" | tee bench/out/generate.txt
grep -q '^RESULT ' bench/out/generate.txt || exit 0 # --help
echo
echo "== summary"
awk '
  /^RESULT / {
    delete kv
    for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
    t = kv["test"]
    if (t == "setup")
      printf "%s CPUs, load %s at start; model threads intra-op %s, inter-op %s; %s requests × %s images (%s) on %s studies, %s requests at once, %s batch worker(s)\n",
        kv["cpus"], kv["load_start"], kv["intra_op"], kv["inter_op"], kv["backlog"], kv["count"], kv["task"], kv["studies"], kv["requests"], kv["workers"]
    else if (t == "model")
      printf "%-40s %8s images/s (%s ms a batch)\n", "model alone, " kv["task"] ", batch " kv["batch"], kv["images_per_s"], kv["ms_per_batch"]
    else if (t == "throughput")
      printf "%-40s %8s images/s in %s s, mean batch %s, model busy %s, process CPU %s cores\n", "backlog, " kv["mode"], kv["images_per_s"], kv["seconds"],
        kv["mean_batch"], kv["model_busy"], kv["cpu_cores"]
    else if (t == "throughput_ratio")
      printf "%-40s %8s×     (target ≥ %s×: %s; the model alone gains %s× from batch 1 to the largest)\n", "dynamic / batch 1", kv["ratio"], kv["target"],
        (kv["met"] == "true" ? "met" : "NOT MET"), kv["model_ratio"]
    else if (t == "end")
      printf "load %s at the end\n", kv["load_end"]
  }' bench/out/generate.txt
