use std::path::PathBuf;

use super::*;
use crate::{load, ForwardBatch, KvCache, LoadOptions, LogitsRows, LoraAdapter, SeqInput};

fn tiny(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny").join(name)
}

fn all_targets(rank: usize) -> LoraSpec {
    LoraSpec { rank, alpha: 2.0 * rank as f64, targets: TargetModule::ALL.into_iter().collect() }
}

fn trainable(name: &str, spec: &LoraSpec, seed: u64) -> TrainableModel {
    let dir = tiny(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    TrainableModel::load(&dir, &cfg, &Device::Cpu, spec, seed).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Inference logits of every position of `ids` through the paged path.
fn inference_logits(name: &str, ids: &[u32], adapter: Option<&LoraAdapter>) -> Tensor {
    let mut m = load(&tiny(name), &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).unwrap();
    if let Some(a) = adapter {
        m.model.enable_lora(1, a.rank).unwrap();
        m.model.set_lora_slot(0, Some(a)).unwrap();
    }
    let kv = KvCache::new(&m.model.kv_cache_spec(), ids.len().div_ceil(4), 4, &Device::Cpu).unwrap();
    let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
    let seq = SeqInput { new_tokens: ids, num_computed: 0, block_table: &table, logits: LogitsRows::All };
    let mut batch = ForwardBatch::new(&[seq], 4, &Device::Cpu).unwrap();
    if adapter.is_some() {
        batch.set_lora_slots(&[Some(0)]).unwrap();
    }
    m.model.forward(&batch, &kv).unwrap()
}

fn ids_and_mask(rows: &[&[u32]]) -> (Tensor, Tensor) {
    let t = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        ids.extend(r.iter().copied().chain(std::iter::repeat_n(0, t - r.len())));
        mask.extend((0..t).map(|i| if i < r.len() { 1f32 } else { 0.0 }));
    }
    (Tensor::from_vec(ids, (rows.len(), t), &Device::Cpu).unwrap(), Tensor::from_vec(mask, (rows.len(), t), &Device::Cpu).unwrap())
}

#[test]
fn fresh_adapter_matches_inference_and_padding_changes_nothing() {
    let long: &[u32] = &[5, 17, 99, 3, 44, 120, 7, 8, 9, 200, 31];
    let short: &[u32] = &[250, 1, 60, 2];
    for name in ["llama-gqa-tied", "qwen3"] {
        let m = trainable(name, &all_targets(4), 1);
        let (ids, mask) = ids_and_mask(&[long, short]);
        let logits = m.forward(&ids, &mask).unwrap();
        for (b, seq) in [long, short].into_iter().enumerate() {
            let got = logits.get(b).unwrap().narrow(0, 0, seq.len()).unwrap();
            let diff = max_abs_diff(&got, &inference_logits(name, seq, None));
            assert!(diff < 1e-4, "{name} row {b}: {diff}");
        }
    }
}

/// The hand-written backward passes, end to end: the gradient of one LoRA B entry agrees with
/// a central finite difference of the loss.
#[test]
fn gradients_match_finite_differences() {
    let m = trainable("qwen2", &all_targets(2), 3);
    // Make B non-zero so gradients reach A too.
    for v in m.vars() {
        let n = v.elem_count();
        let data: Vec<f32> = (0..n).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.01).collect();
        v.set(&Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let (ids, mask) = ids_and_mask(&[&[3, 9, 27, 81, 243, 5], &[7, 49, 100]]);
    let rows = Tensor::new(&[0u32, 1, 2, 3, 4, 6, 7], &Device::Cpu).unwrap();
    let targets = Tensor::new(&[9u32, 27, 81, 243, 5, 49, 100], &Device::Cpu).unwrap();
    let weights = Tensor::new(&[1f32, 0.5, 1.0, 2.0, 1.0, 1.0, 1.0], &Device::Cpu).unwrap();
    let loss = |grad: bool| m.weighted_nll(&ids, &mask, &rows, &targets, &weights, grad).unwrap();
    let grads = loss(true).backward().unwrap();
    let vars = m.vars();
    // Layer 0's q_proj A (gradient through every later layer) and the last down_proj B.
    for (vi, idx) in [(0usize, 5usize), (vars.len() - 1, 3)] {
        let v = &vars[vi];
        let g: Vec<f32> = grads.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let eps = 1e-2f32;
        let at = |delta: f32| {
            let mut p = base.clone();
            p[idx] += delta;
            v.set(&Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap()).unwrap();
            loss(false).to_scalar::<f32>().unwrap()
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * eps);
        v.set(&Tensor::from_vec(base, v.shape(), &Device::Cpu).unwrap()).unwrap();
        assert!(g[idx].abs() > 1e-2, "var {vi}[{idx}]: a gradient too small to check ({})", g[idx]);
        assert!((fd - g[idx]).abs() <= 2e-3 + 2e-2 * fd.abs(), "var {vi}[{idx}]: autograd {} vs finite difference {fd}", g[idx]);
    }
}

#[test]
fn init_is_seeded_and_peft_shaped() {
    let spec = LoraSpec { rank: 8, alpha: 16.0, targets: [TargetModule::Q, TargetModule::Down].into_iter().collect() };
    let a = trainable("llama-gqa-tied", &spec, 7);
    let b = trainable("llama-gqa-tied", &spec, 7);
    let c = trainable("llama-gqa-tied", &spec, 8);
    let flat = |m: &TrainableModel| -> Vec<f32> { m.vars().iter().flat_map(|v| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect() };
    assert_eq!(flat(&a), flat(&b));
    assert_ne!(flat(&a), flat(&c));
    let vars = a.vars();
    assert_eq!(vars.len(), 2 * 2 * a.config().num_layers, "A and B per target per layer");
    let (d_in, _) = TargetModule::Q.dims(a.config());
    assert_eq!(vars[0].dims(), [8, d_in]);
    let bound = 1.0 / (d_in as f32).sqrt();
    let a0: Vec<f32> = vars[0].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert!(a0.iter().all(|x| x.abs() <= bound) && a0.iter().any(|x| x.abs() > bound * 0.9));
    let b0: Vec<f32> = vars[1].as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    assert!(b0.iter().all(|&x| x == 0.0));
}

#[test]
fn saved_adapter_loads_and_serves_the_same_logits() {
    let spec = LoraSpec { rank: 4, alpha: 8.0, targets: [TargetModule::V, TargetModule::O, TargetModule::Up].into_iter().collect() };
    let m = trainable("llama-gqa-tied", &spec, 11);
    for v in m.vars() {
        let n = v.elem_count();
        let data: Vec<f32> = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.02).collect();
        v.set(&Tensor::from_vec(data, v.shape(), &Device::Cpu).unwrap()).unwrap();
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("adapter");
    m.save_peft(&dir, "tiny/llama").unwrap();
    let err = m.save_peft(&dir, "tiny/llama").unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1, "no partial directories are left behind");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["o_proj", "up_proj", "v_proj"]));
    assert_eq!(cfg["base_model_name_or_path"], "tiny/llama");
    let adapter = LoraAdapter::load(&dir, m.config(), 4).unwrap();
    assert_eq!((adapter.rank, adapter.scale), (4, 2.0));
    let ids: &[u32] = &[12, 200, 3, 77, 5, 150, 9];
    let (t, mask) = ids_and_mask(&[ids]);
    let got = m.forward(&t, &mask).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&got, &inference_logits("llama-gqa-tied", ids, Some(&adapter)));
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn bad_specs_and_inputs_are_refused() {
    let dir = tiny("llama-gqa-tied");
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let bad = |spec: LoraSpec| TrainableModel::load(&dir, &cfg, &Device::Cpu, &spec, 0).err().expect("refused").to_string();
    assert!(bad(LoraSpec { rank: 0, ..all_targets(1) }).contains("lora.rank"));
    assert!(bad(LoraSpec { alpha: f64::NAN, ..all_targets(1) }).contains("lora.alpha"));
    assert!(bad(LoraSpec { targets: BTreeSet::new(), ..all_targets(1) }).contains("lora.targets"));
    let m = trainable("llama-gqa-tied", &all_targets(1), 0);
    let ids = Tensor::zeros((1, 300), DType::U32, &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 300), DType::F32, &Device::Cpu).unwrap();
    assert!(m.forward(&ids, &mask).unwrap_err().to_string().contains("max_position_embeddings"));
}

#[test]
fn splitmix_is_stable() {
    // Reference values of SplitMix64 seeded with 0 (as in the paper's Java reference).
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
    assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    let mut v: Vec<u32> = (0..10).collect();
    SplitMix64::new(5).shuffle(&mut v);
    let mut sorted = v.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_ne!(v, sorted);
}
