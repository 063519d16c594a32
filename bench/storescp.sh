#!/usr/bin/env bash
# Ingest benchmark: pacsflow storescp against DCMTK storescp, with DCMTK storescu as the
# sender for every receiver (same options), over loopback, on this machine, in one run.
#
#   RUNS=3 bench/storescp.sh          # RUNS (default 3): repetitions; medians with min-max
#
# Builds bench/out/pacsflow, builds bench/corpus with bench/make-corpus.sh if missing, then
# per run and receiver: starts a fresh receiver writing into a fresh folder under bench/out
# (same disk as the corpus), times the sender with date +%s.%N, polls the receiver's VmHWM
# (peak RSS) from /proc every 50 ms, checks that every file arrived, stops the receiver,
# removes the received files and syncs. Tests:
#   small x1   500 x 528 KB, one association
#   large x1   20 x 20-50 MB multi-frame, one association
#   small x4   500 x 528 KB, 4 storescu processes of 125 files each at once
#   echo       200 C-ECHOs in one association (total wall time of the echo tool)
#   huge x1    one 1.05 GB instance (2000 frames): peak RSS of the receiver
# Needs go, DCMTK (storescp, storescu, echoscu, dcmodify). Results: bench/out/results.tsv,
# logs: bench/out/logs/. Exits non-zero on any failed transfer.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-3}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer" >&2; exit 2; }
# pacsflow reads PACSFLOW_<FLAG> from the environment: measure its defaults, not the caller's settings.
for v in $(compgen -v PACSFLOW_ || true); do echo "storescp.sh: ignoring $v=${!v}" >&2; unset "$v"; done
export TCP_NODELAY=1 # read by every DCMTK tool; without it each C-STORE stalls ~45 ms (Nagle + delayed ACK)

OUT=$ROOT/bench/out
BIN=$OUT/pacsflow
CORPUS=$ROOT/bench/corpus
LOGS=$OUT/logs
RES=$OUT/results.tsv
AE=BENCH
SCU_OPTS=(-R -aec "$AE" -aet BENCHSCU) # -R: propose only the SOP classes of the files; default -x=:
# one presentation context per uncompressed TS, so each file goes in its own (stored) TS.
ECHOES=200

die() { echo "storescp.sh: FAIL: $*" >&2; exit 1; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
for t in go storescp storescu echoscu dcmodify; do
  command -v $t >/dev/null || die "$t missing (apt-get install -y dcmtk; Go from go.dev)"
done

# ---- cleanup: every process this script starts is recorded here and stopped on exit ----
RECEIVER=""   # pid (= process group, started with setsid) of the running receiver
POLLER=""     # pid of the running RSS poller
SENDERS=()    # pids of running senders
cleanup() {
  local p
  for p in "${SENDERS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$POLLER" ] && kill "$POLLER" 2>/dev/null || true
  [ -n "$RECEIVER" ] && kill -TERM -- "-$RECEIVER" 2>/dev/null || true
  [ -n "$RECEIVER" ] && { sleep 0.5; kill -KILL -- "-$RECEIVER" 2>/dev/null || true; }
  rm -rf "$OUT"/recv.* "$OUT"/rss.*
}
trap cleanup EXIT
trap 'echo "storescp.sh: interrupted" >&2; exit 130' INT TERM

