#!/usr/bin/env bash
# The local cluster of scripts/cluster.sh (3 nats-server nodes, R3 streams, buckets and object
# store; 2 `pacsflow ingest`; 2 `pacsflow understand` with the reference model) against one
# `pacsflow up`, on this machine, in one run:
#
#   bench/cluster.sh                       # about 3.5 minutes on 2 cores
#   DURATION=60s bench/cluster.sh          # longer ingest runs (bench/load --duration)
#   ASSOCIATIONS=1,4,16,32 STUDIES=48 BACKLOG=192 bench/cluster.sh
#
# 1. Understand scaling, 1 -> 2 processes (first, see below). With understand2 killed:
#    - stream: STUDIES (24) new synthetic studies (pacsflow synth: a CR and a DX series of 2
#      images each, 256x256, half with a finding) are sent to ingest1 with `pacsflow storescu
#      --associations 4`; bench/cluster (a Go helper) follows the events stream until every
#      study has its ai.triage, and times it by the stream's own timestamps: from the first
#      instance sent (sending, the 2 s quiet period, the analysis) and from the first study
#      event;
#    - backlog: BACKLOG (96) new studies are sent while the understand consumer is paused; once
#      every study event is stored the pause ends, and the rate is taken from the first
#      triage to the last: the processes' analysis at full speed.
#    Then understand2 is started again and both runs are repeated with new studies (new seeds).
#    Studies/s, images/s, how the studies split between the processes, and the ratio 2 / 1.
# 2. Ingest throughput: understand1 and understand2 killed (they must not compete for the CPU)
#    and their durable consumer dropped (its lag would count as the pipeline's); bench/load
#    keeps N = 1, 4, 16 associations (ASSOCIATIONS) of new 64 KiB CT instances for DURATION
#    (20s), alternating between ingest1 and ingest2 (N = 1 reaches ingest1 only), then checks
#    that every Success has its pacs.instance.stored event (lost must be 0); bench/cluster
#    samples the lag of the pipeline's durable consumers meanwhile. Then the cluster goes down
#    and the same load runs against one `pacsflow up --model '' --notify=false` (embedded NATS,
#    default durability, object store, free ports, a fresh temporary data folder): the same
#    services as the cluster's ingest processes (ingest, analytics projection, dead-letter
#    recorder, study latency recorder), on one node, R1.
#
# The understand runs come first: understand's durable consumer would otherwise have to work
# through every study event of the load runs before the synthetic studies.
#
# On 2 cores all 7 processes of the cluster (and the load generator, and the sender) contend for
# the CPU: the figures report what this machine gives, nothing is tuned for it. The cluster's
# three R3 replicas write every byte three times to the same disk.
#
# A check: a study without its study event 15 s after the last one came would be reported only
# at ingest's --max-wait (10 min), as earlier versions' study assembler did now and then (see
# bench/README.md); such studies are left out of the understand figures and named (STUCK, on the
# summary). There must be none.
#
# Needs Go, curl and the .venv of scripts/deps.sh (TensorFlow for the understand processes, numpy
# for the phantoms); scripts/cluster.sh up builds bin/pacsflow and bin/nats-server. The whole
# output is kept in bench/out/cluster.txt, a summary at its end; the processes' logs in
# bench/out/cluster-logs/. Ports: those of scripts/cluster.sh (4301-4303, 6301-6303, 8301-8303,
# 11211-11212, 8181-8182, 8191-8192) must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-20s}
ASSOCIATIONS=${ASSOCIATIONS:-1,4,16}
STUDIES=${STUDIES:-24}
BACKLOG=${BACKLOG:-96}
for v in STUDIES BACKLOG; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
# pacsflow reads PACSFLOW_<FLAG> from the environment: measure its defaults, not the caller's.
for v in $(compgen -v PACSFLOW_ || true); do echo "cluster.sh: ignoring $v=${!v}" >&2; unset "$v"; done
export TF_CPP_MIN_LOG_LEVEL=2

