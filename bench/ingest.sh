#!/usr/bin/env bash
# Pipeline ingest benchmark: `pacsflow up` (embedded NATS JetStream + ingest service: every
# C-STORE is answered Success only after the storage write and the JetStream ack of its
# event) against DCMTK storescp, with DCMTK storescu as the sender for every receiver (same
# options as bench/storescp.sh), over loopback, on this machine, in one run.
#
#   bench/ingest.sh                   # RUNS=3: medians with min-max
#   RUNS=5 bench/ingest.sh
#   WITH_ORTHANC=1 bench/ingest.sh    # also Orthanc from Debian's package (apt-get install orthanc)
#   STUDIES=20 bench/ingest.sh        # studies per study-latency measurement (default 20)
#
# Receivers, each started fresh per run and test, writing into a fresh folder under bench/out
# (same disk as the corpus), removed afterwards (then sync):
#   DCMTK storescp, storescp +B, storescp --fork (for 4 associations)
#   pacsflow up --storage objectstore | fs          default durability
#   pacsflow up --storage objectstore | fs --strict-durability   fsync before every Success
#   Orthanc (only with WITH_ORTHANC=1; otherwise Orthanc's figures are quoted, not measured)
# Tests:
#   small x1   500 x 528 KB, one association
#   large x1   20 x 20-50 MB multi-frame, one association
#   small x4   500 x 528 KB, 4 storescu processes of 125 files each at once
#   huge x1    one 1.05 GB instance: peak RSS of pacsflow up (target < 150 MiB)
#   study latency (bench/studylatency, pacsflow's own DICOM client + NATS subscriber, one
#              clock): STUDIES studies of 10 x 512 KB instances, one association each, sent
#              back to back (every run, every pacsflow receiver) and isolated (each study sent
#              once the previous one was reported; once, default durability): time from the
#              last C-STORE response to the pacs.study.received event, minus the quiet period.
# Checks per transfer: storescu exit status; DCMTK: files and bytes in the output folder;
# pacsflow: pacsflow_ingest_instances_total{outcome="stored"} on its /metrics equals the
# number of files and no other outcome is counted, bytes stored >= 99% of those sent, the
# study is reported (pacs.study.received) with every instance, no WARN/ERROR in its log;
# Orthanc: CountInstances of its REST API /statistics. Exits non-zero on any failure.
# Needs go, curl, DCMTK (storescp, storescu, dcmodify). Results: bench/out/ingest/results.tsv,
# latency.tsv; logs: bench/out/ingest/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
STUDIES=${STUDIES:-20}
WITH_ORTHANC=${WITH_ORTHANC:-0}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }
[[ $STUDIES =~ ^[1-9][0-9]*$ ]] || { echo "STUDIES must be a positive integer" >&2; exit 2; }
# pacsflow reads PACSFLOW_<FLAG> from the environment: measure its defaults, not the caller's settings.
for v in $(compgen -v PACSFLOW_ || true); do echo "ingest.sh: ignoring $v=${!v}" >&2; unset "$v"; done
export TCP_NODELAY=1 # read by every DCMTK tool; without it each C-STORE stalls ~45 ms (Nagle + delayed ACK)

OUT=$ROOT/bench/out/ingest
BIN=$OUT/pacsflow
LATBIN=$OUT/studylatency
CORPUS=$ROOT/bench/corpus
LOGS=$OUT/logs
RES=$OUT/results.tsv
LAT=$OUT/latency.tsv
AE=BENCH
SCU_OPTS=(-R -aec "$AE" -aet BENCHSCU) # as bench/storescp.sh: propose only the SOP classes of the
# files, one presentation context per uncompressed TS, so each file goes in its own (stored) TS.
STUDY_INSTANCES=10
# Orthanc's figures on the anchors table (quoted, not measured here): small x1 inst/s,
# large x1 MB/s, small x4 inst/s.
ORTHANC_Q_SMALL=173 ORTHANC_Q_LARGE_MBS=145 ORTHANC_Q_X4=297
HUGE_TARGET_MIB=150

