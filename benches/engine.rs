//! Aggregate output tokens/s of the batched engine at 1, 4, 16 and 64 concurrent requests on
//! the default model (CPU by default).
//!
//! `cargo bench --bench engine` — needs the default model (`scripts/default-model.sh`);
//! FLINT_BENCH_MODEL=DIR benches another model directory. Each iteration submits N requests
//! (different 32-token prompts, 32 output tokens each, EOS ignored) and waits for all of them;
//! criterion's "elements/s" is output tokens per second over the whole batch, prompts included
//! in the time. Prefix caching is off so every iteration computes its prompts.

mod common;

use common::model_dir;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, EngineHandle, SamplingParams,
};

const PROMPT: usize = 32;
const OUTPUT: usize = 32;

fn bench(c: &mut Criterion) {
    let Some(dir) = model_dir() else {
        eprintln!("default model not installed: run scripts/default-model.sh first");
        return;
    };
    let mut cfg = EngineConfig::new(&dir, LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    cfg.prefix_caching = false;
    let engine = EngineHandle::start(cfg).expect("engine starts");
    let vocab = engine.info().model.vocab_size as u32;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let params = SamplingParams::new(OUTPUT).expect("max_tokens").with_ignore_eos(true);
    let run = |n: usize| {
        rt.block_on(async {
            let streams: Vec<_> = (0..n)
                .map(|r| engine.generate(common::prompt(r, PROMPT, vocab), params.clone()).expect("accepted"))
                .collect();
            assert_eq!(common::drain(streams).await, n * OUTPUT);
        })
    };
    let mut g = c.benchmark_group("engine-smollm2-135m-cpu");
    g.sample_size(10);
    for n in [1usize, 4, 16, 64] {
        g.throughput(Throughput::Elements((n * OUTPUT) as u64));
        g.bench_with_input(BenchmarkId::new("concurrent", n), &n, |b, &n| b.iter(|| run(n)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