# ---- build and corpus ----
mkdir -p "$OUT" "$LOGS"
rm -f "$LOGS"/*.log "$RES" "$OUT/slow.txt"
go build -o "$BIN" ./cmd/pacsflow
bench/make-corpus.sh "$CORPUS"
mapfile -t SMALL < <(find "$CORPUS/small" -name '*.dcm' -type f | sort)
mapfile -t LARGE < <(find "$CORPUS/large" -name '*.dcm' -type f | sort)
mapfile -t HUGE < <(find "$CORPUS/huge" -name '*.dcm' -type f | sort)
[ ${#SMALL[@]} -eq 500 ] && [ ${#LARGE[@]} -eq 20 ] && [ ${#HUGE[@]} -eq 1 ] || die "corpus incomplete under $CORPUS"
SMALL_B=$(bytes_of "${SMALL[@]}") LARGE_B=$(bytes_of "${LARGE[@]}") HUGE_B=$(bytes_of "${HUGE[@]}")

# ---- receivers ----
free_port() {
  local p
  for ((p = 41112; p < 41200; p++)); do
    listening "$p" || { echo "$p"; return; }
  done
  die "no free port in 41112-41199"
}
PORT=$(free_port)

# receiver_cmd NAME DIR: the command line of receiver NAME
receiver_cmd() {
  case $1 in
    dcmtk) echo storescp -aet "$AE" -od "$2" "$PORT" ;;
    dcmtk-B) echo storescp +B -aet "$AE" -od "$2" "$PORT" ;;
    dcmtk-fork) echo storescp --fork -aet "$AE" -od "$2" "$PORT" ;;
    pacsflow) echo "$BIN" storescp --dir "$2" --addr "127.0.0.1:$PORT" --ae "$AE" ;;
    pacsflow-fsync) echo "$BIN" storescp --fsync --dir "$2" --addr "127.0.0.1:$PORT" --ae "$AE" ;;
    *) die "unknown receiver $1" ;;
  esac
}
label() {
  case $1 in
    dcmtk) echo "DCMTK storescp" ;;
    dcmtk-B) echo "DCMTK storescp +B" ;;
    dcmtk-fork) echo "DCMTK storescp --fork" ;;
    pacsflow) echo "pacsflow storescp" ;;
    pacsflow-fsync) echo "pacsflow storescp --fsync" ;;
    *) echo "$1" ;;
  esac
}

RDIR="" RLOG="" RSSF=""
# start_receiver NAME TAG: fresh folder, receiver in its own process group, RSS poller
start_receiver() {
  RDIR=$(mktemp -d "$OUT/recv.XXXXXX")
  RLOG=$LOGS/$2.$1.receiver.log
  RSSF=$OUT/rss.$2.$1
  : > "$RSSF"
  # shellcheck disable=SC2046
  setsid $(receiver_cmd "$1" "$RDIR") > "$RLOG" 2>&1 < /dev/null &
  RECEIVER=$!
  local i
  for ((i = 0; i < 200; i++)); do
    listening "$PORT" && break
    kill -0 "$RECEIVER" 2>/dev/null || { cat "$RLOG" >&2; die "$(label "$1") exited at start"; }
    sleep 0.05
  done
  listening "$PORT" || die "$(label "$1") does not listen on $PORT after 10 s"
  local comm; comm=$(cat "/proc/$RECEIVER/comm")
  [[ $comm == storescp || $comm == pacsflow ]] || die "pid $RECEIVER is $comm, not the receiver"
  poll_rss "$RECEIVER" "$RSSF" &
  POLLER=$!
}


RSS_KB=0 RSS_NOTE=""

# check_received N BYTES TAG: N files arrived, with at least 99% of the bytes sent
check_received() {
  local n got_b
  n=$(find "$RDIR" -maxdepth 1 -type f ! -name '.*' | wc -l)
  got_b=$(find "$RDIR" -maxdepth 1 -type f ! -name '.*' -printf '%s\n' | awk '{s += $1} END {printf "%d", s}')
  [ "$n" -eq "$1" ] || die "$3: receiver stored $n of $1 files (logs: $LOGS/$3.*)"
  [ "$got_b" -ge $(($2 / 100 * 99)) ] || die "$3: receiver stored $got_b bytes, sent $2 (logs: $LOGS/$3.*)"
  ! grep -qE 'failed=[1-9]|level=ERROR' "$RLOG" || die "$3: receiver logged failures: $(grep -E 'failed=[1-9]|level=ERROR' "$RLOG" | head -3)"
}

now() { date +%s.%N; }
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RES"; } # test recv run secs n bytes rss_kb note

# store_test TEST RECEIVER RUN ASSOCIATIONS FILES...
store_test() {
  local test=$1 recv=$2 run=$3 nassoc=$4; shift 4
  local files=("$@") tag="${test// /}.r$run" t0 t1 i rc=0 pids=() bytes
  bytes=$(bytes_of "${files[@]}")
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
  check_received "${#files[@]}" "$bytes" "$tag.$recv"
  stop_receiver
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}')
  record "$test" "$recv" "$run" "$secs" "${#files[@]}" "$bytes" "$RSS_KB" "$RSS_NOTE"
  local note=$RSS_NOTE stall
  [ "$note" = - ] && note=""
  # Small instances at 20 ms or more each: the ~45 ms per C-STORE stall signature (see README).
  stall=$(awk -v n="${#files[@]}" -v s="$secs" -v b="$bytes" 'BEGIN {if (b / n < 2e6 && s / n > 0.02) printf "%.0f", s / n * 1000}')
  if [ -n "$stall" ]; then
    note="$note  <-- SLOW: $stall ms per C-STORE (stall or CPU contention; see README)"
    echo "$tag $(label "$recv"): $stall ms per C-STORE, load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/slow.txt"
  fi
  printf '  %-9s %-27s %7.2f s  %6.1f inst/s  %7.1f MB/s  RSS %5.0f MiB  load %s%s\n' "$test" "$(label "$recv")" "$secs" \
    "$(awk -v n="${#files[@]}" -v s="$secs" 'BEGIN {print n / s}')" "$(awk -v b="$bytes" -v s="$secs" 'BEGIN {print b / 1e6 / s}')" \
    "$(awk -v k="$RSS_KB" 'BEGIN {print k / 1024}')" "$(cut -d' ' -f1 /proc/loadavg)" "${note:+  $note}"
}

# echo_test RECEIVER TOOL RUN: 200 C-ECHOs in one association; TOOL dcmtk or pacsflow
echo_test() {
  local recv=$1 tool=$2 run=$3 tag="echo.r$3" t0 t1 log
  log=$LOGS/$tag.$recv.$tool-echoscu.log
  start_receiver "$recv" "$tag"
  t0=$(now)
  if [ "$tool" = dcmtk ]; then
    echoscu --repeat "$ECHOES" -aec "$AE" -aet BENCHSCU 127.0.0.1 "$PORT" > "$log" 2>&1 || die "$tag: echoscu -> $(label "$recv") failed: $(head -5 "$log")"
  else
    "$BIN" echoscu --count "$ECHOES" --addr "127.0.0.1:$PORT" --called-ae "$AE" > "$log" 2>&1 || die "$tag: pacsflow echoscu -> $(label "$recv") failed: $(head -5 "$log")"
  fi
  t1=$(now)
  stop_receiver
  local secs; secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", b - a}')
  record echo "$tool>$recv" "$run" "$secs" "$ECHOES" 0 "$RSS_KB" -
  printf '  %-9s %-40s %7.1f ms\n' echo "$([ "$tool" = dcmtk ] && echo "echoscu" || echo "pacsflow echoscu") -> $(label "$recv")" \
    "$(awk -v s="$secs" 'BEGIN {print s * 1000}')"
}

# ---- header ----
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- . ':!bench' 2>/dev/null || REV="$REV+dirty"
echo "pacsflow ingest benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "pacsflow git revision: $REV ($(go version | cut -d' ' -f3))"
echo "DCMTK: $(storescp --version 2>&1 | sed -n 's/^\$dcmtk: \(.*\) \$$/\1/p' | head -1)"
echo "machine: $(nproc) CPUs, $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "corpus: small ${#SMALL[@]} files $((SMALL_B / 1000000)) MB; large ${#LARGE[@]} files $((LARGE_B / 1000000)) MB; huge 1 file $((HUGE_B / 1000000)) MB"
echo "sender: TCP_NODELAY=1 storescu ${SCU_OPTS[*]} 127.0.0.1 PORT FILES...   (port $PORT, RUNS=$RUNS)"
echo "receivers (defaults; max PDU: DCMTK 16 KiB, pacsflow 256 KiB):"
for r in dcmtk dcmtk-B dcmtk-fork pacsflow pacsflow-fsync; do printf '  %-26s %s\n' "$(label "$r"):" "$(receiver_cmd "$r" DIR | sed "s#$ROOT/##")"; done
echo


# ---- measurements: runs outermost and the receiver order rotated per run, so noise and
# ---- warm-up spread over every receiver; the corpus is read once first (page cache).
cat "${SMALL[@]}" "${LARGE[@]}" "${HUGE[@]}" > /dev/null
sync
START=$(now)
for ((run = 1; run <= RUNS; run++)); do
  echo "run $run/$RUNS"
  for r in $(rotate $((run - 1)) dcmtk dcmtk-B pacsflow pacsflow-fsync); do store_test "small x1" "$r" "$run" 1 "${SMALL[@]}"; done
  for r in $(rotate $((run - 1)) dcmtk dcmtk-B pacsflow pacsflow-fsync); do store_test "large x1" "$r" "$run" 1 "${LARGE[@]}"; done
  for r in $(rotate $((run - 1)) dcmtk-fork pacsflow); do store_test "small x4" "$r" "$run" 4 "${SMALL[@]}"; done
  echo_test dcmtk dcmtk "$run"
  echo_test dcmtk-fork dcmtk "$run"
  echo_test pacsflow dcmtk "$run"
  echo_test pacsflow pacsflow "$run"
  echo_test dcmtk pacsflow "$run"
  for r in $(rotate $((run - 1)) pacsflow dcmtk-B); do store_test "huge x1" "$r" "$run" 1 "${HUGE[@]}"; done
done
echo "measured in $(awk -v a="$START" -v b="$(now)" 'BEGIN {printf "%.0f", b - a}') s; load average now $(cut -d' ' -f1-3 /proc/loadavg)"

# ---- log check: warnings and errors of receivers and senders ----
echo
problems=$(grep -HiE 'level=(WARN|ERROR)|^[EWF]: |error|fail' "$LOGS"/*.log 2>/dev/null | grep -vE 'failed=0|; 0 failed$' | head -20 || true)
if [ -n "$problems" ]; then echo "log lines with warnings or errors (first 20; all logs in $LOGS):"; echo "$problems" | sed "s#$LOGS/##"; else echo "logs: no warnings or errors"; fi

if [ -s "$OUT/slow.txt" ]; then
  echo "WARNING: runs with small instances at >= 20 ms per C-STORE (expect ~1-2 ms): their figures are not representative"
  sed 's/^/  /' "$OUT/slow.txt"
fi

# ---- summary ----
echo
echo "Medians of $RUNS run(s), (min-max). MB = 10^6 bytes of Part 10 files sent. Peak RSS = VmHWM of the receiver;"
echo "for --fork: parent + sum over the per-association children (polled every 50 ms)."
awk -F'\t' -v runs="$RUNS" '
function srt(s, a,   n, i, j, v) { # split s into a, sorted numerically; returns the count (mawk has no asort)
  n = split(s, a, " ")
  for (i = 2; i <= n; i++) { v = a[i] + 0; for (j = i - 1; j >= 1 && a[j] + 0 > v; j--) a[j + 1] = a[j]; a[j + 1] = v }
  return n
}
function med(s,   a, n) { n = srt(s, a); return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
function lo(s,   a, n) { n = srt(s, a); return a[1] }
function hi(s,   a, n) { n = srt(s, a); return a[n] }
function rng(s, f) { return sprintf(f " (" f "-" f ")", med(s), lo(s), hi(s)) }
function name(r) {
  sub(/^dcmtk>/, "echoscu -> ", r); sub(/^pacsflow>/, "pacsflow echoscu -> ", r)
  sub(/dcmtk-fork$/, "DCMTK storescp --fork", r); sub(/dcmtk-B$/, "DCMTK storescp +B", r); sub(/dcmtk$/, "DCMTK storescp", r)
  sub(/pacsflow-fsync$/, "pacsflow storescp --fsync (strict)", r); sub(/pacsflow$/, "pacsflow storescp", r)
  return r
}
{
  k = $1 SUBSEP $2
  if (!(k in seen)) { seen[k] = 1; order[++nk] = k }
  ips[k] = ips[k] " " $5 / $4; mbs[k] = mbs[k] " " $6 / 1e6 / $4; rss[k] = rss[k] " " $7 / 1024; ms[k] = ms[k] " " $4 * 1000
  if ($8 != "-") note[k] = $8
}
END {
  printf "\n%-9s  %-36s  %-22s  %-22s  %-18s\n", "test", "receiver", "inst/s", "MB/s", "peak RSS MiB"
  for (i = 1; i <= nk; i++) {
    split(order[i], t, SUBSEP); k = order[i]
    if (t[1] == "echo") continue
    printf "%-9s  %-36s  %-22s  %-22s  %-18s\n", t[1], name(t[2]), rng(ips[k], "%.1f"), rng(mbs[k], "%.0f"), rng(rss[k], "%.0f")
    if (k in note) printf "%-9s  %-36s  (last run: %s)\n", "", "", note[k]
  }
  printf "\n%-9s  %-46s  %-24s\n", "test", "sender -> receiver", "ms for 200 C-ECHOs (whole tool run)"
  for (i = 1; i <= nk; i++) {
    split(order[i], t, SUBSEP); k = order[i]
    if (t[1] != "echo") continue
    printf "%-9s  %-46s  %-24s\n", t[1], name(t[2]), rng(ms[k], "%.0f")
  }
  # ratios pacsflow / DCMTK of the medians
  printf "\nratio pacsflow / DCMTK (medians; inst/s: >1 means pacsflow faster; RSS and echo ms: <1 means pacsflow smaller/faster)\n"
  printf "%-9s  %-38s  %-26s  %8s  %8s  %8s\n", "test", "pacsflow", "DCMTK", "inst/s", "RSS", "echo ms"
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP); if (p[1] == "echo" || p[2] !~ /^pacsflow/) continue
    for (j = 1; j <= nk; j++) {
      split(order[j], d, SUBSEP); if (d[1] != p[1] || d[2] !~ /^dcmtk/) continue
      r = med(rss[order[j]]) > 0 ? sprintf("%.2f", med(rss[order[i]]) / med(rss[order[j]])) : "-"
      printf "%-9s  %-38s  %-26s  %8.2f  %8s\n", p[1], name(p[2]), name(d[2]), med(ips[order[i]]) / med(ips[order[j]]), r
    }
  }
  for (i = 1; i <= nk; i++) {
    split(order[i], p, SUBSEP); if (p[1] != "echo" || p[2] !~ /pacsflow$/) continue
    for (j = 1; j <= nk; j++) {
      split(order[j], d, SUBSEP); if (d[1] != "echo" || d[2] != "dcmtk>dcmtk") continue
      printf "%-9s  %-38s  %-26s  %8s  %8s  %8.2f\n", "echo", name(p[2]), name(d[2]), "", "", med(ms[order[i]]) / med(ms[order[j]])
    }
  }
}' "$RES"
echo
echo "raw results: $RES; logs: $LOGS"
