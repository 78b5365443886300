#!/usr/bin/env bash
# Device proof for plugins/: builds the plugin library once per CUDA architecture (in parallel) and runs
# plugins/tests/gpu_check.py against each build; the first architecture is also timed.
#
#   plugins/tests/run_gpu_checks.sh ONLY ARCH [ARCH...]
#   e.g. plugins/tests/run_gpu_checks.sh attn 90 80-virtual     (80-virtual: PTX only, JIT-compiled by the driver)
#
# ONLY: gpu_check's --only (scan,conv,attn or a subset). Writes plugins_gpu_check_<only>_<arch>.json and
# .log per architecture under $OUT (else bench/results/). Environment: TensorRT_ROOT (default: the repo's
# .trt/), GPU_CHECK_ARGS (extra gpu_check arguments for every run). Exit status: non-zero if any run failed.
set -uo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 ONLY ARCH [ARCH...]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
only="$1"
shift
archs=("$@")
out="${OUT:-$repo/bench/results}"
mkdir -p "$out"
export TensorRT_ROOT="${TensorRT_ROOT:-$repo/.trt}"
export PYTHONUNBUFFERED=1
jobs=$(( $(nproc) / ${#archs[@]} ))
(( jobs < 1 )) && jobs=1
tag() { echo "${1//[^A-Za-z0-9]/_}"; }

# 1. Builds, one per architecture, side by side.
declare -A pid
for a in "${archs[@]}"; do
  t="$(tag "$a")"
  mkdir -p "$repo/build"
  CUDA_ARCHS="$a" JOBS=$jobs bash "$repo/plugins/build.sh" "$repo/build/plugins-gpu-$t" \
    >"$repo/build/build_$t.log" 2>&1 &
  pid[$a]=$!
done
status=0
declare -A built
for a in "${archs[@]}"; do
  if wait "${pid[$a]}"; then
    built[$a]=1
  else
    echo "BUILD FAILED for $a:"; tail -40 "$repo/build/build_$(tag "$a").log"; status=1
  fi
done

# 2. Checks (and, for the first architecture, timings) against each build.
summary=()
first=1
for a in "${archs[@]}"; do
  t="$(tag "$a")"
  [[ -n "${built[$a]:-}" ]] || { first=0; continue; }
  extra=()
  (( first )) || extra=(--no-timing)
  first=0
  lib="$repo/build/plugins-gpu-$t/libhymba_plugins.so"
  HYMBA_PLUGIN_LIB="$lib" HYMBA_PLUGIN_HARNESS="${lib%/*}/libhymba_plugin_harness.so" \
    python3 "$here/gpu_check.py" --archs "$a" --only "$only" --json "$out/plugins_gpu_check_$(tag "$only")_$t.json" \
      "${extra[@]}" ${GPU_CHECK_ARGS:-} 2>&1 | tee "$out/plugins_gpu_check_$(tag "$only")_$t.log"
  rc=${PIPESTATUS[0]}
  (( rc == 0 )) || status=1
  summary+=("$a: $(grep -E '^(ALL PASSED|[0-9]+ FAILED)' "$out/plugins_gpu_check_$(tag "$only")_$t.log" | tail -1) (exit $rc)")
done
echo "== summary =="
printf '%s\n' "${summary[@]}"
exit $status
