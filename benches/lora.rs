//! Aggregate output tokens/s with 0, 1, 4 and 16 distinct LoRA adapters (r=16 on all seven
//! projections, random weights) spread over 16 concurrent requests, on the default model
//! (CPU by default). Every run uses the same LoRA-enabled engine, so "0 adapters" is the base
//! model's throughput under identical settings; the goal is >= 80 % of it with 16 adapters.
//!
//! `cargo bench --bench lora` — needs the default model (`scripts/default-model.sh`);
//! FLINT_BENCH_MODEL=DIR benches another model directory. 32-token prompts, 32 output tokens
//! each (EOS ignored), prefix caching off.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::model_dir;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flint_engine::{
    models::{Device, LoadOptions, ModelConfig, Tensor, TargetModule},
    EngineConfig, EngineHandle, LoraSettings, SamplingParams,
};

const PROMPT: usize = 32;
const OUTPUT: usize = 32;
const REQUESTS: usize = 16;
const RANK: usize = 16;

/// Writes a PEFT-layout adapter with deterministic random weights into `dir`.
fn write_adapter(dir: &Path, cfg: &ModelConfig, seed: u64) {
    std::fs::create_dir_all(dir).expect("adapter dir");
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5) * 0.02
            })
            .collect()
    };
    let mut tensors = HashMap::new();
    for layer in 0..cfg.num_layers {
        for m in TargetModule::ALL {
            let (d_in, d_out) = m.dims(cfg);
            let block = if matches!(m, TargetModule::Gate | TargetModule::Up | TargetModule::Down) { "mlp" } else { "self_attn" };
            let key = format!("base_model.model.model.layers.{layer}.{block}.{}", m.name());
            let a = Tensor::from_vec(rand(RANK * d_in), (RANK, d_in), &Device::Cpu).expect("A");
            let b = Tensor::from_vec(rand(d_out * RANK), (d_out, RANK), &Device::Cpu).expect("B");
            tensors.insert(format!("{key}.lora_A.weight"), a);
            tensors.insert(format!("{key}.lora_B.weight"), b);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors")).expect("weights");
    let targets: Vec<&str> = TargetModule::ALL.iter().map(|m| m.name()).collect();
    let config = serde_json::json!({"peft_type": "LORA", "r": RANK, "lora_alpha": 32, "target_modules": targets, "bias": "none"});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).expect("config");
}

fn bench(c: &mut Criterion) {
    let Some(dir) = model_dir() else {
        eprintln!("default model not installed: run scripts/default-model.sh first");
        return;
    };
    let mut cfg = EngineConfig::new(&dir, LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.prefix_caching = false;
    cfg.lora = Some(LoraSettings { max_loras: REQUESTS, max_lora_rank: RANK });
    let engine = EngineHandle::start(cfg).expect("engine starts");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let adapters = tempfile::tempdir().expect("temp dir");
    let names: Vec<String> = (0..REQUESTS).map(|i| format!("lora{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let path = adapters.path().join(name);
        write_adapter(&path, &engine.info().model, i as u64 + 1);
        rt.block_on(engine.load_adapter(name, path)).expect("adapter loads");
    }
    let vocab = engine.info().model.vocab_size as u32;
    let params = SamplingParams::new(OUTPUT).expect("max_tokens").with_ignore_eos(true);
    let run = |distinct: usize| {
        rt.block_on(async {
            let streams: Vec<_> = (0..REQUESTS)
                .map(|r| {
                    let adapter = (distinct > 0).then(|| names[r % distinct].as_str());
                    engine.generate_with(common::prompt(r, PROMPT, vocab), params.clone(), adapter).expect("accepted")
                })
                .collect();
            assert_eq!(common::drain(streams).await, REQUESTS * OUTPUT);
        })
    };
    let mut g = c.benchmark_group("lora-smollm2-135m-cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements((REQUESTS * OUTPUT) as u64));
    for distinct in [0usize, 1, 4, 16] {
        g.bench_with_input(BenchmarkId::new("adapters", distinct), &distinct, |b, &d| b.iter(|| run(d)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
