#!/usr/bin/env python3
"""Generate flint's fine-tuning round-trip fixtures: adapters trained by flint, peft's logits.

    .venv-fixtures/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-fixtures/bin/python scripts/make_ft_fixtures.py            # builds and trains too
    .venv-fixtures/bin/python scripts/make_ft_fixtures.py --no-train # peft side only

1. Runs `cargo run --release --example ft_fixture -- <fixtures>`: flint's own LoRA
   fine-tuning (flint_engine::finetune::train, fixed recipe in
   examples/ft_fixture/recipe.rs) on the committed tiny models
   tests/fixtures/tiny/{llama-gqa-tied,qwen2}, which replaces tests/fixtures/ft/<arch>/ with
   adapter/ (TrainableModel::save_peft: adapter_config.json, adapter_model.safetensors) and
   train.json (the recipe and its per-step losses).
2. Loads every adapter with peft (PeftModel.from_pretrained on the transformers base model
   from tests/fixtures/tiny/<arch>; float32, CPU, eager attention), checks that peft took
   every tensor of the file unchanged and that its output equals base weights +
   lora_alpha / r * B @ A applied by hand, then writes
   * tests/fixtures/ft/<arch>/reference.json : the LoRA settings peft read, the logits cases
     (input ids: the base model's own logits cases from tiny/<arch>/reference.json, then the
     full text of the first two training examples) and the peft/transformers/torch versions;
   * tests/fixtures/ft/<arch>/reference_logits.safetensors : float32 logits [len, vocab] of
     the unmerged peft model under key "case<i>".

tests/ft_peft_roundtrip.rs serves the committed adapters in flint against these logits and
retrains with the same recipe against the committed adapter tensors. Deterministic: the
training is seeded, and peft runs on one CPU thread in float32.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (sets offline env, 1 thread, deterministic algorithms)

import peft  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ["llama-gqa-tied", "qwen2"]  # as recipe::ARCHS
TRAIN_CASES = 2  # training examples (full text) used as logits cases
MIN_CHANGE = 0.05  # the adapter must move some logit of every case at least this much


def load_base(base_dir):
    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                attn_implementation="eager").eval()


def train_with_flint(fixtures, cargo):
    cmd = [cargo, "run", "--release", "--example", "ft_fixture", "--", str(fixtures.resolve())]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def forward(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().contiguous()


def check_loaded(model, adapter_dir, n_layers, targets):
    """Every tensor of the file is in peft's model unchanged, and nothing else is LoRA."""
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    params = dict(model.named_parameters())
    if len(saved) != 2 * n_layers * len(targets):
        mf.fail(f"{adapter_dir}: {len(saved)} tensors, expected {2 * n_layers * len(targets)}")
    for key, value in saved.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight") \
                  .replace(".lora_B.weight", ".lora_B.default.weight")
        if name not in params:
            mf.fail(f"{adapter_dir}: peft has no parameter for {key}")
        if not torch.equal(params[name].detach(), value):
            mf.fail(f"{adapter_dir}: peft's {name} differs from the file")
    n_lora = sum(1 for n in params if ".lora_A." in n or ".lora_B." in n)
    if n_lora != len(saved):
        mf.fail(f"{adapter_dir}: peft has {n_lora} LoRA tensors, the file {len(saved)}")
    if min(float(v.abs().max()) for k, v in saved.items() if ".lora_B." in k) < 1e-2:
        mf.fail(f"{adapter_dir}: some lora_B is (nearly) zero; train longer")
    return saved


def hand_merged(base_dir, saved, scaling):
    """The base model with W += scaling * B @ A on every adapted module."""
    ref = load_base(base_dir)
    with torch.no_grad():
        for key, a in saved.items():
            if ".lora_A." not in key:
                continue
            b = saved[key.replace(".lora_A.", ".lora_B.")]
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            ref.get_submodule(module).weight += scaling * (b @ a)
    return ref


