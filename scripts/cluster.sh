#!/usr/bin/env bash
# A local pacsflow cluster without Kubernetes, for tests and benchmarks: three nats-server
# nodes with JetStream (built from the github.com/nats-io/nats-server/v2 module that go.mod
# requires, so the same server version pacsflow embeds) clustered on loopback, two
# `pacsflow ingest` processes on different DICOM ports and two `pacsflow understand`
# processes (reference model), all pointed at the three nodes with R3 streams, buckets and
# object store. The ingest processes share the object store, so each sees every instance.
#
#   scripts/cluster.sh up [DIR]          build bin/nats-server and bin/pacsflow, start all
#   scripts/cluster.sh status [DIR]      what runs, its health, the JetStream leaders
#   scripts/cluster.sh down [DIR]        stop all: SIGTERM, then SIGKILL after 20 s
#   scripts/cluster.sh kill NAME [DIR]   SIGKILL one process (fault injection)
#   scripts/cluster.sh start NAME [DIR]  start one process again, e.g. after kill
#
# NAME: n1, n2, n3 (NATS), ingest1, ingest2, understand1, understand2. DIR (default
# $PACSFLOW_CLUSTER_DIR or ${TMPDIR:-/tmp}/pacsflow-cluster) holds the server configs,
# the JetStream stores (n1/ ...), the analytics key the ingest processes share, and per
# process NAME.log and NAME.pid. `up` on a DIR that was brought down starts the same
# cluster again, with its data.
#
# Loopback ports: NATS clients 4301-4303, routes 6301-6303, monitoring 8301-8303; ingest
# DICOM 11211-11212 (AE PACSFLOW), HTTP 8181-8182 (/metrics, /readyz); understand HTTP
# 8191-8192. PACSFLOW_CLUSTER_PORT_OFFSET (a multiple of 100, default 0) shifts them all,
# for a second cluster on the same machine; `up` records it in DIR for the other commands
# and the next `up`.
# Other pacsflow flags can be given as PACSFLOW_<FLAG> variables, which every pacsflow
# process reads, e.g. PACSFLOW_QUIET_PERIOD=500ms scripts/cluster.sh up.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

cmd=${1:-}
name=""
case $cmd in
  up | down | status) dir=${2:-} ;;
  kill | start)
    name=${2:-}
    dir=${3:-}
    ;;
  *) usage ;;
esac
dir=${dir:-${PACSFLOW_CLUSTER_DIR:-${TMPDIR:-/tmp}/pacsflow-cluster}}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd) # absolute: the processes run from the repository root
cd "$(dirname "$0")/.."
ROOT=$PWD
NATS_BIN=$ROOT/bin/nats-server
PACSFLOW_BIN=$ROOT/bin/pacsflow
# The port offset: up takes the environment's, else the one DIR's cluster had before; the
# other commands take the one DIR's cluster was brought up with.
recorded=""
[ -f "$dir/port-offset" ] && recorded=$(cat "$dir/port-offset")
if [ "$cmd" = up ]; then
  OFF=${PACSFLOW_CLUSTER_PORT_OFFSET:-${recorded:-0}}
else
  OFF=${recorded:-${PACSFLOW_CLUSTER_PORT_OFFSET:-0}}
fi
[[ $OFF =~ ^(0|[1-9][0-9]*00)$ ]] || die "PACSFLOW_CLUSTER_PORT_OFFSET=$OFF: want a multiple of 100"
URLS=nats://127.0.0.1:$((4301 + OFF)),nats://127.0.0.1:$((4302 + OFF)),nats://127.0.0.1:$((4303 + OFF))
NAMES=(n1 n2 n3 ingest1 ingest2 understand1 understand2)
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1} # hide TensorFlow's start-up notes

# index NAME: the digit of a process name (n2 -> 2, ingest1 -> 1)
index() { echo "${1: -1}"; }

