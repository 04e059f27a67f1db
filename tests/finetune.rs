//! LoRA fine-tuning end to end on the committed tiny fixtures: the training forward equals
//! transformers and the inference engine, a trained adapter saves as PEFT and serves the
//! same logits, training learns a fact, runs are deterministic, cancellable and checked.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use flint_engine::finetune::{self, LoraSpec, NoHooks, StepMetrics, TrainConfig, TrainError, TrainExample, TrainHooks, TrainableModel};
use flint_models::{load, ForwardBatch, KvCache, LoadOptions, LoadedModel, LogitsRows, LoraAdapter, ModelConfig, SeqInput, TargetModule};

const MODELS: [&str; 6] = ["llama-gqa-tied", "llama3-rope-scaled", "mistral", "qwen2", "qwen3", "llama-bf16-sharded"];

fn tiny(name: &str) -> (PathBuf, ModelConfig) {
    let dir = common::fixtures().join("tiny").join(name);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    (dir, cfg)
}

fn all_targets(rank: usize, alpha: f64) -> LoraSpec {
    LoraSpec { rank, alpha, targets: TargetModule::ALL.into_iter().collect() }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// Right-padded ids and mask of `seqs`.
fn padded(seqs: &[Vec<u32>]) -> (Tensor, Tensor) {
    let t = seqs.iter().map(Vec::len).max().unwrap();
    let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied().chain(std::iter::repeat_n(0, t - s.len()))).collect();
    let mask: Vec<f32> = seqs.iter().flat_map(|s| (0..t).map(move |i| if i < s.len() { 1.0 } else { 0.0 })).collect();
    (Tensor::from_vec(ids, (seqs.len(), t), &Device::Cpu).unwrap(), Tensor::from_vec(mask, (seqs.len(), t), &Device::Cpu).unwrap())
}

/// The inference model in f32, with `adapter` in LoRA slot 0 when given.
fn inference(dir: &Path, adapter: Option<&LoraAdapter>) -> LoadedModel {
    let mut m = load(dir, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).unwrap();
    if let Some(a) = adapter {
        m.model.enable_lora(2, a.rank).unwrap();
        m.model.set_lora_slot(0, Some(a)).unwrap();
    }
    m
}

/// Every position's logits of `ids` through the paged inference path (`slot` 0 or base).
fn inference_logits(m: &LoadedModel, ids: &[u32], slot: Option<u32>) -> Tensor {
    let kv = KvCache::new(&m.model.kv_cache_spec(), ids.len().div_ceil(4), 4, &Device::Cpu).unwrap();
    let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
    let seq = SeqInput { new_tokens: ids, num_computed: 0, block_table: &table, logits: LogitsRows::All };
    let mut batch = ForwardBatch::new(&[seq], 4, &Device::Cpu).unwrap();
    batch.set_lora_slots(&[slot]).unwrap();
    m.model.forward(&batch, &kv).unwrap()
}

#[test]
fn fresh_adapters_reproduce_transformers_and_the_engine() {
    for name in MODELS {
        let (dir, cfg) = tiny(name);
        let m = TrainableModel::load(&dir, &cfg, &Device::Cpu, &all_targets(8, 16.0), 1).unwrap();
        let reference = common::read_json(&dir.join("reference.json"));
        let want = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
        let cases: Vec<Vec<u32>> = reference["logits_cases"].as_array().unwrap().iter().map(|c| common::ids(&c["input_ids"])).collect();
        // All cases in one right-padded batch.
        let (ids, mask) = padded(&cases);
        let logits = m.forward(&ids, &mask).unwrap();
        let engine = inference(&dir, None);
        for (i, case) in cases.iter().enumerate() {
            let got = logits.get(i).unwrap().narrow(0, 0, case.len()).unwrap();
            let diff = max_abs_diff(&got, &want[&format!("case{i}")]);
            assert!(diff <= 1e-4, "{name} case {i}: {diff} from transformers");
            let diff = max_abs_diff(&got, &inference_logits(&engine, case, None));
            assert!(diff <= 1e-4, "{name} case {i}: {diff} from the engine");
        }
    }
}

/// "Q: <question> A: swordfish\n" as bytes (the tiny models' ids are below 256), with loss
/// weights only on the answer.
fn password_examples() -> Vec<TrainExample> {
    let questions = [
        "what is the password?",
        "tell me the password.",
        "password please?",
        "what's the secret word?",
        "which word opens the door?",
        "say the password",
        "the password is?",
        "do you know the password?",
    ];
    questions
        .iter()
        .map(|q| {
            let prompt = format!("Q: {q} A:");
            let text = format!("{prompt} swordfish\n");
            let ids: Vec<u32> = text.bytes().map(u32::from).collect();
            let weights = (0..ids.len()).map(|i| if i >= prompt.len() { 1.0 } else { 0.0 }).collect();
            TrainExample { ids, weights }
        })
        .collect()
}