def make_arch(arch, fixtures):
    base_dir = fixtures / "tiny" / arch
    out = fixtures / "ft" / arch
    adapter_dir = out / "adapter"
    train = json.loads((out / "train.json").read_text())
    if sorted(p.name for p in adapter_dir.iterdir()) != ["adapter_config.json",
                                                         "adapter_model.safetensors"]:
        mf.fail(f"unexpected files in {adapter_dir}")

    base = load_base(base_dir)
    n_layers = base.config.num_hidden_layers
    model = PeftModel.from_pretrained(load_base(base_dir), adapter_dir, is_trainable=False).eval()
    cfg = model.peft_config["default"]
    targets = sorted(cfg.target_modules)
    if (cfg.r, cfg.lora_alpha, targets, cfg.use_rslora) != (
            train["lora"]["r"], train["lora"]["lora_alpha"], sorted(train["lora"]["target_modules"]),
            False):
        mf.fail(f"{arch}: peft read r={cfg.r} alpha={cfg.lora_alpha} {targets}, "
                f"train.json says {train['lora']}")
    scaling = cfg.lora_alpha / cfg.r
    saved = check_loaded(model, adapter_dir, n_layers, targets)
    merged = hand_merged(base_dir, saved, scaling)

    cases = [c["input_ids"] for c in
             json.loads((base_dir / "reference.json").read_text())["logits_cases"]]
    cases += [list((e["prompt"] + e["completion"]).encode()) for e in
              train["examples"][:TRAIN_CASES]]
    tensors, logits_cases, hand_diff, changes = {}, [], 0.0, []
    for i, ids in enumerate(cases):
        logits = forward(model, ids)
        hand_diff = max(hand_diff, float((logits - forward(merged, ids)).abs().max()))
        changes.append(float((logits - forward(base, ids)).abs().max()))
        tensors[f"case{i}"] = logits
        logits_cases.append({"input_ids": ids})
    if hand_diff > 1e-4:
        mf.fail(f"{arch}: peft differs from the hand-merged model by {hand_diff:.2e}")
    if min(changes) < MIN_CHANGE:
        mf.fail(f"{arch}: the adapter changes some case's logits by only {min(changes):.2e}")

    save_file(tensors, out / "reference_logits.safetensors")
    ref = {"base": f"tests/fixtures/tiny/{arch}", "adapter": f"tests/fixtures/ft/{arch}/adapter",
           "peft_version": peft.__version__, **mf.versions(),
           "notes": "logits of the flint-trained adapter loaded with PeftModel.from_pretrained "
                    "on the transformers base model (unmerged, eval, float32, eager attention); "
                    "cases: the base model's logits cases (tiny/<arch>/reference.json), then "
                    "the full text of the first training examples of train.json (UTF-8 bytes)",
           "r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora,
           "target_modules": targets, "scaling": scaling, "logits_cases": logits_cases}
    mf.write_json(out / "reference.json", ref)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"ft/{arch}: {len(saved)} LoRA tensors, {len(cases)} cases, {size} B in all, "
          f"change from base {min(changes):.3f}..{max(changes):.3f}, "
          f"hand-merge diff {hand_diff:.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", default=ROOT / "tests" / "fixtures", type=Path,
                    help="fixtures root: reads <root>/tiny/<arch>, writes <root>/ft/<arch>")
    ap.add_argument("--no-train", action="store_true",
                    help="keep the adapters in <root>/ft/ (skip the cargo run)")
    ap.add_argument("--cargo", default=os.environ.get("CARGO", "cargo"))
    args = ap.parse_args()
    if not args.no_train:
        train_with_flint(args.fixtures, args.cargo)
    for arch in ARCHS:
        make_arch(arch, args.fixtures)
    found = sorted(p.name for p in (args.fixtures / "ft").iterdir())
    if found != sorted(ARCHS):
        mf.fail(f"{args.fixtures / 'ft'} holds {found}, expected {sorted(ARCHS)}")


if __name__ == "__main__":
    main()
