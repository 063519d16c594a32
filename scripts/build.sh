#!/usr/bin/env bash
# Builds bin/pacsflow with the TensorFlow model runtime, installing what is missing (Go
# modules; tensorflow-cpu in .venv, whose C library the binary links). TF_DIR=... builds
# against another TensorFlow, e.g. a GPU-enabled one (see docs/model.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
need_tensorflow
go build -o bin/pacsflow ./cmd/pacsflow
