//! Adapters trained by flint, round-tripped through Hugging Face peft: the committed
//! adapters of tests/fixtures/ft/<arch>/ were trained by flint's own fine-tuning
//! (examples/ft_fixture, recipe in examples/ft_fixture/recipe.rs) and saved with
//! `TrainableModel::save_peft`; scripts/make_ft_fixtures.py loaded them with
//! `PeftModel.from_pretrained` and recorded peft's logits. Here flint serves the same adapters
//! and must give peft's logits, and retraining with the recipe must reproduce the committed
//! adapters, so they are flint's output and training is deterministic.

mod common;
#[path = "../examples/ft_fixture/recipe.rs"]
mod recipe;

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use flint_models::{load, LoadOptions, LoraAdapter, ModelConfig};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

/// The logits cases of ft/<arch>/reference.json and peft's logits for them.
fn peft_reference(arch: &str) -> (serde_json::Value, Vec<(Vec<u32>, Tensor)>) {
    let dir = recipe::ft_dir(&common::fixtures(), arch);
    let reference = common::read_json(&dir.join("reference.json"));
    let want = candle_core::safetensors::load(dir.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
    let cases = reference["logits_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, c)| (common::ids(&c["input_ids"]), want[&format!("case{i}")].clone()))
        .collect();
    (reference, cases)
}

#[test]
fn flint_serves_its_trained_adapters_with_peft_logits() {
    for arch in recipe::ARCHS {
        let fixtures = common::fixtures();
        let base = recipe::base_dir(&fixtures, arch);
        let mut m = load(&base, &LoadOptions { device: Device::Cpu, dtype: Some(DType::F32), quantization: None }).unwrap();
        let adapter = LoraAdapter::load(&recipe::ft_dir(&fixtures, arch).join("adapter"), &m.config, 8).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let tc = recipe::train_config(arch);
        assert_eq!((adapter.rank, adapter.scale, &adapter.targets), (8, 2.0, &tc.lora.targets), "{arch}: adapter settings");
        m.model.enable_lora(2, 8).unwrap();
        m.model.set_lora_slot(0, Some(&adapter)).unwrap();

        let (reference, cases) = peft_reference(arch);
        assert_eq!(reference["r"], 8);
        assert_eq!(cases.len(), 5, "{arch}: 3 base cases + 2 training examples");
        // Every case with the adapter in one batch, plus the first base case without it.
        let base_cases = candle_core::safetensors::load(base.join("reference_logits.safetensors"), &Device::Cpu).unwrap();
        let mut seqs: Vec<(Vec<u32>, Option<u32>)> = cases.iter().map(|(ids, _)| (ids.clone(), Some(0))).collect();
        seqs.push((cases[0].0.clone(), None));
        let got = common::batch_logits(&m, &seqs);
        let mut worst = 0f32;
        for (i, (_, want)) in cases.iter().enumerate() {
            let diff = max_abs_diff(&got[i], want);
            assert!(diff <= 1e-4, "{arch} case {i}: flint differs from peft by {diff}");
            worst = worst.max(diff);
            if let Some(base_logits) = base_cases.get(&format!("case{i}")) {
                let change = max_abs_diff(want, base_logits);
                assert!(change > 1e-1, "{arch} case {i}: the adapter changes the logits by only {change}");
            }
        }
        let diff = max_abs_diff(&got[cases.len()], &base_cases["case0"]);
        assert!(diff <= 1e-4, "{arch}: the base sequence beside the adapter's differs by {diff}");
        eprintln!("{arch}: flint vs peft, max |logit diff| {worst:e}");
    }
}

#[test]
fn retraining_reproduces_the_committed_adapters() {
    for arch in recipe::ARCHS {
        let fixtures = common::fixtures();
        let dir = recipe::ft_dir(&fixtures, arch);
        let committed = common::read_json(&dir.join("train.json"));
        let committed_losses: Vec<f64> = committed["losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap()).collect();
        assert_eq!(
            recipe::describe(arch, &committed_losses),
            committed,
            "{arch}: the recipe changed since the fixtures were made; run scripts/make_ft_fixtures.py"
        );

        let (out, losses) = recipe::train(&fixtures, arch).unwrap();
        assert_eq!(losses.len(), committed_losses.len());
        for (got, want) in losses.iter().zip(&committed_losses) {
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{arch}: losses {losses:?}, committed {committed_losses:?}");
        }

        let want = candle_core::safetensors::load(dir.join("adapter").join("adapter_model.safetensors"), &Device::Cpu).unwrap();
        let got = out.model.adapter_tensors().unwrap();
        assert_eq!(got.keys().collect::<BTreeSet<_>>(), want.keys().collect::<BTreeSet<_>>(), "{arch}: tensor names");
        let mut worst = 0f32;
        for (name, t) in &got {
            assert_eq!(t.dims(), want[name].dims(), "{arch}: {name}");
            let diff = max_abs_diff(t, &want[name]);
            assert!(diff <= 1e-5, "{arch}: {name} differs from the committed adapter by {diff}");
            worst = worst.max(diff);
            if name.contains(".lora_B.") {
                let max: f32 = t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
                assert!(max > 1e-2, "{arch}: {name} stayed near its zero initialisation ({max})");
            }
        }

        // Saved again, the adapter directory has the committed config.
        let tmp = tempfile::tempdir().unwrap();
        out.model.save_peft(&tmp.path().join("adapter"), &recipe::base_model_name(arch)).unwrap();
        assert_eq!(
            common::read_json(&tmp.path().join("adapter").join("adapter_config.json")),
            common::read_json(&dir.join("adapter").join("adapter_config.json")),
            "{arch}: adapter_config.json"
        );

        // The retrained model itself (the training forward) gives peft's logits too.
        let (_, cases) = peft_reference(arch);
        let mut worst_logits = 0f32;
        for (i, (ids, want)) in cases.iter().enumerate() {
            let t = ids.len();
            let x = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu).unwrap();
            let mask = Tensor::ones((1, t), DType::F32, &Device::Cpu).unwrap();
            let logits = out.model.forward(&x, &mask).unwrap().squeeze(0).unwrap();
            let diff = max_abs_diff(&logits, want);
            assert!(diff <= 1e-4, "{arch} case {i}: the retrained model differs from peft by {diff}");
            worst_logits = worst_logits.max(diff);
        }
        let cfg = ModelConfig::from_file(&recipe::base_dir(&fixtures, arch).join("config.json")).unwrap();
        assert_eq!(out.model.config().vocab_size, cfg.vocab_size);
        eprintln!("{arch}: retrained adapter vs committed, max |diff| {worst:e}; its logits vs peft {worst_logits:e}; losses {losses:?}");
    }
}
