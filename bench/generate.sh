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
# shellcheck source=bench/lib.sh
. bench/lib.sh
service_bench generate "$@"
grep -q '^RESULT ' bench/out/generate.txt || exit 0 # --help
summarize bench/out/generate.txt '
    if (t == "setup")
      printf "%s CPUs, load %s at start; model threads intra-op %s, inter-op %s; %s requests × %s images (%s) on %s studies, %s requests at once, %s batch worker(s)\n",
        kv["cpus"], kv["load_start"], kv["intra_op"], kv["inter_op"], kv["backlog"], kv["count"], kv["task"], kv["studies"], kv["requests"], kv["workers"]
    else if (t == "model")
      printf "%-40s %8s images/s (%s ms a batch)\n", "model alone, " kv["task"] ", batch " kv["batch"], kv["images_per_s"], kv["ms_per_batch"]
    else if (t == "throughput")
      printf "%-40s %8s images/s in %s s, mean batch %s, model busy %s, process CPU %s cores\n", "backlog, " kv["mode"], kv["images_per_s"], kv["seconds"],
        kv["mean_batch"], kv["model_busy"], kv["cpu_cores"]
'