die() { echo "ingest.sh: FAIL: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
for t in go curl storescp storescu dcmodify; do
  command -v $t >/dev/null || die "$t missing (apt-get install -y dcmtk curl; Go from go.dev)"
done

# ---- Orthanc (optional) ----
ORTHANC_BIN="" ORTHANC_VER=""
if [ "$WITH_ORTHANC" = 1 ]; then
  if ! command -v Orthanc >/dev/null; then
    policy=$(apt-cache policy orthanc 2>/dev/null || true)
    [[ $policy == *"Candidate: "[0-9]* ]] || die "WITH_ORTHANC=1: no orthanc package in the apt sources (apt-get update?)"
    echo "ingest.sh: installing Orthanc from Debian's package (WITH_ORTHANC=1)" >&2
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    # policy-rc.d 101: the package's service must not start (it would run beside the benchmark).
    had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ $had_policy = 0 ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
      $SUDO chmod +x /usr/sbin/policy-rc.d
    fi
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc > "${TMPDIR:-/tmp}/ingest-orthanc-install.log" 2>&1 \
      || { [ $had_policy = 1 ] || $SUDO rm -f /usr/sbin/policy-rc.d; die "apt-get install orthanc failed: $(tail -5 "${TMPDIR:-/tmp}/ingest-orthanc-install.log")"; }
    [ $had_policy = 1 ] || $SUDO rm -f /usr/sbin/policy-rc.d
  fi
  ORTHANC_BIN=$(command -v Orthanc) || die "Orthanc not found after installing"
  ORTHANC_VER=$(dpkg-query -W -f '${Version}' orthanc 2>/dev/null || "$ORTHANC_BIN" --version 2>&1 | head -1)
  if pgrep -x Orthanc >/dev/null; then
    echo "ingest.sh: WARNING: an Orthanc process not started by this script is running (pids $(pgrep -x Orthanc | tr '\n' ' ')); it shares the CPUs" >&2
  fi
fi

# ---- cleanup: every process this script starts is recorded here and stopped on exit ----
RECEIVER=""   # pid (= process group, started with setsid) of the running receiver
POLLER=""     # pid of the running RSS poller
SENDERS=()    # pids of running senders
cleanup() {
  local p
  for p in "${SENDERS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null || true
  [ -n "$RECEIVER" ] && kill -TERM -- "-$RECEIVER" 2>/dev/null || true
  [ -n "$RECEIVER" ] && { sleep 1; kill -KILL -- "-$RECEIVER" 2>/dev/null || true; }
  rm -rf "$OUT"/recv.* "$OUT"/rss.*
}
trap cleanup EXIT
trap 'echo "ingest.sh: interrupted" >&2; exit 130' INT TERM

# ---- build and corpus ----
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log "$RES" "$LAT" "$OUT/slow.txt" "$OUT/late.txt"
go build -o "$BIN" ./cmd/pacsflow
go build -o "$LATBIN" ./bench/studylatency
bench/make-corpus.sh "$CORPUS"
mapfile -t SMALL < <(find "$CORPUS/small" -name '*.dcm' -type f | sort)
mapfile -t LARGE < <(find "$CORPUS/large" -name '*.dcm' -type f | sort)
mapfile -t HUGE < <(find "$CORPUS/huge" -name '*.dcm' -type f | sort)
[ ${#SMALL[@]} -eq 500 ] && [ ${#LARGE[@]} -eq 20 ] && [ ${#HUGE[@]} -eq 1 ] || die "corpus incomplete under $CORPUS"
SMALL_B=$(bytes_of "${SMALL[@]}") LARGE_B=$(bytes_of "${LARGE[@]}") HUGE_B=$(bytes_of "${HUGE[@]}")

port_used() { # port_used PORT: a TCP socket in any state (listening, connected, TIME_WAIT) has local port PORT
  awk -v p="$(printf ':%04X' "$1")" 'FNR > 1 && substr($2, length($2) - 4) == p {f = 1} END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}
# The fixed ports lie below the kernel's ephemeral range, where no client socket (curl,
# storescu, NATS clients, in TIME_WAIT for a minute after) can hold them.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() { # free_port FROM: the first port from FROM on that no socket uses
  local p
  for ((p = $1; p < $1 + 100; p++)); do
    port_used "$p" || { echo "$p"; return; }
  done
  die "no free port in $1-$(($1 + 99))"
}
PORT_BASE=$((EPHEMERAL_LOW > 20000 ? 19112 : 11112))
PORT=$(free_port $PORT_BASE)           # DICOM, every receiver
OHTTP=$(free_port $((PORT_BASE + 100))) # Orthanc's REST API (chosen again before each start)

# receiver_cmd NAME DIR: the command line of receiver NAME, storing under DIR
receiver_cmd() {
  local pf=("$BIN" up --data "$2" --dicom-addr "127.0.0.1:$PORT" --nats-listen 127.0.0.1:0 --http-addr 127.0.0.1:0 --ae "$AE")
  case $1 in
    dcmtk) echo storescp -aet "$AE" -od "$2" "$PORT" ;;
    dcmtk-B) echo storescp +B -aet "$AE" -od "$2" "$PORT" ;;
    dcmtk-fork) echo storescp --fork -aet "$AE" -od "$2" "$PORT" ;;
    pf-obj) echo "${pf[*]}" --storage objectstore ;;
    pf-fs) echo "${pf[*]}" --storage fs ;;
    pf-obj-strict) echo "${pf[*]}" --storage objectstore --strict-durability ;;
    pf-fs-strict) echo "${pf[*]}" --storage fs --strict-durability ;;
    orthanc) echo "$ORTHANC_BIN" "$2/orthanc.json" ;;
    *) die "unknown receiver $1" ;;
  esac
}
label() {
  case $1 in
    dcmtk) echo "DCMTK storescp" ;;
    dcmtk-B) echo "DCMTK storescp +B" ;;
    dcmtk-fork) echo "DCMTK storescp --fork" ;;
    pf-obj) echo "pacsflow up objectstore" ;;
    pf-fs) echo "pacsflow up fs" ;;
    pf-obj-strict) echo "pacsflow up objectstore STRICT" ;;
    pf-fs-strict) echo "pacsflow up fs STRICT" ;;
    orthanc) echo "Orthanc ${ORTHANC_VER%%+*}" ;;
    *) echo "$1" ;;
  esac
}
is_pf() { [[ $1 == pf-* ]]; }

