#!/usr/bin/env bash
# The kernels crate compiles for aarch64 (its portable quantized matmul is what ARM runs; no
# NEON kernel yet). Only flint-kernels: the crates above it pull in `ring` (TLS for Hub
# downloads), whose build needs an aarch64 C cross-compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target"
fi
cargo check --release --target "$target" -p flint-kernels