OUT=$ROOT/bench/out
TXT=$OUT/cluster.txt
LOGS=$OUT/cluster-logs
LOAD=$OUT/load-bench
HELPER=$OUT/cluster-bench
URLS=nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303
mkdir -p "$OUT"
# Everything to the terminal and to cluster.txt. tee ignores Ctrl-C, so that it still records
# (and shows) what the cleanup says.
exec > >(trap '' INT TERM; exec tee "$TXT") 2>&1

die() { echo "cluster.sh: FAIL: $*" >&2; exit 1; }
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pacsflow-bench-cluster.XXXXXX")
CDIR=$WORK/cluster # the cluster's configs, JetStream stores, logs and pids (scripts/cluster.sh DIR)
RES=$WORK/results  # the RESULT lines, for the summary
SINGLE_PID=""
SINGLE_LOG=$WORK/single.log
LAG_PID=""
CLUSTER_UP=0

# stop_single: SIGTERM to `pacsflow up` (it lets associations finish, drains, stops its NATS
# server), SIGKILL after 20 s.
stop_single() {
  [ -n "$SINGLE_PID" ] || return 0
  kill -TERM "$SINGLE_PID" 2>/dev/null || true
  local i
  for ((i = 0; i < 200; i++)); do kill -0 "$SINGLE_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SINGLE_PID" 2>/dev/null; then
    echo "cluster.sh: pacsflow up did not stop 20 s after SIGTERM; killed" >&2
    kill -KILL "$SINGLE_PID" 2>/dev/null || true
  fi
  wait "$SINGLE_PID" 2>/dev/null || true
  SINGLE_PID=""
}

