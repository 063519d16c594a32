#!/usr/bin/env bash
# Runs every pacsflow test. Installs what the tests need when it is missing:
# Go modules (go mod download), DCMTK and dicom3tools (apt-get install dcmtk
# dicom3tools) for the interop and object tests, Debian's chromium for the worklist page's
# browser test, and a Python venv (.venv) with pynetdicom, pydicom and tensorflow-cpu (the
# model tests, and the C library pkg/model links) and XLA's CPU PJRT plugin (the pjrt runtime's
# tests). Test artifacts (the worklist page's
# screenshots) are kept under test-artifacts/.
# Set FUZZTIME (default 30s) to change how long each fuzz target runs; FUZZTIME=0 skips fuzzing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/deps.sh
. scripts/deps.sh
need_go
need_dcmtk
need_chromium
need_helm
need_venv
need_tensorflow
need_pjrt_cpu
echo "== go vet, staticcheck"
go vet ./...
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== go test"
rm -rf test-artifacts && mkdir -p test-artifacts
go test -count=1 -timeout 20m -artifacts -outputdir "$PWD/test-artifacts" ./...
echo "== go test -race ./pkg/model (concurrent use of the TensorFlow runtime)"
go test -count=1 -race -run "TestConcurrentUse|TestReferenceMatchesPython" ./pkg/model
FUZZTIME=${FUZZTIME:-30s}
if [ "$FUZZTIME" != "0" ]; then
  while read -r pkg target; do
    echo "== fuzz $pkg $target ($FUZZTIME)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg"
  done < <(grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
      for t in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do echo "./$(dirname "${f#./}") $t"; done
    done | sort)
fi
echo "== all tests passed"
