#!/usr/bin/env bash
# The kill -9 loop of an ingest process on the 3-node cluster, as a benchmark:
#
#   bench/cluster-kill.sh [N]     N cycles (default 100); about 0.5 s a cycle on 2 cores
#
# Runs TestCluster/IngestKillLoop of cmd/pacsflow/cluster_test.go (the suite runs 4 cycles) with
# -cluster-kill-cycles N: three nats-server processes clustered on loopback with R3 streams,
# buckets and object store; per cycle a `pacsflow ingest` is started on the same data folder,
# DCMTK's storescu sends a new study of 20 instances of 16 KiB (and the instances of the previous
# cycle that got no Success, as a modality would send them again), and ingest is killed with
# SIGKILL after a random number of responses plus up to 10 ms. Then every instance storescu saw
# answered Success must have its pacs.instance.stored event, whose object exists and holds the
# data set sent; every event must name such an object. Prints each cycle, then the totals: sent,
# answered Success, with events, lost (must be 0), and how long ingest took to be ready again.
# SEED=N repeats the kill points of an earlier run. Needs Go, DCMTK and the .venv of
# scripts/deps.sh; the output is kept in bench/out/cluster-kill.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "usage: bench/cluster-kill.sh [N], N a positive integer" >&2; exit 2; }
. scripts/deps.sh
need_go
need_dcmtk
need_tensorflow
mkdir -p bench/out
args=(-cluster-kill-cycles="$N")
[ -z "${SEED:-}" ] || args+=(-cluster-seed="$SEED")
go test -count=1 -run 'TestCluster/IngestKillLoop' -timeout 60m -v ./cmd/pacsflow/ -args "${args[@]}" 2>&1 |
  grep -E '^(=== RUN|--- |PASS|FAIL|ok)|cluster_test.go|panic' | tee bench/out/cluster-kill.txt
grep -q '^ok' bench/out/cluster-kill.txt
