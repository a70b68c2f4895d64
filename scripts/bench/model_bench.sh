#!/usr/bin/env bash
# Builds if needed, then runs the eval/infer benchmark against transformers (see model_bench.py).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$here/common.sh"
bash "$here/build.sh" >/dev/null
exec "$(llmtune_python)" "$here/bench/model_bench.py" "$@"
