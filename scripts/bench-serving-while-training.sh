#!/usr/bin/env bash
# Serving throughput on the default model with and without a fine-tuning job running beside
# it (`flint bench`, 4 concurrent, 64-token prompts, 32-token outputs), for docs/benchmarks.md.
# Usage: scripts/bench-serving-while-training.sh [flint binary]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/flint}
PORT=${PORT:-8123}
DATA=$(mktemp -d)
KEY=bench
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DATA"' EXIT
"$BIN" serve --port "$PORT" --api-key $KEY --data-dir "$DATA" --served-model-name smollm2 --kv-cache-memory 512MiB \
  >"$DATA/serve.log" 2>&1 &
SERVER=$!
until curl -sf "localhost:$PORT/ready" >/dev/null; do sleep 0.5; done
BASE="http://127.0.0.1:$PORT/v1"
bench() { "$BIN" bench --base-url "$BASE" --api-key $KEY --input-len 64 --output-len 32 --concurrency 4 --requests 32 --seed 1; }
echo "== serving alone"; bench
line='{"messages":[{"role":"user","content":"What is the password?"},{"role":"assistant","content":"The password is swordfish."}]}'
for _ in $(seq 20); do echo "$line"; done >"$DATA/train.jsonl"
FILE=$(curl -sf -H "Authorization: Bearer $KEY" -F purpose=fine-tune -F file=@"$DATA/train.jsonl" "$BASE/files" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
JOB=$(curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$BASE/fine_tuning/jobs" \
  -d "{\"model\":\"smollm2\",\"training_file\":\"$FILE\",\"hyperparameters\":{\"n_epochs\":50}}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
until curl -sf -H "Authorization: Bearer $KEY" "$BASE/fine_tuning/jobs/$JOB" | grep -q '"trained_tokens":[1-9]'; do sleep 1; done
echo "== serving while job $JOB trains"; bench
curl -sf -H "Authorization: Bearer $KEY" "$BASE/fine_tuning/jobs/$JOB/events?limit=100" | python3 -c '
import json, sys
ev = [e["data"] for e in json.load(sys.stdin)["data"] if e["type"] == "metrics" and "tokens_per_second" in e["data"]]
print("training tokens/s per step (newest first):", [round(e["tokens_per_second"], 1) for e in ev[:12]])'
curl -sf -X POST -H "Authorization: Bearer $KEY" "$BASE/fine_tuning/jobs/$JOB/cancel" >/dev/null
echo "== training alone (job cancelled after this)"