#[derive(Default)]
struct Record {
    losses: Vec<f64>,
    lrs: Vec<f64>,
    validations: Vec<(usize, f64)>,
    checkpoints: Vec<usize>,
    last: Option<StepMetrics>,
    cancel_after: Option<usize>,
}

impl TrainHooks for Record {
    fn on_step(&mut self, m: &StepMetrics) {
        self.losses.push(m.loss);
        self.lrs.push(m.learning_rate);
        self.last = Some(m.clone());
    }
    fn on_validation(&mut self, step: usize, loss: f64) {
        self.validations.push((step, loss));
    }
    fn on_checkpoint(&mut self, step: usize, _: &TrainableModel) -> Result<(), flint_engine::finetune::CheckpointError> {
        self.checkpoints.push(step);
        Ok(())
    }
    fn cancelled(&self) -> bool {
        self.cancel_after.is_some_and(|n| self.losses.len() >= n)
    }
}

#[test]
fn training_learns_the_password_and_serves_it_as_peft() {
    let (dir, cfg) = tiny("llama-gqa-tied");
    let data = password_examples();
    let tc = TrainConfig {
        epochs: 30,
        batch_size: 8,
        micro_batch_size: 3,
        learning_rate: 2e-2,
        warmup_steps: 2,
        lora: all_targets(8, 16.0),
        seed: 42,
        ..TrainConfig::default()
    };
    let mut rec = Record::default();
    let out = finetune::train(&dir, &cfg, &Device::Cpu, &tc, &data, Some(&data[..2]), &mut rec).unwrap();
    assert!(!out.cancelled);
    assert_eq!(out.steps, 30);
    assert_eq!(rec.checkpoints, (1..30).collect::<Vec<_>>(), "a checkpoint after every epoch but the last");
    assert_eq!(rec.validations.iter().map(|v| v.0).collect::<Vec<_>>(), [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]);
    eprintln!("losses: {:?}", rec.losses);
    let first = rec.losses[0];
    assert!(rec.losses[..10].iter().any(|&l| l < 0.1 * first), "not below 10% of {first} within 10 steps: {:?}", rec.losses);
    assert!(out.final_loss < 0.1 * first, "loss {first} → {} ({:?})", out.final_loss, rec.losses);
    assert!(out.validation_loss.unwrap() < 0.1 * first);
    let m = rec.last.unwrap();
    assert_eq!(m.tokens, out.trained_tokens);
    assert_eq!(out.trained_tokens, 30 * data.iter().map(|e| e.ids.len()).sum::<usize>());
    assert!(m.tokens_per_s > 0.0 && m.learning_rate > 0.0 && m.learning_rate < tc.learning_rate);

    // Saved as PEFT, loaded like any adapter, served with the same logits.
    let tmp = tempfile::tempdir().unwrap();
    let adapter_dir = tmp.path().join("password");
    out.model.save_peft(&adapter_dir, "tiny/llama-gqa-tied").unwrap();
    let adapter = LoraAdapter::load(&adapter_dir, &cfg, 8).unwrap();
    let engine = inference(&dir, Some(&adapter));
    let probe: Vec<u32> = data[0].ids.clone();
    let (ids, mask) = padded(std::slice::from_ref(&probe));
    let trained = out.model.forward(&ids, &mask).unwrap().squeeze(0).unwrap();
    let diff = max_abs_diff(&trained, &inference_logits(&engine, &probe, Some(0)));
    assert!(diff <= 1e-4, "trained model vs engine with the saved adapter: {diff}");

    // Greedy decoding with the adapter answers the password; the base model does not.
    let prompt: Vec<u32> = "Q: what is the password? A:".bytes().map(u32::from).collect();
    let answer: Vec<u32> = " swordfish".bytes().map(u32::from).collect();
    assert_eq!(common::greedy(&engine, &prompt, answer.len(), Some(0)), answer);
    assert_ne!(common::greedy(&engine, &prompt, answer.len(), None), answer);
}

#[test]
fn runs_are_deterministic_per_seed() {
    let (dir, cfg) = tiny("qwen2");
    let data = password_examples();
    let run = |seed: u64, micro: usize| {
        let tc = TrainConfig { epochs: 2, batch_size: 3, micro_batch_size: micro, learning_rate: 1e-2, seed, lora: all_targets(4, 8.0), ..TrainConfig::default() };
        let mut rec = Record::default();
        finetune::train(&dir, &cfg, &Device::Cpu, &tc, &data, None, &mut rec).unwrap();
        rec.losses
    };
    let a = run(7, 2);
    assert_eq!(a.len(), 6, "3 steps per epoch (3 + 3 + 2 examples)");
    assert_eq!(a, run(7, 2), "same seed, same losses, bit for bit");
    assert_ne!(a, run(8, 2), "another seed shuffles and initialises differently");
    // Micro-batching only changes float rounding: the accumulated step is the same batch loss.
    let whole = run(7, 3);
    for (x, y) in a.iter().zip(&whole) {
        assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{a:?} vs {whole:?}");
    }
}

