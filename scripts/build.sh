#!/usr/bin/env bash
# Configures (once) and builds llmtune into build/. Runs setup first when the venv is missing.
#   LLMTUNE_BUILD_DIR   build directory (default: build/)
#   LLMTUNE_CMAKE_ARGS  extra CMake arguments, e.g. "-DLLMTUNE_CUDA=OFF"
#   LLMTUNE_PYTHON      build against this Python's torch instead of the venv (see setup.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

py=$(llmtune_python)
[[ -x "$py" ]] || bash "$here/setup.sh"
# A bundle of Debian packages (scripts/bundle-debs.sh) is unpacked before configuring.
if [[ -d "$LLMTUNE_DEPS_DIR/debs" && ! -d "$LLMTUNE_DEPS_DIR/root" ]]; then
  bash "$here/bundle-debs.sh" --unpack
fi

cmake_bin=cmake
[[ -x "$LLMTUNE_VENV/bin/cmake" && -z "${LLMTUNE_PYTHON:-}" ]] && cmake_bin="$LLMTUNE_VENV/bin/cmake"
ninja_args=()
[[ -x "$LLMTUNE_VENV/bin/ninja" && -z "${LLMTUNE_PYTHON:-}" ]] && ninja_args=(-DCMAKE_MAKE_PROGRAM="$LLMTUNE_VENV/bin/ninja")
[[ -d /usr/local/cuda/bin && ":$PATH:" != *":/usr/local/cuda/bin:"* ]] && export PATH="$PATH:/usr/local/cuda/bin"

if [[ ! -f "$LLMTUNE_BUILD_DIR/build.ninja" ]]; then
  # shellcheck disable=SC2086
  "$cmake_bin" -S "$LLMTUNE_ROOT" -B "$LLMTUNE_BUILD_DIR" -G Ninja "${ninja_args[@]}" \
    -DLLMTUNE_PYTHON="$py" -DLLMTUNE_DEPS_DIR="$LLMTUNE_DEPS_DIR" ${LLMTUNE_CMAKE_ARGS:-}
fi
"$cmake_bin" --build "$LLMTUNE_BUILD_DIR" "$@"
