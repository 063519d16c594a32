# Sourced by the scripts: functions that install what is missing.
PY_PACKAGES="pynetdicom==3.0.4 pydicom==3.0.2"

need_go() {
  command -v go >/dev/null || { echo "go is missing: install Go 1.26 (https://go.dev/dl)" >&2; exit 1; }
  go mod download
}

need_dcmtk() {
  if ! command -v storescp >/dev/null || ! command -v dcmodify >/dev/null || ! command -v dciodvfy >/dev/null; then
    echo "== installing dcmtk, dicom3tools"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dcmtk dicom3tools >/dev/null
  fi
}

# need_chromium installs Debian's chromium (the headless browser the notify page's tests drive)
# when it is not on PATH.
need_chromium() {
  if ! command -v chromium >/dev/null; then
    echo "== installing chromium"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  fi
}

need_venv() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pynetdicom, pydicom' 2>/dev/null; then
    echo "== creating .venv with $PY_PACKAGES"
    python3 -m venv .venv
    .venv/bin/pip install -q $PY_PACKAGES
  fi
}

TF_PACKAGE="tensorflow-cpu==2.21.0"

# need_tensorflow installs tensorflow-cpu into .venv when missing and exports what builds
# pkg/model against TensorFlow's C library: the wheel's libtensorflow_cc.so.2 exports the C
# API (TF_*) and libtensorflow_framework.so.2 sits beside it. .build/tensorflow/libtensorflow.so
# is a linker script naming both, so -ltensorflow (what the Go binding asks for) links them, and
# the rpath lets binaries run without LD_LIBRARY_PATH. TF_DIR points the build at another
# TensorFlow (a GPU-enabled wheel's tensorflow/ directory, or libtensorflow with include/).
need_tensorflow() {
  need_venv
  if [ -z "${TF_DIR:-}" ] && ! .venv/bin/python -c 'import importlib.util as u; exit(u.find_spec("tensorflow") is None)'; then
    echo "== installing $TF_PACKAGE into .venv (about 270 MB)"
    .venv/bin/pip install -q "$TF_PACKAGE"
  fi
  local tfdir="${TF_DIR:-$(.venv/bin/python -c 'import importlib.util as u; print(u.find_spec("tensorflow").submodule_search_locations[0])')}"
  local cc="$tfdir/libtensorflow_cc.so.2" fw="$tfdir/libtensorflow_framework.so.2"
  [ -f "$cc" ] || cc="$tfdir/lib/libtensorflow.so.2"
  [ -f "$fw" ] || fw="$tfdir/lib/libtensorflow_framework.so.2"
  local inc="$tfdir/include"
  [ -f "$inc/tensorflow/c/c_api.h" ] || { echo "no TensorFlow C headers under $inc" >&2; exit 1; }
  mkdir -p .build/tensorflow
  printf 'INPUT ( %s %s )\n' "$cc" "$fw" > .build/tensorflow/libtensorflow.so
  export CGO_CFLAGS="-I$inc"
  export CGO_LDFLAGS="-L$PWD/.build/tensorflow -Wl,-rpath,$(dirname "$cc")"
  export GOFLAGS="-tags=tensorflow"
  export PACSFLOW_PYTHON="$PWD/.venv/bin/python"
}

# XLA's CPU PJRT plugin, as the lammps-jax-pjrt-cpu wheel ships it (built from the XLA of
# jaxlib 0.11.2; installed without its jax requirement, which the plugin does not load).
PJRT_CPU_PACKAGE="lammps-jax-pjrt-cpu==0.11.2"

# need_pjrt_cpu installs XLA's CPU PJRT plugin into .venv when missing and exports its path as
# PACSFLOW_PJRT_PLUGIN: the tests run the model's StableHLO through it (the pjrt runtime), as
# NVIDIA's CUDA plugin runs it on a GPU. Nothing at run time needs it.
need_pjrt_cpu() {
  need_venv
  local plugin=".venv/lib/python3*/site-packages/lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so"
  # shellcheck disable=SC2086 # the glob picks the venv's Python version
  if ! ls $plugin >/dev/null 2>&1; then
    echo "== installing $PJRT_CPU_PACKAGE (XLA's CPU PJRT plugin) into .venv (about 60 MB)"
    .venv/bin/pip install -q --no-deps "$PJRT_CPU_PACKAGE"
  fi
  # shellcheck disable=SC2086
  PACSFLOW_PJRT_PLUGIN="$(cd "$(dirname $plugin)" && pwd)/pjrt_c_api_cpu_plugin.so"
  export PACSFLOW_PJRT_PLUGIN
}

HELM_VERSION="v3.22.0"

# need_helm builds helm (what deploy/deploy_test.go lints and renders the Helm chart with) from
# its Go module into .build/bin/helm when missing or of another version (no Docker or
# Kubernetes needed; the first build downloads the modules and takes about a minute), and puts
# .build/bin first on PATH.
need_helm() {
  if [ ! -x .build/bin/helm ] || ! go version -m .build/bin/helm 2>/dev/null | grep -Eq "^[[:space:]]+mod[[:space:]]+helm.sh/helm/v3[[:space:]]+$HELM_VERSION[[:space:]]"; then
    echo "== building helm $HELM_VERSION into .build/bin"
    mkdir -p .build/bin
    # Without need_tensorflow's cgo flags and build tag: helm is a plain Go program.
    env -u GOFLAGS -u CGO_CFLAGS -u CGO_LDFLAGS GOBIN="$PWD/.build/bin" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  fi
  export PATH="$PWD/.build/bin:$PATH"
}