# orthanc_config DIR: Orthanc's defaults, adapted: AE title, DICOM and HTTP ports on
# loopback only, storage and index under DIR, no plugins. Every other option keeps the
# built-in default (SQLite index, uncompressed storage, 4 DICOM threads...).
orthanc_config() {
  cat > "$1/orthanc.json" <<EOF
{
  "Name": "ingest-bench",
  "StorageDirectory": "$1/storage",
  "IndexDirectory": "$1/index",
  "DicomAet": "$AE",
  "DicomPort": $PORT,
  "HttpPort": $OHTTP,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": false,
  "Plugins": []
}
EOF
}

RDIR="" RLOG="" RSSF="" RNAME="" PF_HTTP="" PF_NATS="" PF_QUIET=""
# start_receiver NAME TAG: fresh folder, receiver in its own process group, RSS poller
start_receiver() {
  RNAME=$1
  RDIR=$(mktemp -d "$OUT/recv.XXXXXX")
  RLOG=$LOGS/$2.$1.receiver.log
  RSSF=$OUT/rss.$2.$1
  : > "$RSSF"
  : > "$RLOG" # exists before the receiver opens it (the readiness check reads it at once)
  if [ "$1" = orthanc ]; then
    OHTTP=$(free_port $((PORT_BASE + 100)))
    orthanc_config "$RDIR"
  fi
  # shellcheck disable=SC2046
  setsid $(receiver_cmd "$1" "$RDIR") > "$RLOG" 2>&1 < /dev/null &
  RECEIVER=$!
  local i ready=0
  for ((i = 0; i < 600; i++)); do
    if is_pf "$1"; then
      grep -q '^storage: ' "$RLOG" && ready=1
    elif [ "$1" = orthanc ]; then
      listening "$PORT" && listening "$OHTTP" && ready=1
    else
      listening "$PORT" && ready=1
    fi
    [ $ready = 1 ] && break
    kill -0 "$RECEIVER" 2>/dev/null || { cat "$RLOG" >&2; die "$(label "$1") exited at start"; }
    sleep 0.05
  done
  [ $ready = 1 ] && listening "$PORT" || { cat "$RLOG" >&2; die "$(label "$1") not ready on port $PORT after 30 s"; }
  local comm; comm=$(cat "/proc/$RECEIVER/comm")
  [[ $comm == storescp || $comm == pacsflow || $comm == Orthanc ]] || die "pid $RECEIVER is $comm, not the receiver"
  if is_pf "$1"; then
    PF_HTTP=$(sed -n 's#^HTTP .* listening on \(http://[^ ]*\)$#\1#p' "$RLOG")
    PF_NATS=$(sed -n 's#^NATS .* listening on \(nats://[^ ]*\)$#\1#p' "$RLOG")
    PF_QUIET=$(sed -n 's/^storage: .*study quiet period \([^,]*\),.*/\1/p' "$RLOG")
    [ -n "$PF_HTTP" ] && [ -n "$PF_NATS" ] && [ -n "$PF_QUIET" ] || die "$(label "$1"): cannot read its HTTP/NATS address or quiet period from $RLOG"
  fi
  poll_rss "$RECEIVER" "$RSSF" &
  POLLER=$!
}


RSS_KB=0 RSS_NOTE=""

# metric NAME-REGEX: sum of the samples of the metrics whose name{labels} matches, from pacsflow
metrics() { curl -sf --max-time 5 "$PF_HTTP/metrics" || die "$(label "$RNAME"): cannot read $PF_HTTP/metrics"; }
metric() { metrics | awk -v re="$1" '$0 !~ /^#/ && $1 ~ re {s += $2} END {printf "%.6f", s}'; }

