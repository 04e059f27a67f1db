//! Quantized bases: a GGUF served as it is stored equals its dequantized conversion up to the
//! 8-bit activations, in-situ quantization of a safetensors model stays close to it, LoRA
//! adapters (per request, mixed batches) add the same deltas on a quantized base as on the f32
//! one, and fine-tuning loads a GGUF base (dequantized, frozen).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use flint_models::gguf::{self, ConvertOptions, OutDType, QuantType, QuantizeOptions};
use flint_models::{load, LoadOptions, LoadedModel, LoraAdapter, LoraSpec, TargetModule, TrainableModel};

fn opts(q: Option<QuantType>) -> LoadOptions {
    LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: q }
}

fn convert(gguf_file: &Path, out: &Path, keep_quantized: bool) {
    let o = ConvertOptions { dtype: OutDType::F32, progress: false, keep_quantized };
    gguf::convert(gguf_file, out, &o).unwrap_or_else(|e| panic!("{}: {e}", gguf_file.display()));
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    let d: f32 = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    d / scale.max(1e-6)
}

fn argmaxes(t: &Tensor) -> Vec<u32> {
    t.argmax(1).unwrap().to_vec1().unwrap()
}

/// The synthetic 2-layer llama GGUF (F32 and Q8_0 tensors) in a temporary directory.
fn tiny_gguf() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.gguf");
    std::fs::write(&file, gguf::testing::tiny_llama_gguf()).unwrap();
    (dir, file)
}

const PROMPT: [u32; 12] = [1, 17, 42, 99, 3, 250, 8, 61, 77, 5, 140, 33];

#[test]
fn a_gguf_served_as_stored_matches_its_dequantized_conversion() {
    let (dir, file) = tiny_gguf();
    convert(&file, &dir.path().join("q"), true);
    convert(&file, &dir.path().join("f32"), false);
    assert!(dir.path().join("q").join(gguf::GGUF_LINK).exists());
    assert!(!dir.path().join("q").join("model.safetensors").exists(), "no dequantized copy is written");
    let q = load(&dir.path().join("q"), &opts(None)).unwrap();
    assert!(q.quantization.as_deref().is_some_and(|s| s.starts_with("gguf")), "{:?}", q.quantization);
    let f = load(&dir.path().join("f32"), &opts(None)).unwrap();
    let vocab = q.config.vocab_size as u32;
    let prompt: Vec<u32> = PROMPT.iter().map(|t| t % vocab).collect();
    let (lq, lf) = (&common::batch_logits(&q, &[(prompt.clone(), None)])[0], &common::batch_logits(&f, &[(prompt.clone(), None)])[0]);
    let err = max_rel(lq, lf);
    assert!(err < 0.03, "quantized vs dequantized logits: {err}");
    // The weights are the same numbers: only the 8-bit activations differ, so the top token
    // agrees wherever the dequantized model is not near a tie (random weights: small margins).
    for (pos, (a, b)) in argmaxes(lq).iter().zip(argmaxes(lf)).enumerate() {
        let row: Vec<f32> = lf.get(pos).unwrap().to_vec1().unwrap();
        let mut sorted = row.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        if sorted[0] - sorted[1] > 0.05 * sorted[0].abs().max(1.0) {
            assert_eq!(*a, b, "position {pos}");
        }
    }
}

/// Every `flint quantize` type of a tiny fixture loads, served as stored, and computes what
/// the same file dequantized to f32 computes up to the 8-bit activations (a wrong block layout,
/// row permutation or type would be far off); in-situ quantization of the checkpoint picks the
/// same types and stays within the type's error of the f32 model. (The comparison with
/// llama.cpp on the real model is tests/quant_fidelity.rs.)
#[test]
fn every_quantize_type_is_served_as_its_dequantized_weights() {
    let base = common::fixtures().join("tiny").join("llama-gqa-tied");
    let src = common::tiny_model_with_tokenizer("llama-gqa-tied");
    let f = load(&base, &opts(None)).unwrap();
    let prompt = PROMPT.to_vec();
    let dense = common::batch_logits(&f, &[(prompt.clone(), None)]).remove(0);
    for qtype in ["q8_0", "q6_k", "q5_1", "q5_0", "q4_1", "q4_0", "q4_k", "q3_k", "q2_k"] {
        let qt: QuantType = qtype.parse().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("m.{qtype}.gguf"));
        gguf::quantize(src.path(), &file, &QuantizeOptions { qtype: qt, progress: false }).unwrap_or_else(|e| panic!("{qtype}: {e}"));
        convert(&file, &dir.path().join("q"), true);
        convert(&file, &dir.path().join("f"), false);
        let q = load(&dir.path().join("q"), &opts(None)).unwrap_or_else(|e| panic!("{qtype}: {e}"));
        let deq = load(&dir.path().join("f"), &opts(None)).unwrap();
        let want = common::batch_logits(&deq, &[(prompt.clone(), None)]).remove(0);
        let err = max_rel(&common::batch_logits(&q, &[(prompt.clone(), None)])[0], &want);
        assert!(err < 0.1, "{qtype}: served as stored vs its dequantized weights: {err}");
        let isq = load(&base, &opts(Some(qt))).unwrap();
        assert!(isq.quantization.as_deref().is_some_and(|s| s.starts_with("in-situ")));
        let isq_err = max_rel(&common::batch_logits(&isq, &[(prompt.clone(), None)])[0], &dense);
        eprintln!("{qtype}: as stored vs dequantized {err:.4}; in-situ vs f32 {isq_err:.4}");
        assert!(isq_err < 1.0, "{qtype}: in-situ quantization is off by {isq_err}");
    }
}

