//! The fixed recipe behind tests/fixtures/ft/: what flint trains on each tiny fixture model
//! to produce the adapters that scripts/make_ft_fixtures.py checks with Hugging Face peft.
//! Shared by the generator (`cargo run --release --example ft_fixture`) and by
//! tests/ft_peft_roundtrip.rs, which retrains with it and compares against the committed
//! adapters; change it only together with the fixtures (rerun the script).

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::Device;
use flint_engine::finetune::{self, LoraSpec, LrSchedule, StepMetrics, TrainConfig, TrainExample, TrainHooks, TrainOutcome};
use flint_models::{ModelConfig, TargetModule};

/// The tiny fixture models (tests/fixtures/tiny/<arch>) an adapter is trained for.
pub const ARCHS: [&str; 2] = ["llama-gqa-tied", "qwen2"];

/// Byte-level (prompt, completion) pairs: the tiny models' ids are below 256, so a text's
/// UTF-8 bytes are its token ids. The loss is on the completion only.
pub const EXAMPLES: [(&str, &str); 6] = [
    ("Q: what is flint? A:", " a hard stone\n"),
    ("Q: what sparks on steel? A:", " flint\n"),
    ("Q: is flint soft? A:", " no, it is hard\n"),
    ("Q: what colour is flint? A:", " grey or black\n"),
    ("Q: where is flint found? A:", " in chalk\n"),
    ("Q: what were flint tools? A:", " knives and axes\n"),
];

/// llama-gqa-tied trains a subset of the projections (attention q/v/o and the MLP's down),
/// qwen2 (q/k/v biases) all seven.
pub fn targets(arch: &str) -> BTreeSet<TargetModule> {
    match arch {
        "llama-gqa-tied" => [TargetModule::Q, TargetModule::V, TargetModule::O, TargetModule::Down].into_iter().collect(),
        _ => TargetModule::ALL.into_iter().collect(),
    }
}

/// Two epochs of two steps (3 examples per step, micro-batches of 2 and 1) at a learning
/// rate high enough that B moves well away from its zero initialisation.
pub fn train_config(arch: &str) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 3,
        micro_batch_size: 2,
        learning_rate: 2e-2,
        warmup_steps: 0,
        schedule: LrSchedule::Linear,
        weight_decay: 0.0,
        max_seq_len: 64,
        seed: 20_240_917,
        lora: LoraSpec { rank: 8, alpha: 16.0, targets: targets(arch) },
    }
}

pub fn examples() -> Vec<TrainExample> {
    EXAMPLES
        .iter()
        .map(|(prompt, completion)| {
            let ids: Vec<u32> = format!("{prompt}{completion}").bytes().map(u32::from).collect();
            let weights = (0..ids.len()).map(|i| if i >= prompt.len() { 1.0 } else { 0.0 }).collect();
            TrainExample { ids, weights }
        })
        .collect()
}

/// `base_model_name_or_path` of the saved adapter (relative to the repository root).
pub fn base_model_name(arch: &str) -> String {
    format!("tests/fixtures/tiny/{arch}")
}

pub fn base_dir(fixtures: &Path, arch: &str) -> PathBuf {
    fixtures.join("tiny").join(arch)
}

/// tests/fixtures/ft/<arch>: adapter/, train.json (this recipe and the losses, written by the
/// generator), reference.json and reference_logits.safetensors (peft, written by the script).
pub fn ft_dir(fixtures: &Path, arch: &str) -> PathBuf {
    fixtures.join("ft").join(arch)
}

/// Records the loss of every step.
#[derive(Default)]
pub struct Losses(pub Vec<f64>);

impl TrainHooks for Losses {
    fn on_step(&mut self, m: &StepMetrics) {
        self.0.push(m.loss);
    }
    fn on_validation(&mut self, _: usize, _: f64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// Trains `arch`'s adapter on the CPU; returns the outcome and the per-step losses.
pub fn train(fixtures: &Path, arch: &str) -> anyhow::Result<(TrainOutcome, Vec<f64>)> {
    let dir = base_dir(fixtures, arch);
    let cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    let mut losses = Losses::default();
    let out = finetune::train(&dir, &cfg, &Device::Cpu, &train_config(arch), &examples(), None, &mut losses)?;
    anyhow::ensure!(!out.cancelled && out.steps == losses.0.len(), "{arch}: incomplete run");
    Ok((out, losses.0))
}

/// The recipe as JSON (train.json), for the Python side and for people.
pub fn describe(arch: &str, losses: &[f64]) -> serde_json::Value {
    let tc = train_config(arch);
    let targets: Vec<&str> = tc.lora.targets.iter().map(|m| m.name()).collect();
    serde_json::json!({
        "base": base_model_name(arch),
        "generator": "cargo run --release --example ft_fixture (examples/ft_fixture/recipe.rs)",
        "notes": "token ids are the UTF-8 bytes of prompt + completion; loss weight 1 on the completion's tokens, 0 on the prompt's",
        "examples": EXAMPLES.iter().map(|(p, c)| serde_json::json!({"prompt": p, "completion": c})).collect::<Vec<_>>(),
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "micro_batch_size": tc.micro_batch_size,
        "learning_rate": tc.learning_rate,
        "warmup_steps": tc.warmup_steps,
        "schedule": format!("{:?}", tc.schedule).to_lowercase(),
        "weight_decay": tc.weight_decay,
        "max_seq_len": tc.max_seq_len,
        "seed": tc.seed,
        "lora": {"r": tc.lora.rank, "lora_alpha": tc.lora.alpha, "target_modules": targets},
        "losses": losses,
    })
}