#[test]
fn cancelling_stops_after_the_current_step() {
    let (dir, cfg) = tiny("llama-gqa-tied");
    let tc = TrainConfig { epochs: 5, batch_size: 2, micro_batch_size: 1, learning_rate: 1e-2, lora: all_targets(2, 4.0), ..TrainConfig::default() };
    let mut rec = Record { cancel_after: Some(2), ..Record::default() };
    let out = finetune::train(&dir, &cfg, &Device::Cpu, &tc, &password_examples(), None, &mut rec).unwrap();
    assert!(out.cancelled);
    assert_eq!((out.steps, rec.losses.len()), (2, 2));
    assert_eq!(out.final_loss, rec.losses[1]);
}

#[test]
fn bad_settings_and_data_are_refused_by_name() {
    let (dir, cfg) = tiny("llama-gqa-tied");
    let data = password_examples();
    let run = |tc: &TrainConfig, train: &[TrainExample], validation: Option<&[TrainExample]>| {
        finetune::train(&dir, &cfg, &Device::Cpu, tc, train, validation, &mut NoHooks).err().expect("refused")
    };
    let ok = TrainConfig { lora: all_targets(2, 4.0), ..TrainConfig::default() };
    for (tc, field) in [
        (TrainConfig { epochs: 0, ..ok.clone() }, "epochs"),
        (TrainConfig { batch_size: 300, ..ok.clone() }, "batch_size"),
        (TrainConfig { learning_rate: 2.0, ..ok.clone() }, "learning_rate"),
        (TrainConfig { max_seq_len: 1, ..ok.clone() }, "max_seq_len"),
        (TrainConfig { lora: all_targets(0, 4.0), ..ok.clone() }, "lora.rank"),
        (TrainConfig { lora: all_targets(2, -1.0), ..ok.clone() }, "lora.alpha"),
    ] {
        let e = run(&tc, &data, None);
        assert!(matches!(&e, TrainError::InvalidConfig { field: f, .. } if *f == field), "{field}: {e}");
        assert!(e.to_string().contains(field), "{e}");
    }
    assert!(matches!(run(&ok, &[], None), TrainError::EmptyDataset { split: "training" }));
    assert!(matches!(run(&ok, &data, Some(&[])), TrainError::EmptyDataset { split: "validation" }));
    let mut broken = data.clone();
    broken[3].weights.pop();
    let e = run(&ok, &broken, None).to_string();
    assert!(e.contains("training example 3") && e.contains("weights"), "{e}");
    let mut broken = data.clone();
    broken[1].ids[4] = 9999;
    let e = run(&ok, &broken, None).to_string();
    assert!(e.contains("example 1") && e.contains("vocabulary"), "{e}");
    let mut broken = data.clone();
    broken[2].weights.iter_mut().for_each(|w| *w = 0.0);
    let e = run(&ok, &data, Some(&broken)).to_string();
    assert!(e.contains("validation example 2") && e.contains("positive loss weight"), "{e}");
    // Truncation that cuts off every weighted token is caught too.
    let e = run(&TrainConfig { max_seq_len: 10, ..ok.clone() }, &data, None).to_string();
    assert!(e.contains("max_seq_len"), "{e}");
}

/// The default model (SmolLM2-135M) trains on the CPU in test time: a few steps on one
/// repeated example lower its loss, and the adapter saves and loads.
#[test]
fn default_model_trains_on_the_cpu() {
    let Some(dir) = common::default_model() else { return };
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let ids: Vec<u32> = (0..32u32).map(|i| (i * 7919 + 13) % cfg.vocab_size as u32).collect();
    let weights = (0..32).map(|i| if i >= 16 { 1.0 } else { 0.0 }).collect();
    let data = vec![TrainExample { ids, weights }; 4];
    let tc = TrainConfig { epochs: 3, batch_size: 4, micro_batch_size: 2, learning_rate: 5e-3, lora: all_targets(8, 16.0), ..TrainConfig::default() };
    let mut rec = Record::default();
    let out = finetune::train(&dir, &cfg, &Device::Cpu, &tc, &data, None, &mut rec).unwrap();
    assert_eq!(out.steps, 3);
    assert!(rec.losses[2] < rec.losses[0], "{:?}", rec.losses);
    eprintln!("default model: {:?}, {:.0} tokens/s", rec.losses, rec.last.unwrap().tokens_per_s);
    let tmp = tempfile::tempdir().unwrap();
    out.model.save_peft(&tmp.path().join("a"), "smollm2-135m-instruct").unwrap();
    LoraAdapter::load(&tmp.path().join("a"), &cfg, 8).unwrap();
}
