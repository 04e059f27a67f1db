//! LoRA adapters against peft on the committed fixtures (scripts/make_lora_fixtures.py):
//! logits within 1e-4 and identical greedy continuations for every adapter, a batch mixing
//! adapters and the base equal to its solo runs, and bad adapters refused by name.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use flint_models::{load, LoadOptions, LoadedModel, LoraAdapter};

const BASES: [&str; 2] = ["llama-gqa-tied", "qwen2"];
const ADAPTERS: [&str; 3] = ["attn-r8", "all-r16-rslora", "mlp-r4"];

fn lora_dir(base: &str) -> PathBuf {
    common::fixtures().join("lora").join(base)
}

/// The base model with LoRA enabled and every fixture adapter in slots 0, 1, 2.
fn base_with_adapters(base: &str) -> (LoadedModel, serde_json::Value) {
    let dir = common::fixtures().join("tiny").join(base);
    let mut m = load(&dir, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).expect("base loads");
    m.model.enable_lora(4, 16).expect("lora slots");
    for (slot, name) in ADAPTERS.iter().enumerate() {
        let a = LoraAdapter::load(&lora_dir(base).join(name), &m.config, 16).unwrap_or_else(|e| panic!("{name}: {e}"));
        m.model.set_lora_slot(slot, Some(&a)).expect("slot set");
    }
    let reference = common::read_json(&lora_dir(base).join("reference.json"));
    (m, reference)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn every_adapter_matches_peft_logits_and_greedy() {
    for base in BASES {
        let (m, reference) = base_with_adapters(base);
        let want = candle_core::safetensors::load(lora_dir(base).join("reference_logits.safetensors"), &Device::Cpu).unwrap();
        for (slot, name) in ADAPTERS.iter().enumerate() {
            let r = &reference["adapters"][name];
            for (i, case) in r["logits_cases"].as_array().unwrap().iter().enumerate() {
                let ids = common::ids(&case["input_ids"]);
                let got = &common::batch_logits(&m, &[(ids, Some(slot as u32))])[0];
                let diff = max_abs_diff(got, &want[&format!("{name}/case{i}")]);
                assert!(diff <= 1e-4, "{base}/{name} case {i}: max |diff| {diff}");
            }
            for case in r["greedy_cases"].as_array().unwrap() {
                let prompt = common::ids(&case["prompt_ids"]);
                let out = common::ids(&case["output_ids"]);
                assert_eq!(common::greedy(&m, &prompt, out.len(), Some(slot as u32)), out, "{base}/{name} greedy from {prompt:?}");
            }
        }
        // No slot: the base model, exactly.
        for case in reference["base_greedy_cases"].as_array().unwrap() {
            let prompt = common::ids(&case["prompt_ids"]);
            let out = common::ids(&case["output_ids"]);
            assert_eq!(common::greedy(&m, &prompt, out.len(), None), out, "{base}/base greedy from {prompt:?}");
        }
    }
}

#[test]
fn a_batch_mixing_adapters_and_the_base_matches_solo_runs() {
    for base in BASES {
        let (m, reference) = base_with_adapters(base);
        let prompts: Vec<Vec<u32>> = reference["base_greedy_cases"].as_array().unwrap().iter().map(|c| common::ids(&c["prompt_ids"])).collect();
        let seqs: Vec<(Vec<u32>, Option<u32>)> = vec![
            (prompts[2].clone(), Some(0)),
            (prompts[1].clone(), None),
            (prompts[2].clone(), Some(1)),
            (prompts[0].clone(), Some(0)),
            (prompts[2].clone(), None),
        ];
        let together = common::batch_logits(&m, &seqs);
        for (i, s) in seqs.iter().enumerate() {
            let alone = &common::batch_logits(&m, std::slice::from_ref(s))[0];
            let diff = max_abs_diff(&together[i], alone);
            // Matmul blocking depends on the batch size, so rows agree to float rounding.
            assert!(diff <= 1e-4, "{base}: sequence {i} ({:?}) differs in a mixed batch by {diff}", s.1);
        }
        // Slots really differ: same prompt, different adapters.
        assert!(max_abs_diff(&together[0], &together[2]) > 1e-2);
        assert!(max_abs_diff(&together[0], &together[4]) > 1e-2);
    }
}

/// Copies an adapter fixture to a temp dir and lets `edit` break it.
fn broken(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let src = lora_dir("llama-gqa-tied").join("attn-r8");
    let dir = tempfile::tempdir().unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    edit(dir.path());
    dir
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let p = dir.join("adapter_config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v[key] = value;
    std::fs::write(p, v.to_string()).unwrap();
}

#[test]
fn bad_adapters_are_refused_by_name() {
    let base = common::fixtures().join("tiny").join("llama-gqa-tied");
    let m = load(&base, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).unwrap();
    let err = |dir: &Path, max_rank: usize| LoraAdapter::load(dir, &m.config, max_rank).expect_err("refused").to_string();
    let ok = lora_dir("llama-gqa-tied").join("attn-r8");
    assert!(LoraAdapter::load(&ok, &m.config, 8).is_ok());

    let e = err(&ok, 4);
    assert!(e.contains("`r`") && e.contains("max-lora-rank"), "{e}");
    let e = err(Path::new("/nonexistent/adapter"), 16);
    assert!(e.contains("adapter_config.json") && e.contains("not found"), "{e}");
    let d = broken(|d| std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap());
    assert!(err(d.path(), 16).contains("adapter_model.safetensors"));
    let d = broken(|d| {
        std::fs::remove_file(d.join("adapter_model.safetensors")).unwrap();
        std::fs::write(d.join("adapter_model.bin"), b"pickle").unwrap();
    });
    assert!(err(d.path(), 16).contains("safetensors"));
    let d = broken(|d| std::fs::write(d.join("adapter_model.safetensors"), b"\x08\0\0\0\0\0\0\0garbage!").unwrap());
    assert!(err(d.path(), 16).contains("corrupt"));
    let d = broken(|d| edit_config(d, "target_modules", serde_json::json!(["q_proj", "lm_head"])));
    let e = err(d.path(), 16);
    assert!(e.contains("target_modules") && e.contains("lm_head"), "{e}");
    let d = broken(|d| edit_config(d, "target_modules", serde_json::json!(["q_proj"])));
    let e = err(d.path(), 16);
    assert!(e.contains("lora_") && e.contains("not in target_modules"), "{e}");
    let d = broken(|d| edit_config(d, "use_dora", serde_json::json!(true)));
    assert!(err(d.path(), 16).contains("use_dora"));
    let d = broken(|d| edit_config(d, "r", serde_json::json!(4)));
    let e = err(d.path(), 16);
    assert!(e.contains("has shape") && e.contains("r=4"), "{e}");
    let d = broken(|d| std::fs::write(d.join("adapter_config.json"), "{not json").unwrap());
    assert!(err(d.path(), 16).contains("invalid JSON"));
    // An adapter for another base model: q_proj has other shapes.
    let qwen3 = common::fixtures().join("tiny").join("qwen3");
    let m3 = load(&qwen3, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).unwrap();
    if m3.config.num_heads * m3.config.head_dim != m.config.num_heads * m.config.head_dim {
        let e = LoraAdapter::load(&ok, &m3.config, 16).expect_err("other base").to_string();
        assert!(e.contains("shape"), "{e}");
    }
}