fn with_adapters(m: &mut LoadedModel, names: &[&str]) {
    m.model.enable_lora(4, 16).unwrap();
    let dir = common::fixtures().join("lora").join("llama-gqa-tied");
    for (slot, name) in names.iter().enumerate() {
        let a = LoraAdapter::load(&dir.join(name), &m.config, 16).unwrap_or_else(|e| panic!("{name}: {e}"));
        m.model.set_lora_slot(slot, Some(&a)).unwrap();
    }
}

#[test]
fn lora_on_a_quantized_base_adds_the_same_deltas() {
    let base = common::fixtures().join("tiny").join("llama-gqa-tied");
    let names = ["attn-r8", "all-r16-rslora", "mlp-r4"];
    let mut f = load(&base, &opts(None)).unwrap();
    let mut q = load(&base, &opts(Some(QuantType::Q8_0))).unwrap();
    with_adapters(&mut f, &names);
    with_adapters(&mut q, &names);
    let prompt = PROMPT.to_vec();
    let base_f = &common::batch_logits(&f, &[(prompt.clone(), None)])[0];
    let base_q = &common::batch_logits(&q, &[(prompt.clone(), None)])[0];
    // One batch mixing every adapter and the base, on the quantized model.
    let mixed: Vec<(Vec<u32>, Option<u32>)> =
        (0..names.len() as u32).map(|s| (prompt.clone(), Some(s))).chain([(prompt.clone(), None)]).collect();
    let batch = common::batch_logits(&q, &mixed);
    for (slot, name) in names.iter().enumerate() {
        let solo = &common::batch_logits(&q, &[(prompt.clone(), Some(slot as u32))])[0];
        assert!(max_rel(&batch[slot], solo) < 1e-5, "{name}: mixed batch differs from its solo run");
        let delta_q = (solo - base_q).unwrap();
        let delta_f = (&common::batch_logits(&f, &[(prompt.clone(), Some(slot as u32))])[0] - base_f).unwrap();
        let err = max_rel(&delta_q, &delta_f);
        assert!(err < 0.1, "{name}: the adapter's delta on the q8_0 base is off by {err}");
    }
    assert!(max_rel(&batch[names.len()], base_q) < 1e-5, "the base row of the mixed batch");
}

#[test]
fn fine_tuning_loads_a_gguf_base_dequantized() {
    let (dir, file) = tiny_gguf();
    convert(&file, &dir.path().join("q"), true);
    let served = load(&dir.path().join("q"), &opts(None)).unwrap();
    let spec = LoraSpec { rank: 4, alpha: 8.0, targets: BTreeSet::from([TargetModule::Q, TargetModule::V]) };
    let t = TrainableModel::load(&dir.path().join("q"), &served.config, &Device::Cpu, &spec, 7).unwrap();
    let vocab = served.config.vocab_size as u32;
    let prompt: Vec<u32> = PROMPT.iter().map(|t| t % vocab).collect();
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = Tensor::ones((1, prompt.len()), DType::F32, &Device::Cpu).unwrap();
    // B = 0: the trainable model starts as the (dequantized) base the server runs.
    let trained = t.forward(&ids, &mask).unwrap().squeeze(0).unwrap();
    let serving = &common::batch_logits(&served, &[(prompt, None)])[0];
    assert!(max_rel(&trained, serving) < 0.03, "{}", max_rel(&trained, serving));
}
