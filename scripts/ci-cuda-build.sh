#!/usr/bin/env bash
# CI: compile flint with the `cuda` feature on a machine with no GPU and no CUDA install, so GPU
# code never rots. Nothing runs on a GPU here; the tests run on the CPU in the ordinary job.
#
#   scripts/ci-cuda-build.sh            # from anywhere; extra args go to cargo build
#
# It sources scripts/cuda-env.sh (first use installs CUDA 13.0's nvcc etc. from PyPI into
# ${FLINT_CUDA_ROOT:-~/.cache/flint/cuda13}, ~1.2 GB: cache that directory in CI) and builds the
# release binaries, which are what the GPU machines run. Release, in a target directory of its
# own (${CARGO_TARGET_DIR_CUDA:-target-cuda}) so it doesn't thrash the CPU build's cache.
#
# Expected time, cold, on 2 cores: 7-10 minutes on an idle machine (candle-kernels' nvcc step,
# which compiles candle's CUDA kernels to sm_90a, is about 5 of them); 28-40 minutes were
# measured with the cores shared by other builds. Warm (only flint's crates changed): 1-2 minutes.
# Result: target-cuda/release/flint (about 65 MB; 61 MB stripped, 17 MB gzipped).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

# shellcheck source=scripts/cuda-env.sh
source scripts/cuda-env.sh || { echo "ci-cuda-build: CUDA toolchain setup failed" >&2; exit 1; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR_CUDA:-target-cuda}
echo "ci-cuda-build: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR" >&2
start=$SECONDS
# --workspace: the root package (flint-suite) has no binaries of its own, so a plain
# `cargo build --features cuda --bins` in the root would build nothing; every member has `cuda`.
cargo build --release --workspace --features cuda --bins "$@"
# The GPU parity tests too (they run on a GPU machine; here they only have to compile).
cargo test --release -p flint-kernels --features cuda --no-run
echo "ci-cuda-build: done in $((SECONDS - start)) s: $CARGO_TARGET_DIR/release/flint" >&2
