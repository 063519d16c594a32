#!/usr/bin/env bash
# Runs the whole pacsflow pipeline on this machine (pacsflow up): builds bin/pacsflow with
# ./scripts/build.sh (which installs Go modules and tensorflow-cpu if missing), then starts it
# with the arguments given, e.g. ./scripts/up.sh --data /srv/pacsflow.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1} # hide TensorFlow's start-up notes
exec bin/pacsflow up "$@"
