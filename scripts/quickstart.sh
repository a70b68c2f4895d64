#!/usr/bin/env bash
# The first command on a fresh machine: installs what is missing, builds, and shows what llmtune
# sees on this machine. (Once `finetune` lands, this runs the bundled tiny-model demo.)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"
bash "$here/setup.sh"
bash "$here/build.sh"
"$LLMTUNE_BUILD_DIR/llmtune" env
