#!/usr/bin/env bash
# Builds what scripts/gpu-check.sh and scripts/gpu-perf.sh run on the GPU machine, here (no GPU
# needed): the stripped `flint` binary with the `cuda` feature, the CUDA kernel parity test
# executables and the kernel bench (criterion), into .device/ (git-ignored; pass it as `carry`
# to the device run).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_CUDA:-target-cuda}
cargo build --release --features cuda -p flint-server --bin flint
mkdir -p .device/tests
cp "$CARGO_TARGET_DIR/release/flint" .device/flint && strip .device/flint
rm -f .device/tests/*
cargo test --release --features cuda -p flint-kernels --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' \
  | while read -r exe; do cp "$exe" .device/tests/ && strip ".device/tests/$(basename "$exe")"; done
mkdir -p .device/benches
cargo bench --features cuda --bench kernels --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernels":
        print(m["executable"])' \
  | while read -r exe; do cp "$exe" .device/benches/kernels && strip .device/benches/kernels; done
ls -la .device .device/tests .device/benches
