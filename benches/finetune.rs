//! LoRA training throughput on the default model (CPU by default): one optimizer step of
//! `flint_engine::finetune` (forward, backward, AdamW) over 8 sequences of 64 tokens with an
//! r=16 adapter on all seven projections and every token weighted, reported as trained
//! tokens/s ("elements/s"); plus the same batch's forward-only loss (validation) for scale.
//!
//! `cargo bench --bench finetune` — needs the default model (`scripts/default-model.sh`);
//! FLINT_BENCH_MODEL=DIR benches another model directory.

mod common;

use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use common::model_dir;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint_engine::finetune::{LoraSpec, TrainableModel};
use flint_models::{Device, ModelConfig, TargetModule, Tensor};

const SEQS: usize = 8;
const LEN: usize = 64;
const RANK: usize = 16;

fn bench(c: &mut Criterion) {
    let Some(dir) = model_dir() else {
        eprintln!("default model not installed: run scripts/default-model.sh first");
        return;
    };
    let dev = Device::Cpu;
    let cfg = ModelConfig::from_file(&dir.join("config.json")).expect("config");
    let spec = LoraSpec { rank: RANK, alpha: 2.0 * RANK as f64, targets: TargetModule::ALL.into_iter().collect() };
    let model = TrainableModel::load(&dir, &cfg, &dev, &spec, 0).expect("model loads");
    let vocab = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..SEQS).flat_map(|r| common::prompt(r, LEN, vocab)).collect();
    let ids = Tensor::from_vec(ids.clone(), (SEQS, LEN), &dev).expect("ids");
    let mask = Tensor::ones((SEQS, LEN), candle_core::DType::F32, &dev).expect("mask");
    // Every position but each sequence's last predicts its successor with weight 1.
    let rows: Vec<u32> = (0..SEQS).flat_map(|b| (0..LEN - 1).map(move |t| (b * LEN + t) as u32)).collect();
    let flat: Vec<u32> = ids.flatten_all().expect("flat").to_vec1().expect("ids");
    let targets: Vec<u32> = rows.iter().map(|&r| flat[r as usize + 1]).collect();
    let n = rows.len();
    let rows = Tensor::from_vec(rows, n, &dev).expect("rows");
    let targets = Tensor::from_vec(targets, n, &dev).expect("targets");
    let weights = Tensor::ones(n, candle_core::DType::F32, &dev).expect("weights");
    let mut opt = AdamW::new(model.vars(), ParamsAdamW { lr: 1e-4, weight_decay: 0.0, ..ParamsAdamW::default() }).expect("optimizer");

    let mut g = c.benchmark_group("finetune-smollm2-135m-cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements((SEQS * LEN) as u64));
    g.bench_function("train_step_8x64_r16", |b| {
        b.iter(|| {
            let loss = (model.weighted_nll(&ids, &mask, &rows, &targets, &weights, true).expect("forward") / n as f64).expect("mean");
            opt.backward_step(&loss).expect("backward + AdamW");
        })
    });
    g.bench_function("eval_loss_8x64_r16", |b| {
        b.iter(|| model.weighted_nll(&ids, &mask, &rows, &targets, &weights, false).expect("forward").to_scalar::<f32>().expect("loss"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
