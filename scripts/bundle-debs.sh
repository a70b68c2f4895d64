#!/usr/bin/env bash
# For a machine with no network and none of our Debian packages (a GPU box with its own PyTorch,
# CUDA, CMake and ninja): download the C++ libraries llmtune builds with, as .deb files, into
# $LLMTUNE_DEPS_DIR/debs (default .deps/debs, ignored by git). Copy .deps along with the source
# tree; there, scripts/build.sh (or this script with --unpack) unpacks them with dpkg -x into
# $LLMTUNE_DEPS_DIR/root without installing anything, and CMake finds them there.
#
#   scripts/bundle-debs.sh            download (here, with apt)
#   scripts/bundle-debs.sh --unpack   unpack (there)
# On the GPU box:  LLMTUNE_PYTHON=$(command -v python3) scripts/build.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/common.sh"

# The -dev packages and the runtime libraries they need, leaving out what every Linux has
# (libc6, libstdc++6, libgcc-s1).
packages=(
  libsentencepiece-dev libsentencepiece0
  nlohmann-json3-dev libcli11-dev
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9
  libyaml-cpp-dev libyaml-cpp0.7
  libgtest-dev libgmock-dev googletest
  libpcre2-dev libpcre2-8-0
  libutf8proc-dev libutf8proc2
  libcpp-httplib-dev libcpp-httplib0.11 libssl-dev libssl3 zlib1g-dev libbrotli-dev libbrotli1
  libjemalloc-dev libjemalloc2
)

debs="$LLMTUNE_DEPS_DIR/debs"
root="$LLMTUNE_DEPS_DIR/root"

if [[ "${1:-}" == "--unpack" ]]; then
  compgen -G "$debs/*.deb" >/dev/null || die "no .deb files in $debs: run scripts/bundle-debs.sh where apt works first"
  rm -rf "$root.tmp"
  mkdir -p "$root.tmp"
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$root.tmp"; done
  rm -rf "$root"
  mv "$root.tmp" "$root"
  log "unpacked $(ls "$debs"/*.deb | wc -l) packages into $root"
  exit 0
fi

command -v apt-get >/dev/null || die "apt-get is needed to download the bundle"
mkdir -p "$debs"
if ! (cd "$debs" && apt-get download "${packages[@]}" >/dev/null 2>&1); then
  apt-get update -qq
  (cd "$debs" && apt-get download "${packages[@]}" >/dev/null)
fi
log "downloaded $(ls "$debs"/*.deb | wc -l) packages ($(du -sh "$debs" | cut -f1)) into $debs"
log "copy $LLMTUNE_DEPS_DIR with the source tree; there run: LLMTUNE_PYTHON=\$(command -v python3) scripts/build.sh"
