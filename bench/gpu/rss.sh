set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
nvidia-smi -L
python3 --version
rss() { awk '/^VmRSS|^RssAnon|^RssFile/{printf "%s %s kB  ", $1, $2} END{print ""}' /proc/$1/status; }
top_maps() { awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6} /^Rss:/{r[name]+=$2} END{for (n in r) if (r[n]>1024) printf "%8d kB %s\n", r[n], n}' /proc/$1/smaps | sort -rn | head -14; }
run() {  # name, config
  cat > /tmp/$1.yaml <<Y
listen: 127.0.0.1:19$2
$3
Y
  python3 -m exporter --config /tmp/$1.yaml --log-level warning > $OUT/$1.log 2>&1 &
  p=$!; sleep 25
  curl -s http://127.0.0.1:19$2/metrics > $OUT/$1.prom
  echo "== $1"; rss $p; top_maps $p; kill $p; wait $p 2>/dev/null
}
run none 787 "targets: []"
run vllm 788 "targets:
  - {name: v, engine: vllm, url: 'http://127.0.0.1:1', interval: 1s}"
run nvml 789 "targets:
  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms}"
echo "== nvml library alone (python3 -c)"
python3 - <<'P'
import os, resource
def rss(): return int([l for l in open(f"/proc/{os.getpid()}/status") if l.startswith("VmRSS")][0].split()[1])
a = rss(); import pynvml; b = rss(); pynvml.nvmlInit(); c = rss()
h = pynvml.nvmlDeviceGetHandleByIndex(0); pynvml.nvmlDeviceGetMemoryInfo(h); pynvml.nvmlDeviceGetUtilizationRates(h); d = rss()
print(f"python {a} kB; +import pynvml {b-a} kB; +nvmlInit {c-b} kB; +first queries {d-c} kB")
pynvml.nvmlShutdown(); e = rss(); print(f"after nvmlShutdown {e} kB")
P
grep -c llm_gpu_ $OUT/nvml.prom
