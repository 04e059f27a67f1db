#!/usr/bin/env bash
# Issue 9's performance targets, measured in one run on the device machine (CUDA, PyTorch,
# no Rust). Build first, here, with scripts/gpu-build.sh (the cuda `flint` binary, the kernel
# parity tests and the kernel bench into .device/), then run this there with .device carried:
#
#   OUT=$OUT scripts/gpu-perf.sh            # results in $OUT (default ./gpu-out)
#
# Everything runs on dummy weights of the real shapes (benches/configs), bf16, with prompts of
# exactly 512 random token ids and fixed output lengths (ignore_eos). What it writes:
#   bandwidth.json            device copy bandwidth (the decode roofline), read + write
#   kernels.md                criterion kernel benches with their roofline ratios
#   8b-decode-1.*, 8b-ttft.*, 8b-saturated.*, 1b-32.*, 1b-lora-base.*, 1b-lora-16.*
#                             `flint bench` tables + JSON (with the server's step profile)
#   summary.md                each target, the measured figure and the ratio
# Set STEPS="bandwidth kernels 8b 1b lora" to a subset to run less.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
FLINT=${FLINT_BIN:-.device/flint}
PORT=${PORT:-8766}
STEPS=${STEPS:-"bandwidth kernels 8b 1b lora"}
VOCAB=128256
status=0
pid=
step() { echo "== $*" | tee -a "$OUT/log.txt"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }

serve() { # name, then flint serve arguments
  local name=$1; shift
  "$FLINT" serve --port "$PORT" --dtype bf16 --load-format dummy "$@" > "$OUT/serve-$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 900); do
    curl -sf "localhost:$PORT/ready" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  echo "server $name did not come up; see serve-$name.log" | tee -a "$OUT/log.txt"
  tail -20 "$OUT/serve-$name.log"
  status=1
  return 1
}
stop() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid"; pid=; }
trap stop EXIT
bench() { # label, then flint bench arguments
  local label=$1; shift
  "$FLINT" bench --base-url "http://127.0.0.1:$PORT/v1" --random-ids "$VOCAB" --input-len 512 \
    --json "$OUT/$label.json" "$@" 2>&1 | tee "$OUT/$label.txt" || status=1
}

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv | tee "$OUT/device.csv"

if want bandwidth; then
  step "device copy bandwidth (the decode roofline)"
  python3 - "$OUT/bandwidth.json" <<'PY'