# pid_of NAME: its pid if it runs (and is ours: a recycled pid is ignored), else nothing
pid_of() {
  local f=$dir/$1.pid pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -e "$NATS_BIN" -e "$PACSFLOW_BIN"; then
    echo "$pid"
  fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ports NAME: the loopback ports the process listens on
ports() {
  local i
  i=$(index "$1")
  case $1 in
    n*) echo $((4300 + OFF + i)) $((6300 + OFF + i)) $((8300 + OFF + i)) ;;
    ingest*) echo $((11210 + OFF + i)) $((8180 + OFF + i)) ;;
    understand*) echo $((8190 + OFF + i)) ;;
  esac
}

# write_conf N: the configuration of node nN. max_payload is the embedded server's
# (pkg/natsserver), so that study manifests and object store chunks fit.
write_conf() {
  local i=$1
  cat >"$dir/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((4300 + OFF + i))
http: 127.0.0.1:$((8300 + OFF + i))
max_payload: 8MB
jetstream { store_dir: "$dir/n$i" }
cluster {
  name: pacsflow-local
  listen: 127.0.0.1:$((6300 + OFF + i))
  routes: [nats-route://127.0.0.1:$((6301 + OFF)), nats-route://127.0.0.1:$((6302 + OFF)), nats-route://127.0.0.1:$((6303 + OFF))]
}
EOF
}

# launch NAME: start the process in its own session (so that it outlives this script and a
# Ctrl-C in its terminal), appending to NAME.log.
launch() {
  local name=$1 i p
  i=$(index "$name")
  [ -z "$(pid_of "$name")" ] || die "$name already runs (pid $(pid_of "$name"))"
  for p in $(ports "$name"); do
    port_busy "$p" && die "port $p, which $name needs, is in use"
  done
  local args
  case $name in
    n*)
      write_conf "$i"
      args=("$NATS_BIN" -c "$dir/n$i.conf")
      ;;
    ingest*)
      args=("$PACSFLOW_BIN" ingest --nats-url "$URLS" --replicas 3 --data "$dir/ingest$i"
        --analytics-key-file "$dir/analytics.key"
        --dicom-addr "127.0.0.1:$((11210 + OFF + i))" --http-addr "127.0.0.1:$((8180 + OFF + i))")
      ;;
    understand*)
      args=("$PACSFLOW_BIN" understand --nats-url "$URLS" --replicas 3 --model "$ROOT/model/reference"
        --http-addr "127.0.0.1:$((8190 + OFF + i))")
      ;;
  esac
  echo "== $(date -u +%FT%TZ) starting: ${args[*]}" >>"$dir/$name.log"
  setsid "${args[@]}" >>"$dir/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

# wait_line NAME REGEX SECONDS: wait until the process's log has a line matching REGEX
# since its last start; fail with the log's end if it exits or the time runs out.
wait_line() {
  local name=$1 re=$2 secs=$3 k since
  for ((k = 0; k < secs * 10; k++)); do
    # Not a pipe into grep -q: with pipefail, awk killed by SIGPIPE would read as no match.
    since=$(awk '/^== .* starting: /{since = ""; next} {since = since $0 "\n"} END {printf "%s", since}' "$dir/$name.log")
    if grep -qE "$re" <<<"$since"; then
      return 0
    fi
    if [ -z "$(pid_of "$name")" ]; then
      tail -n 30 "$dir/$name.log" >&2
      die "$name exited while starting; its log: $dir/$name.log"
    fi
    sleep 0.1
  done
  tail -n 30 "$dir/$name.log" >&2
  die "$name did not start within ${secs}s; its log: $dir/$name.log"
}

