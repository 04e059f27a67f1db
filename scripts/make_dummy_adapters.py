#!/usr/bin/env python3
"""Random PEFT LoRA adapters for a model config (dummy weights), for LoRA throughput runs:

    python3 scripts/make_dummy_adapters.py --config benches/configs/llama-3.2-1b \
        --out /tmp/adapters --count 16 --rank 16

writes OUT/a0 .. OUT/a{count-1}, each adapter_config.json + adapter_model.safetensors with A and
B for all seven projections of every layer (peft's key names), random and non-zero so no work
can be skipped. Needs numpy and safetensors (torch not required)."""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

MODULES = {
    "q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
    "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp",
}


def dims(c, module):
    h, i = c["hidden_size"], c["intermediate_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads", heads)
    d = c.get("head_dim") or h // heads
    return {
        "q_proj": (h, heads * d), "k_proj": (h, kv * d), "v_proj": (h, kv * d), "o_proj": (heads * d, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }[module]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="directory with config.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    c = json.load(open(os.path.join(a.config, "config.json")))
    rng = np.random.default_rng(a.seed)
    for n in range(a.count):
        d = os.path.join(a.out, f"a{n}")
        os.makedirs(d, exist_ok=True)
        tensors = {}
        for layer in range(c["num_hidden_layers"]):
            for m, block in MODULES.items():
                d_in, d_out = dims(c, m)
                key = f"base_model.model.model.layers.{layer}.{block}.{m}"
                tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((a.rank, d_in)) * 0.01).astype(np.float16)
                tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((d_out, a.rank)) * 0.01).astype(np.float16)
        save_file(tensors, os.path.join(d, "adapter_model.safetensors"))
        json.dump({
            "peft_type": "LORA", "r": a.rank, "lora_alpha": 2 * a.rank, "lora_dropout": 0.0,
            "target_modules": list(MODULES), "bias": "none", "task_type": "CAUSAL_LM",
            "base_model_name_or_path": os.path.basename(os.path.normpath(a.config)),
        }, open(os.path.join(d, "adapter_config.json"), "w"), indent=1)
    print(f"{a.count} adapters of rank {a.rank} in {a.out}")


if __name__ == "__main__":
    main()
