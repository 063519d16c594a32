#!/usr/bin/env bash
# The GPU check of the pjrt runtime, on a machine with an NVIDIA GPU, its CUDA PJRT plugin
# (the jax-cuda13-pjrt or jax-cuda12-pjrt wheel) and jax; it builds nothing there:
#
#   bench/gpu/prepare.sh                      # here, first
#   bench/gpu/run.sh                          # there, with bench/out/gpu carried (~2 minutes)
#
# The plugin is PJRT_PLUGIN, else the one the machine's python3 (PYTHON) finds
# (jax_plugins.xla_cuda13, then xla_cuda12). bench/gpu (prepared) opens the reference model on
# the pjrt runtime (the load time is the compile time of its modules), compares every signature
# with Python TensorFlow's outputs computed on CPU at preparation (floats within 1e-3, tokens
# identical), then times understand at batch 1, 8 and 32; then JAX runs the same modules on the
# same GPU (bench/gpu/jax_stablehlo.py), and the summary gives pacsflow / JAX at each batch size.
# Results go to $OUT when set (the device tool brings them back), else bench/out/gpu.
set -euo pipefail
cd "$(dirname "$0")/../.."
IN=bench/out/gpu
RES=${OUT:-$IN}
BATCHES=${BATCHES:-1,8,32}
SECONDS_EACH=${SECONDS_EACH:-5}
PYTHON=${PYTHON:-python3}
[ -x "$IN/gpu" ] || { echo "run.sh: no $IN/gpu: run bench/gpu/prepare.sh first and carry bench/out/gpu" >&2; exit 2; }
plugin=${PJRT_PLUGIN:-}
if [ -z "$plugin" ]; then
  for mod in xla_cuda13 xla_cuda12; do
    d=$("$PYTHON" -c "import jax_plugins.$mod as p, os; print(os.path.dirname(p.__file__))" 2>/dev/null) || continue
    if [ -f "$d/xla_cuda_plugin.so" ]; then plugin="$d/xla_cuda_plugin.so"; break; fi
  done
fi
[ -n "$plugin" ] || { echo "run.sh: no CUDA PJRT plugin (pip install jax-cuda13-pjrt), or set PJRT_PLUGIN" >&2; exit 2; }
mkdir -p "$RES"
{
  echo "== $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "plugin: $plugin"
} | tee "$RES/gpu.txt"
set +e
"$IN/gpu" --runtime pjrt --pjrt-plugin "$plugin" --model "$IN/model" --reference "$IN/reference.json" \
  --batches "$BATCHES" --seconds "${SECONDS_EACH}s" >"$RES/pacsflow.log" 2>&1
status=$?
"$PYTHON" bench/gpu/jax_stablehlo.py --model "$IN/model" --batches "$BATCHES" --seconds "$SECONDS_EACH" >"$RES/jax.log" 2>&1
jax_status=$?
set -e
grep -v '^I0000\|^W[0-9]' "$RES/pacsflow.log" | tee -a "$RES/gpu.txt"
grep -v '^I0000\|^W[0-9]' "$RES/jax.log" | tee -a "$RES/gpu.txt"
[ "$jax_status" = 0 ] || echo "run.sh: JAX could not run the modules (exit $jax_status)" | tee -a "$RES/gpu.txt"
echo "== pacsflow (pjrt) / JAX, images/s" | tee -a "$RES/gpu.txt"
awk '/^RESULT test=understand/ {
  for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  rate[f["runtime"] "," f["batch"]] = f["images_per_s"]; batches[f["batch"]] = 1
} END {
  for (b in batches) if (("jax," b) in rate && ("pjrt," b) in rate)
    printf "batch %s: pacsflow %.1f, JAX %.1f images/s: %.2fx\n", b, rate["pjrt," b], rate["jax," b], rate["pjrt," b] / rate["jax," b]
}' "$RES/gpu.txt" | sort -n -k2 | tee -a "$RES/gpu.txt"
exit "$status"
