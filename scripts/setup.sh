#!/usr/bin/env bash
# Installs everything llmtune needs to build and test, from nothing, idempotently:
# Debian packages (compilers, build tools, C++ libraries) and a Python virtual environment
# holding the PyPI torch wheel (whose libtorch we link) plus the reference implementations.
#
# Environment:
#   LLMTUNE_VENV      where the venv lives (default: ~/.cache/llmtune/venv, outside the tree,
#                     so every clone shares it)
#   LLMTUNE_PYTHON    use this existing Python (which already has torch) instead of a venv;
#                     nothing is installed into it and no Debian packages are required
#                     when LLMTUNE_DEPS_DIR holds an unpacked bundle (see scripts/bundle-debs.sh)
#   LLMTUNE_SKIP_APT=1   do not touch Debian packages
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/common.sh
source "$here/common.sh"

apt_packages=(
  build-essential cmake ninja-build ccache pkg-config git python3-venv python3-dev
  libsentencepiece-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libyaml-cpp-dev libgtest-dev libpcre2-dev libutf8proc-dev
  libcpp-httplib-dev  # llmtune serve's HTTP server
  libjemalloc-dev  # the llmtune binary's allocator (cmake/LlmtuneDeps.cmake)
  clang libclang-rt-dev  # the sanitizer build and libFuzzer (scripts/test-asan.sh, scripts/fuzz.sh)
)
# The reference implementations the tests compare with, and what the build links.
py_packages=(torch transformers peft safetensors sentencepiece tokenizers gguf numpy pytest protobuf "bitsandbytes>=0.49" trl compressed-tensors tensorboard openai prometheus-client)
# Installed without their dependencies: the tests load single files of them (torchtune's
# modules/loss/kd_losses.py), and torchtune's own dependencies (torchao) do not fit our torch.
py_packages_no_deps=(torchtune)

start=$(date +%s)

install_apt() {
  [[ "${LLMTUNE_SKIP_APT:-0}" == 1 ]] && return 0
  local missing=()
  for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  if [[ -n "${LLMTUNE_PYTHON:-}" && -d "$LLMTUNE_DEPS_DIR" ]]; then
    log "using the unpacked Debian bundle in $LLMTUNE_DEPS_DIR (missing here: ${missing[*]})"
    return 0
  fi
  command -v apt-get >/dev/null || die "Debian packages missing (${missing[*]}) and no apt-get; install them or use scripts/bundle-debs.sh"
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo=sudo
  log "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_venv() {
  if [[ -n "${LLMTUNE_PYTHON:-}" ]]; then
    "$LLMTUNE_PYTHON" -c 'import torch' 2>/dev/null \
      || die "LLMTUNE_PYTHON=$LLMTUNE_PYTHON has no torch; point it at a Python that has torch"
    log "using existing Python $LLMTUNE_PYTHON (torch $("$LLMTUNE_PYTHON" -c 'import torch; print(torch.__version__)'))"
    return 0
  fi
  local stamp="$LLMTUNE_VENV/.llmtune-packages"
  local want
  want=$(printf '%s\n' "${py_packages[@]}" "no-deps:" "${py_packages_no_deps[@]}")
  if [[ -x "$LLMTUNE_VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "creating Python venv in $LLMTUNE_VENV"
  mkdir -p "$(dirname "$LLMTUNE_VENV")"
  [[ -x "$LLMTUNE_VENV/bin/python" ]] || python3 -m venv "$LLMTUNE_VENV"
  "$LLMTUNE_VENV/bin/python" -m pip install -q --upgrade pip
  log "installing Python packages: ${py_packages[*]} ${py_packages_no_deps[*]} (the first time this downloads several GB)"
  "$LLMTUNE_VENV/bin/python" -m pip install -q "${py_packages[@]}"
  "$LLMTUNE_VENV/bin/python" -m pip install -q --no-deps "${py_packages_no_deps[@]}"
  echo "$want" >"$stamp"
}

# Torch's CMake config needs a newer CMake than some distributions ship: take one from PyPI.
install_cmake() {
  local need="3.27"
  local have
  have=$(cmake --version 2>/dev/null | head -1 | awk '{print $3}')
  if [[ -n "$have" ]] && version_ge "$have" "$need"; then return 0; fi
  [[ -n "${LLMTUNE_PYTHON:-}" ]] && return 0  # the GPU box brings its own
  if [[ ! -x "$LLMTUNE_VENV/bin/cmake" ]]; then
    log "CMake ${have:-absent} is older than $need: installing CMake from PyPI into the venv"
    "$LLMTUNE_VENV/bin/python" -m pip install -q cmake ninja
  fi
}

install_apt
install_venv
install_cmake
log "setup done in $(( $(date +%s) - start ))s (python: $(llmtune_python))"
