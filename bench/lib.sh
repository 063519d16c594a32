# Sourced by the benchmark scripts: what they share. The receiver functions (stop_receiver)
# expect RECEIVER, POLLER, RSSF and RNAME set by the script, and label() defined by it.

bytes_of() { stat -c %s "$@" | awk '{s += $1} END {printf "%d", s}'; }

listening() { # listening PORT: something listens on TCP PORT
  awk -v p="$(printf ':%04X' "$1")" 'FNR > 1 && substr($2, length($2) - 4) == p && $4 == "0A" {f = 1} END {exit !f}' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# poll_rss PID FILE: every 50 ms append "pid VmHWM-kB" for PID and each of its children
# whenever a peak rises (children: storescp --fork forks one per association).
poll_rss() {
  local pid=$1 out=$2 p k v kids
  declare -A hwm=()
  while [ -d "/proc/$pid" ]; do
    kids=""
    read -r kids 2>/dev/null < "/proc/$pid/task/$pid/children" || true
    for p in $pid $kids; do
      while read -r k v _; do
        if [ "$k" = VmHWM: ]; then
          if [ "$v" -gt "${hwm[$p]:-0}" ]; then hwm[$p]=$v; echo "$p $v" >> "$out"; fi
          break
        fi
      done 2>/dev/null < "/proc/$p/status" || true
    done
    sleep 0.05
  done
}

# stop_receiver: final VmHWM reading, stop poller and receiver, sets RSS_KB (main process +
# sum over children) and RSS_NOTE; removes the received files (RDIR) and syncs.
stop_receiver() {
  local v
  v=$(awk '/^VmHWM:/ {print $2}' "/proc/$RECEIVER/status" 2>/dev/null || true)
  [ -n "$v" ] && echo "$RECEIVER $v" >> "$RSSF"
  kill "$POLLER" 2>/dev/null || true
  wait "$POLLER" 2>/dev/null || true
  POLLER=""
  kill -TERM -- "-$RECEIVER" 2>/dev/null || true
  local i
  for ((i = 0; i < 400; i++)); do kill -0 "$RECEIVER" 2>/dev/null || break; sleep 0.05; done
  kill -0 "$RECEIVER" 2>/dev/null && echo "$(basename "$0"): $(label "$RNAME") did not stop 20 s after SIGTERM; killed" >&2
  kill -KILL -- "-$RECEIVER" 2>/dev/null || true
  wait "$RECEIVER" 2>/dev/null || true
  read -r RSS_KB RSS_NOTE < <(awk -v main="$RECEIVER" '
    {if ($2 > m[$1]) m[$1] = $2}
    END {
      tot = 0; n = 0; mx = 0
      for (p in m) if (p != main) {tot += m[p]; n++; if (m[p] > mx) mx = m[p]}
      printf "%d %s\n", m[main] + tot, (n ? sprintf("parent=%.0fMiB+%dchildren(max=%.0fMiB)", m[main]/1024, n, mx/1024) : "-")
    }' "$RSSF")
  RECEIVER=""
  rm -rf "$RDIR" "$RSSF"
  sync
}

# rotate N WORDS...: the words, starting at word N mod count (the order changes every run)
rotate() {
  local n=$1; shift
  local a=("$@") i
  for ((i = 0; i < ${#a[@]}; i++)); do echo "${a[(i + n) % ${#a[@]}]}"; done
}

# service_bench NAME ARGS...: the service benchmarks (bench/understand.sh, bench/generate.sh).
# Builds ./bench/NAME with TensorFlow as bench/out/NAME-bench and runs it with ARGS, its output
# kept in bench/out/NAME.txt. Relies on the caller's set -euo pipefail: call it as a command of
# its own, not in a condition.
service_bench() {
  local name=$1; shift
  # shellcheck source=scripts/deps.sh
  . scripts/deps.sh
  need_go
  need_tensorflow
  export TF_CPP_MIN_LOG_LEVEL=2
  mkdir -p bench/out
  go build -o "bench/out/$name-bench" "./bench/$name"
  echo "== $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run"
  "bench/out/$name-bench" "$@" | tee "bench/out/$name.txt"
}

# summarize FILE PROGRAM: prints the "== summary" heading, then runs the awk PROGRAM on each
# RESULT line of FILE, with kv[KEY] its key=value pairs and t its test; the lines of the tests
# both service benchmarks have (throughput_ratio, end) are printed here.
summarize() {
  echo
  echo "== summary"
  awk '
  /^RESULT / {
    delete kv
    for (i = 2; i <= NF; i++) { split($i, p, "="); kv[p[1]] = p[2] }
    t = kv["test"]
    if (t == "throughput_ratio")
      printf "%-40s %8s×     (target ≥ %s×: %s; the model alone gains %s× from batch 1 to the largest)\n", "dynamic / batch 1", kv["ratio"], kv["target"],
        (kv["met"] == "true" ? "met" : "NOT MET"), kv["model_ratio"]
    else if (t == "end")
      printf "load %s at the end\n", kv["load_end"]
    else {
'"$2"'
    }
  }' "$1"
}
