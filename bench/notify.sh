#!/usr/bin/env bash
# The notify service, in one process on this machine: an embedded NATS JetStream server in a
# temporary folder, the service's page and JSON API on 127.0.0.1, and headless chromium showing
# the page (bench/notify/main.go; --help lists its flags):
#
#   bench/notify.sh [FLAGS]       e.g. --studies 100, --entries 20000, --verbose
#
# Measures ai.triage published → the study shown (un-pending) on the worklist page, one study
# at a time (target: p95 ≤ 500 ms), and → worklist.updated.triaged received over NATS; then
# fills the worklist to 10,000 entries and times sequential GET /api/v1/worklist requests
# (default page, limit=1000, a filter, the page's own query; target: p95 ≤ 50 ms); then the
# page latency again on a page opened on the full worklist. About a minute on 2 cores. Needs
# no TensorFlow. The whole output is kept in bench/out/notify.txt; a summary follows it.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
need_chromium
mkdir -p bench/out
go build -o bench/out/notify-bench ./bench/notify
echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
bench/out/notify-bench "$@" | tee bench/out/notify.txt
grep -q '^RESULT ' bench/out/notify.txt || exit 0 # --help
summarize bench/out/notify.txt '
    if (t == "setup")
      printf "%s CPUs, load %s at start; %s\n", kv["cpus"], kv["load_start"], kv["browser"]
    else if (t == "page")
      printf "%-44s p50 %s ms, p95 %s ms, p99 %s ms, max %s ms (target p95 ≤ %s ms: %s)\n%-44s p50 %s ms, p95 %s ms, p99 %s ms, max %s ms\n",
        "page, " kv["studies"] " studies, worklist " kv["worklist"] "-" kv["worklist_end"], kv["p50_ms"], kv["p95_ms"], kv["p99_ms"], kv["max_ms"],
        kv["target_p95_ms"], (kv["met"] == "true" ? "met" : "NOT MET"),
        "  of which NATS: worklist.updated.triaged", kv["nats_p50_ms"], kv["nats_p95_ms"], kv["nats_p99_ms"], kv["nats_max_ms"]
    if (t == "page")
      printf "%-44s %s ms a study (busy %.0f %% of the time): layout %s ms, JavaScript %s ms, style %s ms\n", "  page main thread", kv["task_ms_per_study"],
        100 * kv["main_busy"], kv["layout_ms_per_study"], kv["script_ms_per_study"], kv["style_ms_per_study"]
    else if (t == "fill")
      printf "%-44s %s events/s (%s studies, %s with results, in %s s)\n", "fill to " kv["entries"] " entries", kv["events_per_s"],
        kv["studies"], kv["triaged"], kv["seconds"]
    else if (t == "page_load")
      printf "%-44s %s ms to the first render, %s rows\n", "page opened on " kv["worklist"] " entries", kv["ms"], kv["rows"]
    else if (t == "list")
      printf "%-44s p50 %s ms, p95 %s ms, p99 %s ms, handler %s ms mean, %s entries, %d kB (target p95 ≤ %s ms: %s)\n",
        "GET worklist " kv["case"] ", " kv["worklist"] " entries", kv["p50_ms"], kv["p95_ms"], kv["p99_ms"], kv["server_mean_ms"],
        kv["returned"], kv["bytes"] / 1000, kv["target_p95_ms"], (kv["met"] == "true" ? "met" : "NOT MET")
'
