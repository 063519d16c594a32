#!/usr/bin/env bash
# Runs the whole pacsflow pipeline on this machine (pacsflow up): builds the
# binary into bin/ (downloading Go modules if missing), then starts it with
# the arguments given, e.g. ./scripts/up.sh --data /srv/pacsflow.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
go build -o bin/pacsflow ./cmd/pacsflow
exec bin/pacsflow up "$@"