# check_received N BYTES TAG: everything arrived and was stored
STUDY_DELAY="-" STUDY_SEEN="-" PF_MS="- - -"
check_received() {
  local n=$1 bytes=$2 tag=$3 t_end=$4
  case $RNAME in
    dcmtk*)
      local got got_b
      got=$(find "$RDIR" -maxdepth 1 -type f ! -name '.*' | wc -l)
      got_b=$(find "$RDIR" -maxdepth 1 -type f ! -name '.*' -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
      [ "$got" -eq "$n" ] || die "$tag: receiver stored $got of $n files (logs: $LOGS/$tag.*)"
      [ "$got_b" -ge $((bytes / 100 * 99)) ] || die "$tag: receiver stored $got_b bytes, sent $bytes (logs: $LOGS/$tag.*)"
      ! grep -qE '^[EF]: ' "$RLOG" || die "$tag: receiver logged errors: $(grep -E '^[EF]: ' "$RLOG" | head -3)"
      ;;
    orthanc)
      local st cnt
      st=$(curl -sf --max-time 10 "http://127.0.0.1:$OHTTP/statistics") || die "$tag: cannot read Orthanc's /statistics"
      cnt=$(echo "$st" | sed -n 's/.*"CountInstances" *: *\([0-9]*\).*/\1/p' | head -1)
      [ "$cnt" = "$n" ] || die "$tag: Orthanc counts $cnt instances, sent $n ($st)"
      ;;
    pf-*)
      local m stored other got_b t
      m=$(metrics)
      stored=$(echo "$m" | awk '$1 == "pacsflow_ingest_instances_total{outcome=\"stored\"}" {printf "%d", $2}')
      other=$(echo "$m" | awk '$1 ~ /^pacsflow_ingest_instances_total\{/ && $1 !~ /outcome="stored"/ {printf "%s=%d ", $1, $2}')
      got_b=$(echo "$m" | awk '$1 == "pacsflow_ingest_bytes_total" {printf "%d", $2}')
      [ "${stored:-0}" -eq "$n" ] || die "$tag: pacsflow_ingest_instances_total{outcome=\"stored\"} = ${stored:-none}, sent $n (others: ${other:-none}; logs: $LOGS/$tag.*)"
      [ -z "$other" ] || die "$tag: pacsflow counted other outcomes: $other"
      [ "${got_b:-0}" -ge $((bytes / 100 * 99)) ] || die "$tag: pacsflow_ingest_bytes_total = ${got_b:-none}, sent $bytes"
      # mean ms per C-STORE: whole handler, storage put, JetStream publish of the instance event
      PF_MS=$(echo "$m" | awk '
        $1 ~ /^pacsflow_ingest_(cstore|storage_put|publish)_seconds_(sum|count)$/ {v[$1] = $2}
        END {
          n = v["pacsflow_ingest_cstore_seconds_count"]; if (!n) {print "- - -"; exit}
          printf "%.3f %.3f %.3f", v["pacsflow_ingest_cstore_seconds_sum"] / n * 1000,
            v["pacsflow_ingest_storage_put_seconds_sum"] / n * 1000, v["pacsflow_ingest_publish_seconds_sum"] / n * 1000
        }')
      if [[ $RNAME == pf-fs* ]]; then
        local files; files=$(find "$RDIR/instances" -path "$RDIR/instances/.tmp#" -prune -o -type f -print 2>/dev/null | wc -l)
        [ "$files" -eq "$n" ] || die "$tag: $files files under --data/instances, sent $n: $(find "$RDIR/instances" -type f | head -3)"
      fi
      # The pipeline is done when the study is reported: wait for pacs.study.received.
      STUDY_DELAY="-" STUDY_SEEN="-"
      if [ "${5:-1}" = 1 ]; then
        local i
        for ((i = 0; i < 1200; i++)); do
          [ "$(metric '^pacsflow_ingest_study_events_total')" != 0.000000 ] && break
          sleep 0.05
        done
        t=$(now)
        [ "$(metric '^pacsflow_ingest_study_events_total')" != 0.000000 ] || die "$tag: no study event 60 s after the last storescu exited"
        STUDY_SEEN=$(awk -v a="$t_end" -v b="$t" 'BEGIN {printf "%.3f", b - a}')
        STUDY_DELAY=$(metric '^pacsflow_ingest_study_report_delay_seconds_sum$')
        grep -q "msg=\"study reported\".* instances=$n " "$RLOG" || die "$tag: study not reported with $n instances: $(grep 'study reported' "$RLOG" | head -2)"
      fi
      ! grep -qE 'level=(WARN|ERROR)' "$RLOG" || die "$tag: pacsflow logged warnings/errors: $(grep -E 'level=(WARN|ERROR)' "$RLOG" | head -3)"
      ;;
  esac
}

now() { date +%s.%N; }
# secs GO-DURATION: seconds of a simple Go duration (2s, 500ms, 1.5s)
secs() { awk -v d="$1" 'BEGIN {if (d ~ /ms$/) print d / 1000; else if (d ~ /^[0-9.]+s$/) print d + 0; else print -1}'; }
# test recv run secs n bytes rss_kb note study_delay_s study_seen_s handler_ms put_ms publish_ms
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; }

