#!/usr/bin/env python3
"""Generate flint's LoRA fixtures: PEFT adapters for the tiny test models plus peft's outputs.

    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_fixtures.py --only tiny     # base models (committed)
    .venv-fixtures/bin/python scripts/make_lora_fixtures.py            # this script
    .venv-fixtures/bin/python scripts/make_lora_fixtures.py --fixtures tests/fixtures

Reads the committed base checkpoints tests/fixtures/tiny/{llama-gqa-tied,qwen2}/ and writes,
for each <base>:

* tests/fixtures/lora/<base>/<adapter>/adapter_config.json, adapter_model.safetensors :
  what peft's save_pretrained writes (README.md removed; base_model_name_or_path set to
  "tests/fixtures/tiny/<base>"; target_modules sorted, since peft dumps a Python set).
  Adapters: attn-r8 (q/k/v/o, r=8, alpha=16), all-r16-rslora (all seven projections,
  r=16, alpha=8, use_rslora: scaling alpha/sqrt(r)) and mlp-r4 (gate/up/down, r=4, alpha=4).
  lora_A and lora_B are re-drawn from seeded normals (peft's B=0 init would be a no-op).
* tests/fixtures/lora/<base>/reference.json : per adapter the LoRA settings, logits cases
  (input ids) and greedy cases (argmax over a full re-forward per step, no eos stop); the
  greedy prompts are shared by every adapter and by base_greedy_cases (the base model), so
  a mixed batch of base + adapters can run identical prompts. Every greedy step has a
  top-1/top-2 logit gap >= 1e-2 and no greedy output contains eos (id 2).
* tests/fixtures/lora/<base>/reference_logits.safetensors : float32 logits [len, vocab] of
  the unmerged peft model under key "<adapter>/case<i>".

Deterministic: fixed seeds, one CPU thread, eager attention, float32. The script also checks
peft's output against base weights + scaling * B @ A applied by hand.
"""
import argparse
import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets offline env, 1 thread, deterministic algorithms)

import peft  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
# name -> LoraConfig settings
ADAPTERS = {
    "attn-r8": dict(target_modules=ATTN, r=8, lora_alpha=16, use_rslora=False),
    "all-r16-rslora": dict(target_modules=ATTN + MLP, r=16, lora_alpha=8, use_rslora=True),
    "mlp-r4": dict(target_modules=MLP, r=4, lora_alpha=4, use_rslora=False),
}
BASES = ["llama-gqa-tied", "qwen2"]
DELTA_STD = 0.1  # std of scaling * (B @ A) entries; the base linear weights have std 0.2
LOGITS_LENGTHS = (7, 19)
PROMPT_LENGTHS = (3, 6, 9)
MAX_NEW = 12
FIRST_ID = 3  # random ids avoid PAD/BOS/EOS = 0/1/2


def load_base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def scaling(spec):
    return spec["lora_alpha"] / (math.sqrt(spec["r"]) if spec["use_rslora"] else spec["r"])


def build_adapter(base_dir, spec, seed):
    """Fresh base + peft LoRA with A, B ~ N(0, s^2), s chosen so scaling * B @ A has std
    DELTA_STD (entries of B @ A have std s^2 * sqrt(r))."""
    model = get_peft_model(load_base(base_dir), LoraConfig(
        task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **spec))
    std = math.sqrt(DELTA_STD / (scaling(spec) * math.sqrt(spec["r"])))
    gen = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.copy_(std * torch.randn(p.shape, generator=gen))
                n += 1
    if n != 2 * len(spec["target_modules"]) * model.base_model.model.config.num_hidden_layers:
        mf.fail(f"unexpected number of LoRA tensors: {n}")
    return model.eval()


def check_by_hand(base_dir, model, spec, ids):
    """peft's unmerged forward == base with W += scaling * B @ A on every target module."""
    ref = load_base(base_dir)
    s, merged = scaling(spec), 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if name.split(".")[-1] in spec["target_modules"]:
                layer = model.base_model.model.get_submodule(name)
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                mod.weight += s * (b @ a)
                merged += 1
        want = ref(torch.tensor([ids]), use_cache=False).logits[0]
        got = model(torch.tensor([ids]), use_cache=False).logits[0]
    diff = float((want - got).abs().max())
    if merged == 0 or diff > 1e-4:
        mf.fail(f"hand-merged logits differ from peft by {diff:.2e} ({merged} modules)")
    return diff


def greedy_ok(model, prompt):
    out, gap = mf.manual_greedy(model, prompt, MAX_NEW)
    return out, gap, gap >= mf.TINY_MIN_GAP and mf.EOS not in out


