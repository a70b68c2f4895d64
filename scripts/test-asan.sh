#!/usr/bin/env bash
# Builds the unit tests with AddressSanitizer + UBSan into build-asan/ and runs the suites that
# parse untrusted files (safetensors, model dirs, configs, ...). Arguments go to the build
# (e.g. -j 1). Environment:
#   LLMTUNE_ASAN_BUILD_DIR  build directory (default: build-asan/)
#   LLMTUNE_ASAN_FILTER     replaces the gtest filter below
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

# The parser suites, in gtest filter syntax (':'-separated). Add a new parser's suites here.
ASAN_SUITES="Safetensors*:Gguf*:HfDir*:Config*:Tokenizer*:ChatTemplate*:CausalLMConfig*:DatasetTest*:Batcher*"

build_dir=${LLMTUNE_ASAN_BUILD_DIR:-$LLMTUNE_ROOT/build-asan}
# CUDA kernels are not parsers and nvcc does not take the sanitizer flags: leave them out.
LLMTUNE_BUILD_DIR="$build_dir" LLMTUNE_CMAKE_ARGS="-DLLMTUNE_ASAN=ON -DLLMTUNE_CUDA=OFF ${LLMTUNE_CMAKE_ARGS:-}" \
  bash "$here/build.sh" --target llmtune_tests "$@"

# libtorch is not instrumented: its one-time allocations would read as leaks, and the CUDA
# runtime maps memory in ASan's shadow gap.
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:halt_on_error=1:abort_on_error=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
start=$(date +%s)
status=0
"$build_dir/llmtune_tests" --gtest_filter="${LLMTUNE_ASAN_FILTER:-$ASAN_SUITES}" || status=$?
log "ASan tests (${LLMTUNE_ASAN_FILTER:-$ASAN_SUITES}) finished in $(( $(date +%s) - start ))s"
exit $status
