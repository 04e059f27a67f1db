#!/usr/bin/env python3
"""End-to-end parity of `flint serve` with transformers on the same random weights.

  make   creates a randomly initialised model from a config.json with transformers (on the GPU
         when there is one), saves it as safetensors with a byte-level tokenizer.json, and
         records transformers' greedy tokens and top-5 logprobs for a few token-id prompts.
  check  starts `flint serve` on that directory (with a small KV cache, so requests are
         preempted), sends every prompt at once through /v1/completions (token-id prompts,
         logprobs=5, return_tokens_as_token_ids), and compares: top-1 agreement over all
         positions (>= 99 % required) and the largest logprob difference of matching tokens.

Usage (the GPU check of issue 5; bf16 on an H100/H200):
  python scripts/gpu_parity.py make  --config benches/configs/llama-3.2-1b --out /tmp/l1b --dtype bfloat16
  python scripts/gpu_parity.py check --model /tmp/l1b --flint target/release/flint --dtype bf16
It also runs on the CPU in float32 with a tiny config (that is how it was tested).
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def byte_char(b: int) -> str:
    """GPT-2's byte -> printable character map (as flint's built-in byte-level tokenizer)."""
    printable = lambda x: 33 <= x <= 126 or 161 <= x <= 172 or x >= 174  # noqa: E731
    if printable(b):
        return chr(b)
    return chr(256 + sum(1 for x in range(b) if not printable(x)))


def byte_level_tokenizer() -> dict:
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "vocab": {byte_char(b): b for b in range(256)}, "merges": []},
    }


def make(args):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.config)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "tokenizer.json").write_text(json.dumps(byte_level_tokenizer()))
    rng = random.Random(args.seed)
    cases = []
    for length in args.prompt_lens:
        prompt = [rng.randrange(3, config.vocab_size) for _ in range(length)]
        ids = torch.tensor([prompt], device=device)
        with torch.no_grad():
            # Raw logits (not `scores`, which min_new_tokens has edited), as flint's raw logprobs.
            gen = model.generate(ids, max_new_tokens=args.max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, min_new_tokens=args.max_new_tokens,
                                 pad_token_id=0)
        tokens = gen.sequences[0, len(prompt):].tolist()
        top = []
        for scores in gen.logits:
            lp = torch.log_softmax(scores[0].float(), dim=-1)
            v, i = lp.topk(5)
            top.append([[int(a), float(b)] for a, b in zip(i.tolist(), v.tolist())])
        cases.append({"prompt": prompt, "tokens": tokens, "top5": top})
    ref = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": args.dtype, "cases": cases}
    (out / "parity_reference.json").write_text(json.dumps(ref))
    print(f"saved {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params) and {len(cases)} cases")


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def check(args):
    model = Path(args.model)
    ref = json.loads((model / "parity_reference.json").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [args.flint, "serve", "--model", str(model), "--port", str(port), "--served-model-name", "parity",
           "--dtype", args.dtype, *args.flint_args]
    log = open(model / "flint-serve.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                sys.exit(f"flint serve exited ({proc.returncode}); see {log.name}")
            try:
                urllib.request.urlopen(base + "/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        from concurrent.futures import ThreadPoolExecutor

        def run(case):
            body = {"model": "parity", "prompt": case["prompt"], "max_tokens": len(case["tokens"]), "temperature": 0,
                    "logprobs": 5, "ignore_eos": True, "return_tokens_as_token_ids": True}
            return post(base + "/v1/completions", body)["choices"][0]["logprobs"]

        with ThreadPoolExecutor(len(ref["cases"])) as pool:
            results = list(pool.map(run, ref["cases"]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    agree = total = 0
    max_diff = 0.0
    first_divergence = []
    for case, lp in zip(ref["cases"], results):
        got = [int(t.split(":")[1]) for t in lp["tokens"]]
        # Positions are comparable up to the first divergence (after it the contexts differ).
        n = next((i for i, (a, b) in enumerate(zip(got, case["tokens"])) if a != b), len(got))
        first_divergence.append(n)
        for i in range(len(got)):
            if i > n:
                break
            want_top = case["top5"][i]
            got_top = {int(k.split(":")[1]): v for k, v in lp["top_logprobs"][i].items()}
            total += 1
            agree += want_top[0][0] == max(got_top, key=got_top.get)
            for tok, v in want_top:
                if tok in got_top:
                    max_diff = max(max_diff, abs(got_top[tok] - v))
    rate = agree / max(total, 1)
    print(json.dumps({"reference_device": ref["device"], "dtype": ref["dtype"], "positions": total,
                      "top1_agreement": rate, "max_logprob_diff": max_diff,
                      "first_divergence": first_divergence}, indent=1))
    if rate < 0.99:
        sys.exit(f"top-1 agreement {rate:.4f} < 0.99")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--config", required=True, help="directory with config.json")
    m.add_argument("--out", required=True)
    m.add_argument("--dtype", default="bfloat16")
    m.add_argument("--device", default=None)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--prompt-lens", type=int, nargs="+", default=[7, 33, 100, 250])
    m.add_argument("--max-new-tokens", type=int, default=32)
    c = sub.add_parser("check")
    c.add_argument("--model", required=True)
    c.add_argument("--flint", default=os.environ.get("FLINT_BIN", "target/release/flint"))
    c.add_argument("--dtype", default="bf16")
    c.add_argument("flint_args", nargs="*", help="extra `flint serve` flags (after --)")
    args = ap.parse_args()
    make(args) if args.cmd == "make" else check(args)


if __name__ == "__main__":
    main()
