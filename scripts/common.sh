# Shared by the scripts in this folder: where things live, and small helpers.
LLMTUNE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${LLMTUNE_VENV:=${XDG_CACHE_HOME:-$HOME/.cache}/llmtune/venv}"
: "${LLMTUNE_DEPS_DIR:=$LLMTUNE_ROOT/.deps}"
: "${LLMTUNE_BUILD_DIR:=$LLMTUNE_ROOT/build}"
export LLMTUNE_VENV LLMTUNE_DEPS_DIR LLMTUNE_BUILD_DIR

log() { echo "[llmtune] $*" >&2; }
die() { echo "[llmtune] error: $*" >&2; exit 1; }

# version_ge A B: true when version A >= version B
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]; }

# The Python whose torch we build against and whose reference packages the tests use.
llmtune_python() {
  if [[ -n "${LLMTUNE_PYTHON:-}" ]]; then echo "$LLMTUNE_PYTHON"; else echo "$LLMTUNE_VENV/bin/python"; fi
}