# On any exit (done, failed, interrupted): stop what runs, keep the logs, remove the data.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$LAG_PID" ] && kill -TERM "$LAG_PID" 2>/dev/null && wait "$LAG_PID"
  stop_single
  [ $CLUSTER_UP = 1 ] && scripts/cluster.sh down "$CDIR"
  rm -rf "$LOGS"
  mkdir -p "$LOGS"
  cp "$CDIR"/*.log "$SINGLE_LOG" "$LOGS"/ 2>/dev/null
  rm -rf "$WORK"
  [ $rc = 0 ] || echo "cluster.sh: FAIL (exit $rc); logs in $LOGS" >&2
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

echo "== $(date -u +%FT%TZ) on $(hostname): $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "   On $(nproc) cores the 3 NATS nodes, 2 ingest and 2 understand processes, the load generator and the"
echo "   sender all contend for the CPU: these figures report what this machine gives; nothing is tuned for it."
echo "   ingest runs: $DURATION each, associations $ASSOCIATIONS; understand runs: $STUDIES studies streamed, $BACKLOG as a backlog"

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
echo "== building $LOAD and $HELPER"
go build -o "$LOAD" ./bench/load
go build -o "$HELPER" ./bench/cluster

echo "== scripts/cluster.sh up $CDIR"
CLUSTER_UP=1 # from here on: on a failed up, cluster.sh stops what it started; down is harmless
scripts/cluster.sh up "$CDIR"
scripts/cluster.sh status "$CDIR" || die "the cluster is not healthy after up"

# analyzed PORT: "studies images" the understand process on HTTP PORT has analyzed so far, or
# "- -" if it does not answer (killed).
analyzed() {
  local m
  m=$(curl -sf -m 5 "http://127.0.0.1:$1/metrics") || { echo "- -"; return 0; }
  awk '
    /^pacsflow_understand_studies_total\{outcome="analyzed"\}/ {s = $2}
    /^pacsflow_understand_images_total\{outcome="analyzed"\}/ {i = $2}
    END {printf "%d %d\n", s, i}' <<<"$m"
}

# understand_run PROCESSES KIND: write a new set of synthetic studies (its own seed: new UIDs),
# send it to ingest1 and wait for every triage; report how the work split between the
# understand processes.
#   stream:  STUDIES studies sent while the understand processes consume: from the first
#            instance sent to the last ai.triage (and from the first study event);
#   backlog: BACKLOG studies, sent while the understand consumer is paused; the pause ends once
#            every study event is stored, so that the processes start together on the whole
#            backlog: their rate from the first triage to the last, apart from sending and the
#            2 s quiet period, which do not change with their number.
# Studies that ingest does not report (STUCK, must be none) are left out after 15 s without a
# study event, and counted on the summary.
understand_run() {
  local procs=$1 kind=$2 n=$STUDIES seed=$((1000 + $1 * 100)) dir=$WORK/studies-$1-$2 p t0 resume=()
  if [ "$kind" = backlog ]; then n=$BACKLOG seed=$((seed + 10)); fi
  echo
  echo "== understand, $procs process(es), $kind: writing $n studies (pacsflow synth), sending them"
  bin/pacsflow synth --out "$dir" --studies "$n" --finding mixed --size 256 --ct-slices 0 \
    --seed $seed --python .venv/bin/python
  local -A before=()
  for p in 1 2; do before[$p]=$(analyzed $((8190 + p))); done
  if [ "$kind" = backlog ]; then
    "$HELPER" pause --nats-url "$URLS" --stream PACSFLOW --consumer understand
    resume=(--resume understand)
  fi
  t0=$(date +%s%N)
  bin/pacsflow storescu --associations 4 --addr 127.0.0.1:11211 "$dir"
  "$HELPER" triage --nats-url "$URLS" --truth "$dir/truth.json" --since-ns "$t0" --label "$kind:$procs" \
    --timeout 5m --stall 15s "${resume[@]}" | tee -a "$RES"
  for p in 1 2; do
    local b a
    read -r -a b <<<"${before[$p]}"
    read -r -a a <<<"$(analyzed $((8190 + p)))"
    if [ "${a[0]}" = - ] || [ "${b[0]}" = - ]; then
      echo "RESULT test=understand_process label=$kind:$procs process=understand$p studies=- images=-" | tee -a "$RES"
    else
      echo "RESULT test=understand_process label=$kind:$procs process=understand$p studies=$((a[0] - b[0])) images=$((a[1] - b[1]))" | tee -a "$RES"
    fi
  done
}

# ingest_runs LABEL ADDRS NATS_URL: bench/load for each number of associations, one run per
# invocation so that the lag of the pipeline's durable consumers (bench/cluster lag, sampled
# meanwhile) is each run's own.
ingest_runs() {
  local n
  for n in ${ASSOCIATIONS//,/ }; do
    "$HELPER" lag --nats-url "$3" --label "$1:$n" >"$WORK/lag" 2>&1 &
    LAG_PID=$!
    sleep 1 # its first sample, before the load
    "$LOAD" --addr "$2" --nats-url "$3" --associations "$n" --duration "$DURATION" --label "$1" 2>&1 | tee "$WORK/load" ||
      die "bench/load failed ($1, $n associations)"
    grep '^RESULT ' "$WORK/load" >>"$RES"
    kill -TERM "$LAG_PID"
    wait "$LAG_PID" || { cat "$WORK/lag"; LAG_PID=""; die "the lag sampler failed"; }
    LAG_PID=""
    tee -a "$RES" <"$WORK/lag"
  done
}

echo
echo "== scripts/cluster.sh kill understand2"
scripts/cluster.sh kill understand2 "$CDIR"
sleep 2 # the server drops the killed process's pull requests once its interest is gone
understand_run 1 stream
understand_run 1 backlog
echo
echo "== scripts/cluster.sh start understand2"
scripts/cluster.sh start understand2 "$CDIR"
understand_run 2 stream
understand_run 2 backlog

echo
echo "== ingest: killing understand1 and understand2, dropping their consumer"
scripts/cluster.sh kill understand1 "$CDIR"
scripts/cluster.sh kill understand2 "$CDIR"
"$HELPER" drop-consumer --nats-url "$URLS" --stream PACSFLOW --consumer understand

echo
echo "== ingest, cluster: bench/load against ingest1 and ingest2"
ingest_runs cluster 127.0.0.1:11211,127.0.0.1:11212 "$URLS"

echo
echo "== scripts/cluster.sh down (the single node must not share the CPU with it)"
scripts/cluster.sh down "$CDIR"
CLUSTER_UP=0

echo
echo "== ingest, one node: pacsflow up --model '' --notify=false"
# Its own session, like the cluster's processes: a Ctrl-C reaches it only through cleanup.
setsid bin/pacsflow up --model '' --notify=false --data "$WORK/single" --dicom-addr 127.0.0.1:0 \
  --nats-listen 127.0.0.1:0 --http-addr 127.0.0.1:0 >"$SINGLE_LOG" 2>&1 </dev/null &
SINGLE_PID=$!
for ((i = 0; i < 600; i++)); do
  grep -q '^storage: ' "$SINGLE_LOG" && break
  kill -0 "$SINGLE_PID" 2>/dev/null || { cat "$SINGLE_LOG"; die "pacsflow up exited while starting"; }
  sleep 0.1
done
grep -q '^storage: ' "$SINGLE_LOG" || { cat "$SINGLE_LOG"; die "pacsflow up did not start within 60 s"; }
SINGLE_DICOM=$(sed -n 's/^DICOM SCP .* listening on \([^ ]*\)$/\1/p' "$SINGLE_LOG")
SINGLE_NATS=$(sed -n 's#^NATS .* listening on \(nats://[^ ]*\)$#\1#p' "$SINGLE_LOG")
[ -n "$SINGLE_DICOM" ] && [ -n "$SINGLE_NATS" ] || { cat "$SINGLE_LOG"; die "no DICOM or NATS address in pacsflow up's output"; }
echo "pacsflow up: DICOM $SINGLE_DICOM, NATS $SINGLE_NATS"
ingest_runs single "$SINGLE_DICOM" "$SINGLE_NATS"
stop_single
if grep -E 'level=(WARN|ERROR)' "$SINGLE_LOG"; then
  echo "(warnings or errors in pacsflow up's log, above)"
fi

echo
echo "== summary ($(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the end)"
awk '
/^RESULT / {
  delete kv
  for (i = 2; i <= NF; i++) { split($i, f, "="); kv[f[1]] = f[2] }
  if ("associations" in kv) {
    k = kv["label"] SUBSEP kv["associations"]
    order[++nr] = k; ips[k] = kv["per_s"]
    if (!(kv["associations"] in seenN)) { seenN[kv["associations"]] = 1; ns[++nn] = kv["associations"] }
    row[k] = sprintf("%-7s %5s  %9s  %7s  %6s  %6s  %6s  %6s  %7s  %4s", (kv["label"] == "cluster" ? "cluster" : "1 node"), kv["associations"], kv["instances"],
      kv["per_s"], kv["mb_per_s"], kv["p50_ms"], kv["p95_ms"], kv["p99_ms"], kv["errors"] "/" kv["refused"], kv["lost"])
    lost += kv["lost"]
  } else if (kv["test"] == "lag") {
    split(kv["label"], f, ":")
    lag[f[1] SUBSEP f[2]] = sprintf("%7s  %-22s  %7s", kv["max_lag"], kv["consumer"], kv["end_lag"])
  } else if (kv["test"] == "understand") {
    if (kv["stuck"] > 0)
      stuck = stuck sprintf("  %s: %s studies left out (no study event), %s counted\n", kv["label"], kv["stuck"], kv["studies"])
    if (kv["label"] ~ /^stream:/) {
      split(kv["label"], f, ":"); pr = f[2]; sprocs[++nsp] = pr
      su[pr] = sprintf("%9s  %7s  %6s  %12s  %9s  %8s  %20s  %9s  %8s", pr, kv["studies"], kv["images"], kv["send_to_triage_s"], kv["studies_per_s"], kv["images_per_s"],
        kv["received_to_triage_s"], kv["window_studies_per_s"], kv["window_images_per_s"])
      e2e[pr] = kv["studies_per_s"]; win[pr] = kv["window_studies_per_s"]
    }
  } else if (kv["test"] == "backlog") {
    split(kv["label"], f, ":"); pr = f[2]; bprocs[++nbp] = pr
    bu[pr] = sprintf("%9s  %7s  %6s  %18s  %18s  %9s  %8s", pr, kv["studies"], kv["images"], kv["resume_to_first_triage_s"], kv["first_to_last_triage_s"],
      kv["backlog_studies_per_s"], kv["backlog_images_per_s"])
    bl[pr] = kv["backlog_studies_per_s"]
  } else if (kv["test"] == "understand_process") {
    who[kv["label"]] = who[kv["label"]] sprintf("  %s: %s studies, %s images;", kv["process"], kv["studies"], kv["images"])
  }
}
END {
  print "ingest: bench/load, new 64 KiB CT instances (50 per association), '"$DURATION"' a run; C-STORE latency in ms; errors/refused;"
  print "lost: Successes without their event (must be 0); lag: most events a durable consumer of the pipeline had not handled"
  print "(not delivered + not acknowledged) during the run (that consumer), and at its end (any consumer)"
  printf "%-7s %5s  %9s  %7s  %6s  %6s  %6s  %6s  %7s  %4s  %7s  %-22s  %7s\n", "setup", "assoc", "instances", "inst/s", "MB/s", "p50", "p95", "p99", "err/ref", "lost", "max lag", "consumer", "end lag"
  for (i = 1; i <= nr; i++) print row[order[i]] "  " (order[i] in lag ? lag[order[i]] : "-")
  printf "cluster / 1 node, inst/s:"
  for (i = 1; i <= nn; i++) {
    c = ips["cluster" SUBSEP ns[i]]; sn = ips["single" SUBSEP ns[i]]
    printf "  %s assoc %s", ns[i], (c != "" && sn > 0 ? sprintf("%.2f", c / sn) : "-")
  }
  printf "\nlost in all runs: %d%s\n\n", lost, (lost ? "  FAIL" : "")
  print "understand scaling: synthetic studies (CR + DX, 256x256), storescu --associations 4 to ingest1"
  print "streamed (sent while the processes run): to the last ai.triage from the first instance sent, and from the first study event"
  printf "%9s  %7s  %6s  %12s  %9s  %8s  %20s  %9s  %8s\n", "processes", "studies", "images", "sent->last s", "studies/s", "images/s", "1st study ev->last s", "studies/s", "images/s"
  for (i = 1; i <= nsp; i++) { print su[sprocs[i]]; print "          " who["stream:" sprocs[i]] }
  print "backlog (the understand consumer paused while they are sent, until every study event is stored): rates from the first ai.triage to the last"
  printf "%9s  %7s  %6s  %18s  %18s  %9s  %8s\n", "processes", "studies", "images", "pause end->1st s", "1st->last triage s", "studies/s", "images/s"
  for (i = 1; i <= nbp; i++) { print bu[bprocs[i]]; print "          " who["backlog:" bprocs[i]] }
  printf "2 processes / 1:"
  if (e2e["1"] > 0 && e2e["2"] > 0) printf " streamed %.2f (from the first instance sent), %.2f (from the first study event);", e2e["2"] / e2e["1"], win["2"] / win["1"]
  if (bl["1"] > 0 && bl["2"] > 0) printf " backlog %.2f", bl["2"] / bl["1"]
  print ""
  if (stuck != "") printf "STUCK in ingest (its study assembler did not report them; there must be none):\n%s", stuck
}' "$RES"
echo
echo "whole output: $TXT; logs: $LOGS"