# jetstream_state: prints the meta leader and the leader of every stream and durable
# consumer, as each running node sees them; exits 1 unless every running node answers
# /healthz, names the same meta leader and knows a leader for every stream and durable
# consumer (/healthz alone passes before the streams have elected theirs after a restart,
# and a JetStream request to a stream without a leader waits for the client's timeout).
jetstream_state() {
  local nodes=() i
  for i in 1 2 3; do
    [ -n "$(pid_of "n$i")" ] && nodes+=("n$i:$((8300 + OFF + i))")
  done
  [ ${#nodes[@]} -gt 0 ] || {
    echo "no NATS node runs"
    return 1
  }
  "$ROOT/.venv/bin/python" - "${nodes[@]}" <<'EOF'
import json, sys, urllib.request, urllib.error

def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return 0, str(e).encode()

ok, metas, lines = True, set(), []
for node in sys.argv[1:]:
    name, port = node.split(":")
    code, body = get(port, "/healthz")
    if code != 200:
        ok = False
        lines.append(f"{name}: /healthz {code} {body.decode(errors='replace').strip()}")
        continue
    code, body = get(port, "/jsz?accounts=true&streams=true&consumers=true&config=true")
    if code != 200:
        ok = False
        lines.append(f"{name}: /jsz {code}")
        continue
    jsz = json.loads(body)
    meta = (jsz.get("meta_cluster") or {}).get("leader", "")
    metas.add(meta)
    leaders = []
    for acc in jsz.get("account_details") or []:
        for s in acc.get("stream_detail") or []:
            leader = (s.get("cluster") or {}).get("leader", "")
            leaders.append(f"{s['name']}={leader or 'NONE'}")
            ok = ok and bool(leader)
            for c in s.get("consumer_detail") or []:
                if (c.get("config") or {}).get("durable_name"):
                    cl = (c.get("cluster") or {}).get("leader", "")
                    leaders.append(f"{s['name']}>{c['name']}={cl or 'NONE'}")
                    ok = ok and bool(cl)
    ok = ok and bool(meta)
    lines.append(f"{name}: healthy, meta leader {meta or 'NONE'}; " + (", ".join(sorted(leaders)) or "no streams yet"))
if len(metas) > 1:
    ok = False
    lines.append(f"the nodes name different meta leaders: {sorted(metas)}")
try:
    print("\n".join(lines))
except BrokenPipeError:  # status piped into head
    pass
sys.exit(0 if ok else 1)
EOF
}

# wait_nats SECONDS: wait until jetstream_state passes
wait_nats() {
  local secs=$1 k out
  for ((k = 0; k < secs * 5; k++)); do
    if out=$(jetstream_state); then
      return 0
    fi
    for i in 1 2 3; do
      if [ -f "$dir/n$i.pid" ] && [ -z "$(pid_of "n$i")" ]; then
        tail -n 30 "$dir/n$i.log" >&2
        die "n$i exited; its log: $dir/n$i.log"
      fi
    done
    sleep 0.2
  done
  echo "$out" >&2
  die "the NATS cluster was not ready within ${secs}s (logs: $dir/n*.log)"
}

# start_one NAME: start a process and wait until it works
start_one() {
  launch "$1"
  case $1 in
    n*) wait_nats 120 ;;
    ingest*) wait_line "$1" '^storage: ' 120 ;;
    understand*) wait_line "$1" '^understand: results on ' 180 ;;
  esac
}

