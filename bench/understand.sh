#!/usr/bin/env bash
# The understand service, in one process on this machine: the reference model through
# TensorFlow (or the pjrt runtime: --model-runtime pjrt with a model that has its StableHLO, e.g.
# bench/out/gpu/model from bench/gpu/prepare.sh), an embedded NATS JetStream server in a
# temporary folder, the instances in its object store (bench/understand/main.go; --help lists
# its flags):
#
#   bench/understand.sh [FLAGS]       e.g. --studies 16, --decoders 1, --size 1024
#
# Writes synthetic CR and DX studies (pkg/synth, the Python phantom generator), then measures
# decode+preprocess rates (pkg/imaging), the model alone at batch 1, 8 and 32, the throughput
# of a backlog of 40 studies × 8 images with batch 1 and with dynamic batching (target:
# dynamic ≥ 3× batch 1), and the latency of 20 studies × 50 images sent one at a time to an
# idle service, publish → ai.triage received (target: p95 ≤ 1 s). About a minute on 2 cores.
# The whole output is kept in bench/out/understand.txt; a summary follows it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
service_bench understand "$@"
grep -q '^RESULT ' bench/out/understand.txt || exit 0 # --help
summarize bench/out/understand.txt '
    if (t == "setup")
      printf "%s CPUs, load %s at start; model threads intra-op %s, inter-op %s; %s studies at once, %s decoders, %s batch worker(s); %sx%s images\n",
        kv["cpus"], kv["load_start"], kv["intra_op"], kv["inter_op"], kv["studies"], kv["decoders"], kv["workers"], kv["size"], kv["size"]
    else if (t == "decode" || t == "fetch_decode")
      printf "%-40s %8s images/s\n", (t == "decode" ? "decode+preprocess, " : "fetch+decode+preprocess, ") kv["goroutines"] " goroutine(s)", kv["images_per_s"]
    else if (t == "model")
      printf "%-40s %8s images/s (%s ms a batch)\n", "model alone, batch " kv["batch"], kv["images_per_s"], kv["ms_per_batch"]
    else if (t == "throughput")
      printf "%-40s %8s images/s, %s studies/s, mean batch %s, model busy %s\n", "pipeline backlog, " kv["mode"], kv["images_per_s"], kv["studies_per_s"], kv["mean_batch"], kv["model_busy"]
    else if (t == "latency")
      printf "%-40s p50 %s ms, p95 %s ms, max %s ms (target p95 ≤ %s ms: %s)\n%-40s wait %s ms, decode %s ms, inference %s ms, total %s ms\n",
        "latency, " kv["studies"] " studies × " kv["images"] " images", kv["p50_ms"], kv["p95_ms"], kv["max_ms"], kv["target_p95_ms"], (kv["met"] == "true" ? "met" : "NOT MET"),
        "  ai.findings timings, mean", kv["wait_ms"], kv["decode_ms"], kv["inference_ms"], kv["total_ms"]
'
