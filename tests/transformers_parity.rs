//! flint's models against transformers on the committed tiny fixtures
//! (scripts/make_fixtures.py): logits within 1e-4 in f32 and identical greedy continuations,
//! through the paged cache, with whole-prompt, chunked and token-by-token prefill.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use flint_models::{load, ForwardBatch, KvCache, LoadOptions, LoadedModel, LogitsRows, SeqInput};

const MODELS: [&str; 6] =
    ["llama-gqa-tied", "llama3-rope-scaled", "mistral", "qwen2", "qwen3", "llama-bf16-sharded"];

fn load_tiny(name: &str, dtype: DType) -> (LoadedModel, serde_json::Value, PathBuf) {
    let dir = common::fixtures().join("tiny").join(name);
    let opts = LoadOptions { device: Device::Cpu, dtype: Some(dtype), quantization: None };
    let model = load(&dir, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reference = common::read_json(&dir.join("reference.json"));
    (model, reference, dir)
}

/// Runs `ids` through the model in chunks of `chunk` tokens and returns the logits of every
/// position `[len, vocab]`.
fn logits_in_chunks(m: &LoadedModel, ids: &[u32], chunk: usize, block_size: usize) -> Tensor {
    let kv = KvCache::new(&m.model.kv_cache_spec(), ids.len().div_ceil(block_size) + 1, block_size, &Device::Cpu)
        .unwrap();
    // Use the blocks in reverse order so the table is not the identity.
    let table: Vec<u32> = (0..kv.num_blocks() as u32).rev().collect();
    let mut rows = Vec::new();
    for (i, piece) in ids.chunks(chunk).enumerate() {
        let seq = SeqInput { new_tokens: piece, num_computed: i * chunk, block_table: &table, logits: LogitsRows::All };
        let batch = ForwardBatch::new(&[seq], block_size, &Device::Cpu).unwrap();
        rows.push(m.model.forward(&batch, &kv).unwrap());
    }
    Tensor::cat(&rows, 0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

#[test]
fn logits_match_transformers_in_f32() {
    for name in MODELS {
        let (m, reference, dir) = load_tiny(name, DType::F32);
        let want = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
        for (i, case) in reference["logits_cases"].as_array().unwrap().iter().enumerate() {
            let ids = common::ids(&case["input_ids"]);
            let want = &want[&format!("case{i}")];
            for (chunk, bs) in [(ids.len(), 16), (5, 4), (1, 3)] {
                let got = logits_in_chunks(&m, &ids, chunk, bs);
                let diff = max_abs_diff(&got, want);
                assert!(diff <= 1e-4, "{name} case {i} (chunk {chunk}, block {bs}): max |diff| {diff}");
            }
        }
    }
}

/// Greedy decoding through the paged cache, one token per step after the prompt.
fn greedy(m: &LoadedModel, prompt: &[u32], n: usize, block_size: usize) -> Vec<u32> {
    let kv = KvCache::new(&m.model.kv_cache_spec(), (prompt.len() + n).div_ceil(block_size), block_size, &Device::Cpu)
        .unwrap();
    let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
    let mut out = Vec::new();
    let mut next_input = prompt.to_vec();
    let mut computed = 0;
    while out.len() < n {
        let seq = SeqInput { new_tokens: &next_input, num_computed: computed, block_table: &table, logits: LogitsRows::Last };
        let batch = ForwardBatch::new(&[seq], block_size, &Device::Cpu).unwrap();
        let logits: Vec<f32> = m.model.forward(&batch, &kv).unwrap().squeeze(0).unwrap().to_vec1().unwrap();
        let tok = flint_engine::sampling::argmax(&logits);
        computed += next_input.len();
        out.push(tok);
        next_input = vec![tok];
    }
    out
}

#[test]
fn greedy_continuations_match_transformers() {
    for name in MODELS {
        let (m, reference, _) = load_tiny(name, DType::F32);
        for case in reference["greedy_cases"].as_array().unwrap() {
            let prompt = common::ids(&case["prompt_ids"]);
            let want = common::ids(&case["output_ids"]);
            assert_eq!(greedy(&m, &prompt, want.len(), 4), want, "{name}: greedy from {prompt:?}");
        }
    }
}

#[test]
fn batched_sequences_match_their_single_runs() {
    // Two sequences of different models' worth of lengths in one varlen batch: a prefill
    // chunk and a decode token, sharing the cache through disjoint block tables.
    let (m, reference, dir) = load_tiny("qwen3", DType::F32);
    let want = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
    let cases = reference["logits_cases"].as_array().unwrap();
    let a = common::ids(&cases[2]["input_ids"]);
    let b = common::ids(&cases[1]["input_ids"]);
    let bs = 4;
    let kv = KvCache::new(&m.model.kv_cache_spec(), 16, bs, &Device::Cpu).unwrap();
    let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (8..16).collect());
    // Step 1: all of b but its last token, alone.
    let first = SeqInput { new_tokens: &b[..b.len() - 1], num_computed: 0, block_table: &tb, logits: LogitsRows::None };
    m.model.forward(&ForwardBatch::new(&[first], bs, &Device::Cpu).unwrap(), &kv).unwrap();
    // Step 2: a's whole prompt and b's last token together.
    let seqs = [
        SeqInput { new_tokens: &a, num_computed: 0, block_table: &ta, logits: LogitsRows::All },
        SeqInput { new_tokens: &b[b.len() - 1..], num_computed: b.len() - 1, block_table: &tb, logits: LogitsRows::Last },
    ];
    let out = m.model.forward(&ForwardBatch::new(&seqs, bs, &Device::Cpu).unwrap(), &kv).unwrap();
    let got_a = out.narrow(0, 0, a.len()).unwrap();
    let got_b = out.narrow(0, a.len(), 1).unwrap();
    let want_b = want["case1"].narrow(0, b.len() - 1, 1).unwrap();
    assert!(max_abs_diff(&got_a, &want["case2"]) <= 1e-4);
    assert!(max_abs_diff(&got_b, &want_b) <= 1e-4);
}

#[test]
fn bf16_and_f16_compute_stay_close_to_f32() {
    // Relative to the largest reference logit: bf16 keeps 8 mantissa bits, f16 11. The norms
    // round where HF's do in half precision (normalised value, then times the weight), which
    // costs f16 about 0.0055 here against the f32 reference.
    for (dtype, tol) in [(DType::BF16, 0.03), (DType::F16, 0.008)] {
        let (m, reference, dir) = load_tiny("llama-gqa-tied", dtype);
        let want = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
        let ids = common::ids(&reference["logits_cases"][2]["input_ids"]);
        let got = logits_in_chunks(&m, &ids, ids.len(), 16);
        assert_eq!(got.dtype(), DType::F32, "logits are always f32");
        let scale: f32 = want["case2"].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
        let diff = max_abs_diff(&got, &want["case2"]) / scale;
        assert!(diff <= tol, "{dtype:?}: max |diff| / max |logit| = {diff}");
        let argmax = |t: &Tensor| t.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let (a, b) = (argmax(&got), argmax(&want["case2"]));
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same * 10 >= a.len() * 9, "{dtype:?}: top-1 agrees on {same}/{} positions", a.len());
    }
}
