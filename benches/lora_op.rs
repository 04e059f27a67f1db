//! The batched LoRA op (`flint_kernels::lora_delta`) against the base projection it rides on,
//! on SmolLM2-135M's widest shapes (576 → 1536), CPU, f32: a decode step (16 tokens, each in
//! its own adapter slot) and a prefill chunk (512 tokens, one adapter). r = 16.
//!
//! `cargo bench --bench lora_op`

use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use flint_kernels::{lora_delta, LoraTokens, SlotParams};

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (d_in, d_out, rank, slots) = (576, 1536, 16, 16);
    let w = Tensor::randn(0f32, 0.02, (d_out, d_in), &dev).expect("w");
    let base = candle_nn::Linear::new(w, None);
    let a = Tensor::randn(0f32, 0.02, (slots, rank, d_in), &dev).expect("a");
    let b = Tensor::randn(0f32, 0.02, (slots, rank, d_out), &dev).expect("b");
    let params = vec![SlotParams { scale: 2.0, rank: rank as u32 }; slots];
    let mut g = c.benchmark_group("lora-op-576x1536-r16");
    for (name, tokens, per_token_slot) in [("decode-16-slots", 16usize, true), ("prefill-512-one-slot", 512, false)] {
        let x = Tensor::randn(0f32, 1.0, (tokens, d_in), &dev).expect("x");
        let lt = LoraTokens::new((0..tokens as u32).map(|t| if per_token_slot { t % slots as u32 } else { 0 }).collect());
        g.bench_with_input(BenchmarkId::new("base-matmul", name), &x, |bn, x| bn.iter(|| base.forward(x).expect("matmul")));
        g.bench_with_input(BenchmarkId::new("lora-delta", name), &x, |bn, x| {
            bn.iter(|| lora_delta(x, &a, &b, &lt, &params).expect("lora"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