import json, sys, torch
x = torch.empty(4 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
n = 20; s.record()
for _ in range(n): y.copy_(x)
e.record(); torch.cuda.synchronize()
gbps = 2 * x.numel() * n / (s.elapsed_time(e) / 1e3) / 1e9
print(f"copy bandwidth: {gbps:.0f} GB/s (read + write)")
json.dump({"copy_gbps": gbps}, open(sys.argv[1], "w"))
PY
fi

if want kernels && [ -x .device/benches/kernels ]; then
  step "kernel benches (criterion, bf16)"
  .device/benches/kernels --bench --warm-up-time 1 --measurement-time 3 > "$OUT/kernels.txt" 2>&1 || status=1
  python3 scripts/bench_table.py --criterion-dir target/criterion | tee "$OUT/kernels.md" || status=1
fi

if want 8b && serve 8b --model benches/configs/llama-3.1-8b --max-model-len 4096 --max-num-seqs 512; then
  step "8B: batch-1 decode (512-token prompt, 256 tokens)"
  bench 8b-decode-1 --concurrency 1 --requests 3 --output-len 256
  step "8B: TTFT of one 512-token prompt"
  bench 8b-ttft --concurrency 1 --requests 10 --output-len 1
  step "8B: saturated (256 concurrent, 512 requests, 256 tokens)"
  bench 8b-saturated --concurrency 256 --requests 512 --output-len 256
  stop
fi

if want 1b && serve 1b --model benches/configs/llama-3.2-1b --max-model-len 4096; then
  step "1B: 32 concurrent (128 requests, 256 tokens)"
  bench 1b-32 --concurrency 32 --requests 128 --output-len 256
  stop
fi

if want lora; then
  step "1B: 16 distinct LoRA adapters (r16, all seven projections) spread over 32 concurrent"
  python3 scripts/make_dummy_adapters.py --config benches/configs/llama-3.2-1b --out /tmp/flint-adapters \
    --count 16 --rank 16 || status=1
  loras=(); names=()
  for i in $(seq 0 15); do loras+=(--lora "a$i=/tmp/flint-adapters/a$i"); names+=("a$i"); done
  if serve 1b-lora --model benches/configs/llama-3.2-1b --max-model-len 4096 --served-model-name base \
       --max-loras 16 --max-lora-rank 16 "${loras[@]}"; then
    bench 1b-lora-base --concurrency 32 --requests 128 --output-len 256 --model base
    bench 1b-lora-16 --concurrency 32 --requests 128 --output-len 256 --model "$(IFS=,; echo "${names[*]}")"
    stop
  fi
fi

step "summary"
python3 - "$OUT" <<'PY' | tee "$OUT/summary.md"
import json, os, sys
out = sys.argv[1]
def level(name):
    p = os.path.join(out, name + ".json")
    return json.load(open(p))["levels"][0] if os.path.exists(p) else None
def cfg(name):
    return json.load(open(f"benches/configs/{name}/config.json"))
def weight_bytes(c):
    # Bytes one decode step must read: every weight but the embedding table (a row is
    # gathered), which is read in full when tied to the LM head.
    h, i, L, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    d = c.get("head_dim", h // heads)
    per_layer = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * i + 2 * h
    return 2 * (L * per_layer + h + v * h)
rows = ["| target | measured | goal | ratio |", "|---|---|---|---|"]
bw = json.load(open(os.path.join(out, "bandwidth.json")))["copy_gbps"] if os.path.exists(os.path.join(out, "bandwidth.json")) else None
d1 = level("8b-decode-1")
if d1 and bw:
    tps = 1e3 / d1["itl_ms"]["p50"]
    bound = bw * 1e9 / weight_bytes(cfg("llama-3.1-8b"))
    rows.append(f"| 8B batch-1 decode | {tps:.1f} tok/s (ITL p50 {d1['itl_ms']['p50']:.2f} ms) | >= 90% of {bound:.1f} tok/s | {tps / bound:.1%} |")
t = level("8b-ttft")
if t:
    rows.append(f"| 8B TTFT, 512-token prompt | {t['ttft_ms']['p50']:.1f} ms (p50) | <= 30 ms | {30 / t['ttft_ms']['p50']:.2f}x |")
s = level("8b-saturated")
if s:
    rows.append(f"| 8B saturated (256 concurrent) | {s['output_throughput']:.0f} tok/s | >= 16000 | {s['output_throughput'] / 16000:.1%} |")
b = level("1b-32")
if b:
    rows.append(f"| 1B, 32 concurrent | {b['output_throughput']:.0f} tok/s | >= 12000 | {b['output_throughput'] / 12000:.1%} |")
lb, l16 = level("1b-lora-base"), level("1b-lora-16")
if lb and l16:
    r = l16["output_throughput"] / lb["output_throughput"]
    rows.append(f"| 1B, 16 LoRA adapters vs base (32 concurrent) | {l16['output_throughput']:.0f} vs {lb['output_throughput']:.0f} tok/s | >= 85% | {r:.1%} |")
print("\n".join(rows))
for name in ["8b-decode-1", "8b-ttft", "8b-saturated", "1b-32", "1b-lora-base", "1b-lora-16"]:
    l = level(name)
    if l and l.get("step_profile"):
        print(f"- {name}: step profile {l['step_profile']}")
PY

step "done (status $status)"
exit $status