# store_test TEST RECEIVER RUN ASSOCIATIONS FILES...
store_test() {
  local test=$1 recv=$2 run=$3 nassoc=$4; shift 4
  local files=("$@") tag="${test// /}.r$run" t0 t1 i rc=0 pids=() bytes
  bytes=$(bytes_of "${files[@]}")
  STUDY_DELAY="-" STUDY_SEEN="-" PF_MS="- - -"
  start_receiver "$recv" "$tag"
  local per=$(((${#files[@]} + nassoc - 1) / nassoc))
  t0=$(now)
  for ((i = 0; i < nassoc; i++)); do
    storescu "${SCU_OPTS[@]}" 127.0.0.1 "$PORT" "${files[@]:i*per:per}" > "$LOGS/$tag.$recv.storescu$i.log" 2>&1 &
    pids+=($!)
  done
  SENDERS=("${pids[@]}")
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { rc=$?; echo "storescu $i exited with status $rc" >&2; }
  done
  t1=$(now)
  SENDERS=()
  [ $rc -eq 0 ] || die "$tag $(label "$recv"): storescu failed ($(cat "$LOGS/$tag.$recv".storescu*.log | head -5))"
  check_received "${#files[@]}" "$bytes" "$tag.$recv" "$t1"
  stop_receiver
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}')
  # shellcheck disable=SC2086
  record "$test" "$recv" "$run" "$secs" "${#files[@]}" "$bytes" "$RSS_KB" "$RSS_NOTE" "$STUDY_DELAY" "$STUDY_SEEN" $PF_MS
  local note=$RSS_NOTE stall
  [ "$note" = - ] && note=""
  # Small instances at 20 ms or more each: the ~45 ms per C-STORE stall signature (see README);
  # not checked for the strict modes, where an fsync per instance may take that long.
  stall=$(awk -v n="${#files[@]}" -v s="$secs" -v b="$bytes" 'BEGIN {if (b / n < 2e6 && s / n > 0.02) printf "%.0f", s / n * 1000}')
  if [ -n "$stall" ] && [[ $recv != *strict ]]; then
    note="$note  <-- SLOW: $stall ms per C-STORE (stall or CPU contention; see README)"
    echo "$tag $(label "$recv"): $stall ms per C-STORE, load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/slow.txt"
  fi
  [ "$STUDY_DELAY" != - ] && note="$note  study event +${STUDY_SEEN} s after the sender exited (server: ${STUDY_DELAY} s after the last instance)"
  if [ "$STUDY_DELAY" != - ] && awk -v d="$STUDY_DELAY" -v q="$(secs "$PF_QUIET")" 'BEGIN {exit !(q >= 0 && d > q + 1)}'; then
    note="$note  <-- LATE study report"
    echo "$tag $(label "$recv"): study reported ${STUDY_DELAY} s after its last instance (quiet period $PF_QUIET); log: $RLOG" >> "$OUT/late.txt"
  fi
  [ "$PF_MS" != "- - -" ] && note="$note; ms per C-STORE handler/put/publish: ${PF_MS// //}"
  printf '  %-9s %-32s %7.2f s  %6.1f inst/s  %7.1f MB/s  RSS %5.0f MiB  load %s%s\n' "$test" "$(label "$recv")" "$secs" \
    "$(awk -v n="${#files[@]}" -v s="$secs" 'BEGIN {print n / s}')" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / 1e6 / s}')" \
    "$(awk -v k="$RSS_KB" 'BEGIN {print k / 1024}')" "$(cut -d' ' -f1 /proc/loadavg)" "${note:+  $note}"
}

# latency_test MODE RECEIVER RUN: bench/studylatency against a fresh pacsflow up
latency_test() {
  local mode=$1 recv=$2 run=$3 tag="lat-$1.r$3" log r
  start_receiver "$recv" "$tag"
  log=$LOGS/$tag.$recv.studylatency.log
  "$LATBIN" -addr "127.0.0.1:$PORT" -nats "$PF_NATS" -ae "$AE" -studies "$STUDIES" -instances "$STUDY_INSTANCES" \
    -quiet "$PF_QUIET" -mode "$mode" -v > "$log" 2>&1 || die "$tag $(label "$recv"): studylatency failed: $(tail -5 "$log")"
  r=$(grep '^RESULT ' "$log") || die "$tag: no RESULT line in $log"
  awk -v t="$tag $(label "$recv")" -v q="$(secs "$PF_QUIET")" '/^study / && match($0, /excess [+-][0-9.]+ ms/) {
      e = substr($0, RSTART + 7, RLENGTH - 10) + 0
      if (e > 1000) printf "%s: study %s reported %.1f s after its last C-STORE response (quiet period %s s)\n", t, $2, q + e / 1000, q
    }' "$log" >> "$OUT/late.txt"
  check_received $((STUDIES * STUDY_INSTANCES)) 0 "$tag.$recv" 0 0
  local sd sc
  sd=$(metric '^pacsflow_ingest_study_report_delay_seconds_sum$') sc=$(metric '^pacsflow_ingest_study_report_delay_seconds_count$')
  stop_receiver
  # mode recv run p50 p95 max min ex50 ex95 exmax server_mean_delay rss_kb studies over100
  echo "$r" | awk -v recv="$recv" -v run="$run" -v sd="$sd" -v sc="$sc" -v rss="$RSS_KB" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.4f\t%s\t%s\t%s\n", f["mode"], recv, run, f["p50_ms"], f["p95_ms"], f["max_ms"], f["min_ms"],
      f["excess_p50_ms"], f["excess_p95_ms"], f["excess_max_ms"], (sc > 0 ? sd / sc : -1), rss, f["studies"], f["over100"]
  }' >> "$LAT"
  echo "$r" | awk -v l="$(label "$recv")" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
    printf "  %-9s %-32s %s studies: event after last C-STORE-RSP p50 %s ms, p95 %s ms, max %s ms (quiet period %s ms; %s over +100 ms); sent in %s ms\n",
      "latency", l, f["studies"] " " f["mode"], f["p50_ms"], f["p95_ms"], f["max_ms"], f["quiet_ms"], f["over100"], f["send_ms"]
  }'
}

# ---- header ----
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!bench' 2>/dev/null || REV="$REV+dirty"
echo "pacsflow pipeline ingest benchmark (pacsflow up)  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "pacsflow git revision: $REV ($(go version | cut -d' ' -f3))"
echo "DCMTK: $(storescp --version 2>&1 | sed -n 's/^\$dcmtk: \(.*\) \$$/\1/p' | head -1)"
if [ -n "$ORTHANC_BIN" ]; then echo "Orthanc: $ORTHANC_VER (Debian package, measured)"; else
  echo "Orthanc: not measured (WITH_ORTHANC=1 installs Debian's package and measures it); its figures below are QUOTED from the anchors table"; fi
echo "machine: $(nproc) CPUs, $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), $(df -PT "$OUT" | awk 'NR == 2 {print $2 " on " $1}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "corpus: small ${#SMALL[@]} files $((SMALL_B / 1000000)) MB; large ${#LARGE[@]} files $((LARGE_B / 1000000)) MB; huge 1 file $((HUGE_B / 1000000)) MB"
echo "sender: TCP_NODELAY=1 storescu ${SCU_OPTS[*]} 127.0.0.1 PORT FILES...   (port $PORT, RUNS=$RUNS)"
echo "study latency: bench/studylatency, $STUDIES studies x $STUDY_INSTANCES instances of 512 KiB pixel data, one association each"
echo "receivers (defaults; max PDU: DCMTK 16 KiB, pacsflow 256 KiB; pacsflow --data: a fresh folder under bench/out):"
RECVS=(dcmtk dcmtk-B dcmtk-fork pf-obj pf-fs pf-obj-strict pf-fs-strict)
[ -n "$ORTHANC_BIN" ] && RECVS+=(orthanc)
for r in "${RECVS[@]}"; do printf '  %-32s %s\n' "$(label "$r"):" "$(receiver_cmd "$r" DIR | sed "s#$ROOT/##")"; done
echo


# ---- measurements: runs outermost and the receiver order rotated per run, so noise and
# ---- warm-up spread over every receiver; the corpus is read once first (page cache).
X1=(dcmtk dcmtk-B pf-obj pf-fs pf-obj-strict pf-fs-strict)
X4=(dcmtk-fork pf-obj pf-fs pf-obj-strict pf-fs-strict)
[ -n "$ORTHANC_BIN" ] && X1+=(orthanc) X4+=(orthanc)
cat "${SMALL[@]}" "${LARGE[@]}" "${HUGE[@]}" > /dev/null
sync
START=$(now)
for ((run = 1; run <= RUNS; run++)); do
  echo "run $run/$RUNS"
  for r in $(rotate $((run - 1)) "${X1[@]}"); do store_test "small x1" "$r" "$run" 1 "${SMALL[@]}"; done
  for r in $(rotate $((run - 1)) "${X1[@]}"); do store_test "large x1" "$r" "$run" 1 "${LARGE[@]}"; done
  for r in $(rotate $((run - 1)) "${X4[@]}"); do store_test "small x4" "$r" "$run" 4 "${SMALL[@]}"; done
  for r in $(rotate $((run - 1)) pf-obj pf-fs dcmtk-B); do store_test "huge x1" "$r" "$run" 1 "${HUGE[@]}"; done
  for r in $(rotate $((run - 1)) pf-obj pf-fs pf-obj-strict pf-fs-strict); do latency_test back-to-back "$r" "$run"; done
done
echo "isolated studies (once)"
for r in pf-obj pf-fs; do latency_test isolated "$r" 1; done
echo "measured in $(awk -v a="$START" -v b="$(now)" 'BEGIN {printf "%.0f", b - a}') s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- log check: warnings and errors of receivers and senders ----
echo
problems=$(grep -HiE 'level=(WARN|ERROR)|^[EWF]: |error|fail|panic' "$LOGS"/*.log 2>/dev/null | grep -vE 'failed=0|; 0 failed$' | head -20 || true)
if [ -n "$problems" ]; then echo "log lines with warnings or errors (first 20; all logs in $LOGS):"; echo "$problems" | sed "s#$LOGS/##"; else echo "logs: no warnings or errors"; fi

if [ -s "$OUT/slow.txt" ]; then
  echo "WARNING: runs with small instances at >= 20 ms per C-STORE (expect ~1-3 ms): their figures are not representative"
  sed 's/^/  /' "$OUT/slow.txt"
fi

if [ -s "$OUT/late.txt" ]; then
  echo "WARNING: studies reported more than 1 s after their quiet period (expect a few ms); each is in the 'study s' and"
  echo "latency figures below:"
  sed 's/^/  /' "$OUT/late.txt"
fi

# ---- summary ----
echo
echo "Medians of $RUNS run(s), (min-max). MB = 10^6 bytes of Part 10 files sent, per second of sender wall time."
echo "Peak RSS = VmHWM of the receiver process (for --fork: parent + sum over the per-association children), polled every 50 ms."
echo "'study' = seconds from the last storescu exit until pacsflow's /metrics counted the pacs.study.received event (polled,"
echo "50 ms), i.e. quiet period + the assembler's backlog; server = pacsflow_ingest_study_report_delay_seconds (last instance -> event)."
echo "ms/C-STORE: medians of pacsflow's own means per C-STORE: pacsflow_ingest_cstore_seconds (whole handler), storage_put_seconds,"
echo "publish_seconds (JetStream ack of the instance event); the rest of the handler is the metadata prefix and the instance registry."
awk -F'\t' -v runs="$RUNS" -v oq_s="$ORTHANC_Q_SMALL" -v oq_l="$ORTHANC_Q_LARGE_MBS" -v oq_4="$ORTHANC_Q_X4" -v target="$HUGE_TARGET_MIB" -v over="$ORTHANC_VER" '
function srt(s, a,   n, i, j, v) { # split s into a, sorted numerically; returns the count (mawk has no asort)
  n = split(s, a, " ")
  for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
  return n
}
function med(s,   a, n) { n = srt(s, a); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function lo(s,   a, n) { n = srt(s, a); return a[1] }
function hi(s,   a, n) { n = srt(s, a); return a[n] }
function rng(s, f) { return lo(s) == hi(s) ? sprintf(f, med(s)) : sprintf(f " (" f "-" f ")", med(s), lo(s), hi(s)) }
function name(r) {
  if (r == "dcmtk") return "DCMTK storescp"; if (r == "dcmtk-B") return "DCMTK storescp +B"; if (r == "dcmtk-fork") return "DCMTK storescp --fork"
  if (r == "pf-obj") return "pacsflow up objectstore"; if (r == "pf-fs") return "pacsflow up fs"
  if (r == "pf-obj-strict") return "pacsflow up objectstore STRICT"; if (r == "pf-fs-strict") return "pacsflow up fs STRICT"
  if (r == "orthanc") { v = over; sub(/\+.*/, "", v); return "Orthanc " v " (measured)" }
  return r
}
{
  k = $1 SUBSEP $2
  if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
  ips[k] = ips[k] " " $5 / $4; mbs[k] = mbs[k] " " $6 / 1e6 / $4; rss[k] = rss[k] " " $7 / 1024
  if ($9 != "-") { sd[k] = sd[k] " " $9; ss[k] = ss[k] " " $10 }
  if ($11 != "-") { hm[k] = hm[k] " " $11; pm[k] = pm[k] " " $12; um[k] = um[k] " " $13 }
  if ($8 != "-") note[k] = $8
}
END {
  printf "\n%-9s  %-32s  %-22s  %-20s  %-15s  %-22s  %-22s  %s\n", "test", "receiver", "inst/s", "MB/s", "peak RSS MiB", "study s (after exit)", "server s", "ms/C-STORE: handler put publish"
  for (i = 1; i <= nk; i++) {
    split(order[i], t, SUBSEP); k = order[i]
    printf "%-9s  %-32s  %-22s  %-20s  %-15s  %-22s  %-22s  %s\n", t[1], name(t[2]), rng(ips[k], "%.1f"), rng(mbs[k], "%.0f"), rng(rss[k], "%.0f"),
      (k in sd) ? rng(ss[k], "%.2f") : "", (k in sd) ? rng(sd[k], "%.3f") : "",
      (k in hm) ? sprintf("%.2f %.2f %.2f", med(hm[k]), med(pm[k]), med(um[k])) : ""
    if (k in note) printf "%-9s  %-32s  (last run: %s)\n", "", "", note[k]
  }
  printf "\nratios of the medians (inst/s, MB/s: >1 means faster than the reference; RSS: <1 means smaller)\n"
  printf "%-9s  %-32s  %-30s  %8s  %8s\n", "test", "receiver", "reference", "speed", "RSS"
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP); if (p[2] !~ /^(pf-|orthanc)/ || p[1] == "huge x1") continue
    ref1 = (p[1] == "small x4") ? "dcmtk-fork" : "dcmtk"
    refs = ref1 (p[1] == "small x4" ? "" : " dcmtk-B")
    nr = split(refs, rr, " ")
    for (j = 1; j <= nr; j++) {
      q = p[1] SUBSEP rr[j]; if (!(q in seen)) continue
      printf "%-9s  %-32s  %-30s  %8.2f  %8.2f\n", p[1], name(p[2]), name(rr[j]), med(ips[order[i]]) / med(ips[q]), med(rss[order[i]]) / med(rss[q])
    }
    if (p[1] == "small x1") printf "%-9s  %-32s  %-30s  %8.2f  %8s\n", p[1], name(p[2]), "Orthanc (QUOTED: " oq_s " inst/s)", med(ips[order[i]]) / oq_s, "-"
    if (p[1] == "large x1") printf "%-9s  %-32s  %-30s  %8.2f  %8s\n", p[1], name(p[2]), "Orthanc (QUOTED: " oq_l " MB/s)", med(mbs[order[i]]) / oq_l, "-"
    if (p[1] == "small x4") printf "%-9s  %-32s  %-30s  %8.2f  %8s\n", p[1], name(p[2]), "Orthanc (QUOTED: " oq_4 " inst/s)", med(ips[order[i]]) / oq_4, "-"
    q = p[1] SUBSEP "orthanc"
    if (p[2] != "orthanc" && (q in seen)) printf "%-9s  %-32s  %-30s  %8.2f  %8.2f\n", p[1], name(p[2]), name("orthanc"), med(ips[order[i]]) / med(ips[q]), med(rss[order[i]]) / med(rss[q])
  }
  printf "\nstrict durability (--strict-durability: fsync before every Success): cost against the default of the same backend\n"
  printf "%-9s  %-32s  %22s  %10s\n", "test", "receiver", "inst/s strict/default", "slowdown"
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP); if (p[2] !~ /strict$/) continue
    d = p[2]; sub(/-strict$/, "", d); q = p[1] SUBSEP d; if (!(q in seen)) continue
    r = med(ips[order[i]]) / med(ips[q])
    printf "%-9s  %-32s  %22.2f  %9.0f%%\n", p[1], name(p[2]), r, (1 - r) * 100
  }
  printf "\nhuge x1 (one %s instance): peak RSS of pacsflow up, target < %d MiB (verdict on the largest run)\n", "1.05 GB", target
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP); if (p[1] != "huge x1" || p[2] !~ /^pf-/) continue
    printf "  %-32s  %s MiB  %s\n", name(p[2]), rng(rss[order[i]], "%.0f"), hi(rss[order[i]]) < target ? "PASS" : "FAIL (over target)"
  }
}' "$RES"
echo
echo "study-completion latency (bench/studylatency): last C-STORE response -> pacs.study.received arrival, one clock;"
echo "excess = latency - quiet period; target: p95 excess <= 100 ms. Medians over runs (min-max) of each run's percentile."
awk -F'\t' '
function srt(s, a,   n, i, j, v) { n = split(s, a, " "); for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }; return n }
function med(s,   a, n) { n = srt(s, a); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function lo(s,   a, n) { n = srt(s, a); return a[1] }
function hi(s,   a, n) { n = srt(s, a); return a[n] }
function rng(s, f) { return lo(s) == hi(s) ? sprintf(f, med(s)) : sprintf(f " (" f "-" f ")", med(s), lo(s), hi(s)) }
function name(r) {
  if (r == "pf-obj") return "pacsflow up objectstore"; if (r == "pf-fs") return "pacsflow up fs"
  if (r == "pf-obj-strict") return "pacsflow up objectstore STRICT"; if (r == "pf-fs-strict") return "pacsflow up fs STRICT"
  return r
}
{
  k = $1 SUBSEP $2
  if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
  p50[k] = p50[k] " " $4; e50[k] = e50[k] " " $8; e95[k] = e95[k] " " $9; emx[k] = emx[k] " " $10; srv[k] = srv[k] " " $11 * 1000; rss[k] = rss[k] " " $12 / 1024; n[k]++
  ns[k] += $13; over[k] += $14
}
END {
  printf "\n%-13s  %-32s  %4s  %-22s  %-20s  %-22s  %-24s  %-10s  %-11s  %s\n", "mode", "receiver", "runs", "latency p50 ms", "excess p50 ms", "excess p95 ms", "excess max ms", "server ms", ">+100 ms", "p95 target"
  for (i = 1; i <= nk; i++) {
    split(order[i], t, SUBSEP); k = order[i]
    printf "%-13s  %-32s  %4d  %-22s  %-20s  %-22s  %-24s  %-10s  %-11s  %s\n", t[1], name(t[2]), n[k], rng(p50[k], "%.1f"), rng(e50[k], "%.1f"), rng(e95[k], "%.1f"), rng(emx[k], "%.1f"),
      sprintf("%.1f", med(srv[k])), over[k] "/" ns[k], hi(e95[k]) <= 100 ? "PASS" : "FAIL"
  }
}' "$LAT"
echo "(server ms: median over runs of the mean of pacsflow_ingest_study_report_delay_seconds, the assembler's own view from the last"
echo " instance's receipt to the publish; '>+100 ms': studies over all runs whose excess passed 100 ms; target verdict on the worst run's p95)"
echo
echo "raw results: $RES, $LAT; logs: $LOGS"