def pick_prompts(models, vocab, seed):
    """For each prompt length, the first seeded random prompt on which every model (base and
    adapters) keeps the greedy top-2 gap and emits no eos. Returns prompts and, per model,
    its greedy cases."""
    prompts, cases = [], {k: [] for k in models}
    for j, n in enumerate(PROMPT_LENGTHS):
        for attempt in range(200):
            gen = torch.Generator().manual_seed(seed + 1000 * j + attempt)
            prompt = torch.randint(FIRST_ID, vocab, (n,), generator=gen).tolist()
            res = {k: greedy_ok(m, prompt) for k, m in models.items()}
            if all(ok for _, _, ok in res.values()):
                break
        else:
            mf.fail(f"no prompt of length {n} satisfies the greedy gap for all models")
        prompts.append(prompt)
        for k, (out, gap, _) in res.items():
            cases[k].append({"prompt_ids": prompt, "max_new_tokens": MAX_NEW,
                             "output_ids": out, "min_top2_gap": round(gap, 6)})
    return prompts, cases


def save_adapter(model, out_dir, base):
    model.save_pretrained(out_dir, safe_serialization=True)
    (out_dir / "README.md").unlink(missing_ok=True)
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = f"tests/fixtures/tiny/{base}"
    cfg["target_modules"] = sorted(cfg["target_modules"])  # peft dumps a set: hash order
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))  # peft's own layout
    extra = sorted(p.name for p in out_dir.iterdir()) != ["adapter_config.json",
                                                          "adapter_model.safetensors"]
    if extra:
        mf.fail(f"unexpected files in {out_dir}: {sorted(p.name for p in out_dir.iterdir())}")


def make_base(base, fixtures):
    base_dir = fixtures / "tiny" / base
    out = fixtures / "lora" / base
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    seed = mf.TINY[base][1] + 500
    base_model = load_base(base_dir)
    vocab = base_model.config.vocab_size

    models = {"base": base_model}
    for i, (name, spec) in enumerate(ADAPTERS.items()):
        models[name] = build_adapter(base_dir, spec, seed + 10 * i)
    prompts, greedy = pick_prompts(models, vocab, seed + 77)

    adapters, tensors = {}, {}
    for i, (name, spec) in enumerate(ADAPTERS.items()):
        model = models[name]
        gen = torch.Generator().manual_seed(seed + 10 * i + 5)
        logits_cases, max_abs = [], 0.0
        for c, n in enumerate(LOGITS_LENGTHS):
            ids = torch.randint(FIRST_ID, vocab, (n,), generator=gen).tolist()
            with torch.no_grad():
                logits = model(torch.tensor([ids]), use_cache=False).logits[0]
            tensors[f"{name}/case{c}"] = logits.float().contiguous()
            logits_cases.append({"input_ids": ids})
            max_abs = max(max_abs, float(logits.abs().max()))
        hand_diff = check_by_hand(base_dir, model, spec, logits_cases[1]["input_ids"])
        if not 1.0 < max_abs < 100.0:
            mf.fail(f"{base}/{name}: logits out of range (max |logit| {max_abs:.1f})")
        n_diff = sum(a["output_ids"] != b["output_ids"]
                     for a, b in zip(greedy[name], greedy["base"]))
        if n_diff == 0:
            mf.fail(f"{base}/{name}: adapter does not change any greedy output")

        save_adapter(model, out / name, base)
        size = (out / name / "adapter_model.safetensors").stat().st_size
        adapters[name] = {"r": spec["r"], "lora_alpha": spec["lora_alpha"],
                          "use_rslora": spec["use_rslora"],
                          "target_modules": sorted(spec["target_modules"]),
                          "scaling": scaling(spec),
                          "logits_cases": logits_cases, "greedy_cases": greedy[name]}
        gaps = [c["min_top2_gap"] for c in greedy[name]]
        print(f"lora/{base}/{name}: {size} B, scaling {scaling(spec):.4g}, max |logit| "
              f"{max_abs:.1f}, greedy differs from base on {n_diff}/{len(prompts)}, "
              f"min gaps {gaps}, hand-merge diff {hand_diff:.1e}")

    save_file(tensors, out / "reference_logits.safetensors")
    ref = {"base": base, "peft_version": peft.__version__, **mf.versions(),
           "notes": "logits and greedy outputs of the unmerged peft model (eval, float32, "
                    "eager attention); scaling = lora_alpha / r, or lora_alpha / sqrt(r) "
                    "with use_rslora; greedy = argmax over a full re-forward per step, "
                    "max_new_tokens tokens, no eos stop (no output contains eos id 2); "
                    "base_greedy_cases are the base model on the same prompts",
           "adapters": adapters, "base_greedy_cases": greedy["base"]}
    mf.write_json(out / "reference.json", ref)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", default="tests/fixtures", type=Path,
                    help="fixtures root: reads <root>/tiny/<base>, writes <root>/lora/<base>")
    args = ap.parse_args()
    for base in BASES:
        make_base(base, args.fixtures)


if __name__ == "__main__":
    main()
