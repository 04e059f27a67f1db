#!/usr/bin/env bash
# The GPU checks of issue 5, in one run on the device machine (it has CUDA, PyTorch and
# transformers, but no Rust). Build first, here, with scripts/gpu-build.sh (the flint binary and
# the kernel parity test executables, into .device/), then run this script there with .device
# carried; results land in $OUT (default ./gpu-out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
FLINT=${FLINT_BIN:-.device/flint}
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.csv"

step "kernel parity tests (CPU reference vs CUDA)"
for t in .device/tests/*; do
  [ -x "$t" ] || continue
  "$t" --include-ignored 2>&1 | tee -a "$OUT/kernel-parity.txt" | tail -3 || status=1
done

step "end to end vs transformers, bf16, Llama-3.2-1B shape, small KV cache (preemption)"
python3 scripts/gpu_parity.py make --config benches/configs/llama-3.2-1b --out /tmp/l1b --dtype bfloat16 \
  && python3 scripts/gpu_parity.py check --model /tmp/l1b --flint "$FLINT" --dtype bf16 -- \
       --kv-cache-memory 64MiB | tee "$OUT/parity-llama-3.2-1b.json" || status=1

step "device copy bandwidth (the decode roofline)"
python3 - <<'PY' | tee "$OUT/bandwidth.txt"
import torch, time
x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.time(); n = 20
for _ in range(n): y.copy_(x)
torch.cuda.synchronize(); dt = time.time() - t
print(f"copy bandwidth: {2 * x.numel() * n / dt / 1e9:.0f} GB/s (read + write)")
PY

step "throughput: Llama-3.1-8B shape, dummy weights"
"$FLINT" serve --model benches/configs/llama-3.1-8b --load-format dummy --port 8765 --max-model-len 4096 \
  > "$OUT/serve-8b.log" 2>&1 &
pid=$!
for _ in $(seq 600); do curl -sf localhost:8765/ready >/dev/null && break; sleep 1; done
"$FLINT" bench --base-url http://127.0.0.1:8765/v1 --input-len 128 --output-len 128 \
  --concurrency 1,8,32,128 --json "$OUT/bench-8b.json" | tee "$OUT/bench-8b.txt" || status=1
kill -TERM $pid; wait $pid

step "done (status $status)"
exit $status
