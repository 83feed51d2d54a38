set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
rss() { awk '/^VmRSS|^RssAnon|^RssFile/{printf "%s %s kB  ", $1, $2} END{print ""}' /proc/$1/status; }
run() {
  cat > /tmp/$1.yaml <<Y
listen: 127.0.0.1:19$2
$3
Y
  python3 -m exporter --config /tmp/$1.yaml --log-level warning > $OUT/$1.log 2>&1 &
  p=$!; sleep 20
  curl -s http://127.0.0.1:19$2/metrics > $OUT/$1.prom
  echo "== $1"; rss $p; kill $p; wait $p 2>/dev/null
}
run none 787 "targets: []"
run nvml 789 "targets:
  - {name: gpus, engine: nvml, interval: 1s, timeout: 900ms}"
grep -c "^llm_gpu_" $OUT/nvml.prom; grep "^llm_up\|host_cpu" $OUT/nvml.prom
