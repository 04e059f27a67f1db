//! Single-sequence prefill and decode throughput on the default model (CPU by default).
//!
//! `cargo bench --bench decode` — needs the default model (`scripts/default-model.sh`);
//! FLINT_BENCH_MODEL=DIR benches another model directory. Criterion reports tokens/s as
//! "elements/s": prefill = prompt tokens per second for one 128-token prompt; decode = one
//! token per step at a 128-token context (the steady state of `flint run`).

mod common;

use common::model_dir;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint_models::{load, Device, ForwardBatch, KvCache, LoadOptions, LogitsRows, SeqInput};

const BLOCK: usize = 16;
const PROMPT: usize = 128;

fn bench(c: &mut Criterion) {
    let Some(dir) = model_dir() else {
        eprintln!("default model not installed: run scripts/default-model.sh first");
        return;
    };
    let m = load(&dir, &LoadOptions { device: Device::Cpu, dtype: None, quantization: None }).expect("model loads");
    let vocab = m.config.vocab_size as u32;
    // A fixed pseudo-random prompt: content does not change the cost.
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| (i * 7919 + 13) % vocab).collect();
    let kv = KvCache::new(&m.model.kv_cache_spec(), PROMPT / BLOCK + 1, BLOCK, &Device::Cpu).expect("cache");
    let table: Vec<u32> = (0..kv.num_blocks() as u32).collect();
    let run = |tokens: &[u32], computed: usize| {
        let seq = SeqInput { new_tokens: tokens, num_computed: computed, block_table: &table, logits: LogitsRows::Last };
        let batch = ForwardBatch::new(&[seq], BLOCK, &Device::Cpu).expect("batch");
        m.model.forward(&batch, &kv).expect("forward").to_vec2::<f32>().expect("logits")
    };

    let mut g = c.benchmark_group("smollm2-135m-cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PROMPT as u64));
    g.bench_function("prefill_128", |b| b.iter(|| run(&prompt, 0)));
    run(&prompt, 0);
    g.throughput(Throughput::Elements(1));
    // Each step rewrites position 128's slot, so the context stays at 129 tokens.
    g.bench_function("decode_at_128", |b| b.iter(|| run(&[42], PROMPT)));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
