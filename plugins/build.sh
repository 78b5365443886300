#!/usr/bin/env bash
# Builds libhymba_plugins.so (and the test harness) with CMake + Ninja (or Make).
#
#   plugins/build.sh [BUILD_DIR] [extra cmake -D options...]
#
# Environment: TensorRT_ROOT or TENSORRT_DIR (a TensorRT folder holding include/; else CMakeLists.txt looks
# in the usual system folders), CUDA_ARCHS (default "80;86;89;90"; CI: "80"), HYMBA_WERROR (ON in CI), JOBS.
# Prints the library path last.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
build="${1:-$repo/build/plugins}"
shift || true
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
if [[ -f "$build/CMakeCache.txt" ]]; then gen=(); fi
cmake -S "$here" -B "$build" "${gen[@]}" \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-80;86;89;90}" \
  -DHYMBA_WERROR="${HYMBA_WERROR:-OFF}" "$@" >&2
cmake --build "$build" -j "${JOBS:-$(nproc)}" >&2
echo "$build/libhymba_plugins.so"