# stop NAMES...: SIGTERM, up to 20 s to exit (ingest lets active associations finish for
# 10 s), then SIGKILL
stop() {
  local name pid pids=() k
  for name in "$@"; do
    pid=$(pid_of "$name")
    if [ -n "$pid" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$name:$pid")
    fi
  done
  for ((k = 0; k < 200; k++)); do
    local alive=0 np
    for np in "${pids[@]}"; do
      [ -d "/proc/${np#*:}" ] && alive=1
    done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for np in "${pids[@]}"; do
    if [ -d "/proc/${np#*:}" ]; then
      echo "${np%%:*} did not stop 20 s after SIGTERM: SIGKILL" >&2
      kill -KILL "${np#*:}" 2>/dev/null || true
    fi
  done
  for name in "$@"; do
    rm -f "$dir/$name.pid"
  done
}

listens() {
  cat <<EOF
NATS (JetStream, R3):  $URLS
  monitoring:          http://127.0.0.1:$((8301 + OFF))  http://127.0.0.1:$((8302 + OFF))  http://127.0.0.1:$((8303 + OFF))
ingest1:               DICOM 127.0.0.1:$((11211 + OFF)) (AE PACSFLOW), HTTP http://127.0.0.1:$((8181 + OFF))
ingest2:               DICOM 127.0.0.1:$((11212 + OFF)) (AE PACSFLOW), HTTP http://127.0.0.1:$((8182 + OFF))
understand1:           HTTP http://127.0.0.1:$((8191 + OFF))
understand2:           HTTP http://127.0.0.1:$((8192 + OFF))
data, logs, pids:      $dir
EOF
}

case $cmd in
  up)
    for n in "${NAMES[@]}"; do
      [ -z "$(pid_of "$n")" ] || die "$n already runs (pid $(pid_of "$n")); scripts/cluster.sh down $dir first"
    done
    # shellcheck source=scripts/deps.sh
    . scripts/deps.sh
    need_go
    need_tensorflow
    echo "== building bin/pacsflow and bin/nats-server"
    go build -o bin/pacsflow ./cmd/pacsflow
    go build -o bin/nats-server github.com/nats-io/nats-server/v2
    # Whatever fails from here (a failed command, or die) stops what was started.
    started=0
    trap '[ $started = 1 ] || { echo "cluster.sh: up failed; stopping what started" >&2; stop "${NAMES[@]}"; }' EXIT
    echo "$OFF" >"$dir/port-offset"
    # The analytics pseudonymization key must be the same for every ingest process.
    if [ ! -f "$dir/analytics.key" ]; then
      (umask 077 && head -c 32 /dev/urandom >"$dir/analytics.key")
    fi
    echo "== starting NATS n1, n2, n3"
    for i in 1 2 3; do launch "n$i"; done
    wait_nats 120
    # One at a time: two processes creating the same stream or bucket at once on a fresh
    # cluster can both wait 30 s for an answer (seen with nats-server 2.15.2) and fail.
    for n in ingest1 ingest2 understand1 understand2; do
      echo "== starting $n"
      start_one "$n"
    done
    # The streams and buckets the services created have their leaders: until then ingest
    # would answer A700 ("no response from stream").
    wait_nats 120
    started=1
    echo
    listens
    echo
    echo "send:   storescu -aec PACSFLOW +sd +r 127.0.0.1 $((11211 + OFF)) DIR   (or $((11212 + OFF)))"
    echo "events: bin/pacsflow events tail --nats-url $URLS"
    echo "stop:   scripts/cluster.sh down $dir"
    ;;
  down)
    # Services first (they stop accepting, finish and drain), NATS last.
    stop understand1 understand2 ingest1 ingest2
    stop n1 n2 n3
    echo "stopped; data kept in $dir"
    ;;
  status)
    command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
    [ -x "$ROOT/.venv/bin/python" ] || die "no .venv: scripts/cluster.sh up first"
    rc=0
    for n in "${NAMES[@]}"; do
      pid=$(pid_of "$n")
      if [ -z "$pid" ]; then
        printf '%-12s stopped\n' "$n"
        rc=1
        continue
      fi
      health=""
      case $n in
        ingest*) health=$(curl -s -m 5 "http://127.0.0.1:$((8180 + OFF + $(index "$n")))/readyz" || echo "no answer") ;;
        understand*) health=$(curl -s -m 5 "http://127.0.0.1:$((8190 + OFF + $(index "$n")))/healthz" || echo "no answer") ;;
      esac
      printf '%-12s running (pid %s)%s\n' "$n" "$pid" "${health:+, ${health//$'\n'/ }}"
    done
    echo
    if ! jetstream_state; then rc=1; fi
    echo
    listens
    exit $rc
    ;;
  kill)
    [[ " ${NAMES[*]} " == *" $name "* ]] || usage
    pid=$(pid_of "$name")
    [ -n "$pid" ] || die "$name does not run"
    kill -KILL "$pid"
    rm -f "$dir/$name.pid"
    echo "killed $name (pid $pid) with SIGKILL"
    ;;
  start)
    [[ " ${NAMES[*]} " == *" $name "* ]] || usage
    if [ ! -x "$PACSFLOW_BIN" ] || [ ! -x "$NATS_BIN" ]; then
      die "no binaries: scripts/cluster.sh up first"
    fi
    start_one "$name"
    echo "started $name (pid $(pid_of "$name"))"
    ;;
esac
