#!/usr/bin/env bash
# flint next to llama.cpp on the same GGUF files, on this machine, in one run.
#
#   scripts/bench-peer.sh [TYPES...]     # default: f32 q8_0 q4_0 q4_1 q4_k_m
#
# 1. Builds llama.cpp's llama-bench once into $FLINT_PEER_HOME (default ~/.cache/flint-peer),
#    from the llama.cpp tree that PyPI's llama-cpp-python source distribution vendors (cmake and
#    ninja from PyPI into a venv there). Nothing of it enters the repo.
# 2. Writes each type's GGUF with `flint quantize` from the default model's f32 directory
#    (q4_1: the shipped file itself), under $FLINT_HOME/bench-gguf.
# 3. Per type, alternating the two engines: llama-bench (pp128, pp512, tg64; 2 threads) and
#    flint's criterion decode bench (prefill_128, decode_at_128) on the same file as
#    `flint serve --model FILE.gguf` loads it.
# Output: one markdown table on stdout. Needs target/release/flint (`make build`) and the
# default model (`make model`).
set -euo pipefail
cd "$(dirname "$0")/.."

FLINT_HOME="${FLINT_HOME:-$HOME/.cache/flint}"
PEER="${FLINT_PEER_HOME:-$HOME/.cache/flint-peer}"
LCP_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
FLINT=target/release/flint
MODEL="$FLINT_HOME/models/smollm2-135m-instruct"
SHIPPED="$FLINT_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$FLINT_HOME/bench-gguf"
TYPES=("$@")
[[ ${#TYPES[@]} -gt 0 ]] || TYPES=(f32 q8_0 q4_0 q4_1 q4_k_m)

tree="$PEER/llama_cpp_python-$LCP_VERSION/vendor/llama.cpp"
bench_bin="$tree/build/bin/llama-bench"
if [[ ! -x "$bench_bin" ]]; then
    mkdir -p "$PEER"
    sdist="$PEER/llama_cpp_python-$LCP_VERSION.tar.gz"
    [[ -f "$sdist" ]] || python3 -m pip download -q --no-deps --no-binary :all: -d "$PEER" "llama-cpp-python==$LCP_VERSION" >&2
    [[ -d "$tree" ]] || tar -xzf "$sdist" -C "$PEER"
    [[ -x "$PEER/venv/bin/cmake" ]] || { python3 -m venv "$PEER/venv" && "$PEER/venv/bin/pip" install -q cmake ninja >&2; }
    PATH="$PEER/venv/bin:$PATH" cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >&2
    PATH="$PEER/venv/bin:$PATH" cmake --build "$tree/build" -j"$(nproc)" --target llama-bench llama-server >&2
fi

[[ -x "$FLINT" ]] || { echo "error: $FLINT missing (make build)" >&2; exit 1; }
[[ -f "$MODEL/config.json" ]] || { echo "error: default model missing (make model)" >&2; exit 1; }
mkdir -p "$OUT"

# llama-bench's t/s column for one test (pp128 / pp512 / tg64).
peer_rate() { awk -F'|' -v t="$2" '$0 ~ t { gsub(/ /, "", $8); split($8, a, "±"); print a[1] }' "$1"; }
# criterion's median elements/s for one bench of the decode group.
flint_rate() { awk -v b="$2" '$0 ~ b { n = 1 } n && /thrpt:/ { print $4; exit }' "$1"; }

echo "| type | llama.cpp pp128 | flint prefill_128 | llama.cpp pp512 | llama.cpp tg64 | flint decode_at_128 | decode ratio |"
echo "|---|---|---|---|---|---|---|"
for t in "${TYPES[@]}"; do
    file="$OUT/m.$t.gguf"
    if [[ ! -f "$file" ]]; then
        if [[ "$t" == q4_1 ]]; then cp "$SHIPPED" "$file"; else "$FLINT" quantize "$MODEL" "$file" --type "$t" >&2; fi
    fi
    # The directory `flint serve --model FILE` serves it from (config, tokenizer, link).
    "$FLINT" run --model "$file" --max-tokens 1 "x" >/dev/null 2>&1
    dir=$(ls -d "$FLINT_HOME"/converted/m."$t"-*-q | head -n 1)
    peer_log=$(mktemp); flint_log=$(mktemp)
    "$bench_bin" -m "$file" -t "$(nproc)" -p 128,512 -n 64 -r 3 -o md >"$peer_log" 2>/dev/null
    FLINT_BENCH_MODEL="$dir" cargo bench -q --bench decode -- --warm-up-time 2 --measurement-time 5 >"$flint_log" 2>&1
    pp=$(peer_rate "$peer_log" pp128); pp5=$(peer_rate "$peer_log" pp512); tg=$(peer_rate "$peer_log" tg64)
    fp=$(flint_rate "$flint_log" prefill_128); fd=$(flint_rate "$flint_log" decode_at_128)
    ratio=$(python3 -c "print(f'{float(\"$fd\")/float(\"$tg\"):.2f}x')" 2>/dev/null || echo "?")
    echo "| $t | $pp | $fp | $pp5 | $tg | $fd | $ratio |"
    rm -f "$peer_log" "$flint_log"
done
echo
echo "machine: $(nproc) vCPU, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); llama-cpp-python $LCP_VERSION's llama.cpp; flint $(git rev-parse --short HEAD)"
