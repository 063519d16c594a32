# Sourced by the scripts: functions that install what is missing.
PY_PACKAGES="pynetdicom==3.0.4 pydicom==3.0.2"

need_go() {
  command -v go >/dev/null || { echo "go is missing: install Go 1.26 (https://go.dev/dl)" >&2; exit 1; }
  go mod download
}

need_dcmtk() {
  if ! command -v storescp >/dev/null || ! command -v dcmodify >/dev/null; then
    echo "== installing dcmtk"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dcmtk >/dev/null
  fi
}

need_venv() {
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import pynetdicom, pydicom' 2>/dev/null; then
    echo "== creating .venv with $PY_PACKAGES"
    python3 -m venv .venv
    .venv/bin/pip install -q $PY_PACKAGES
  fi
}
