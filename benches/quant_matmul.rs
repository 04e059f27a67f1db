//! Quantized matmul against the memory bound: flint's kernel (`flint_kernels::qmatmul`) and
//! candle's `QMatMul` on SmolLM2-135M's projection shapes and a 4096² one, batch 1 (GEMV) and
//! batched decode rows, plus this machine's copy bandwidth (a 256 MiB `memcpy`) as the bound.
//!
//! `cargo bench --bench quant_matmul`. Criterion's "bytes/s" is weight bytes streamed per
//! second (for copy: bytes read + written), so GEMV throughput compares directly with copy.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flint_kernels::{qmatmul, PackedQ, QKind};

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn copy_bandwidth(c: &mut Criterion) {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    let mut g = c.benchmark_group("copy");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(2 * n as u64));
    g.bench_function("memcpy_256MiB", |b| b.iter(|| dst.copy_from_slice(std::hint::black_box(&src))));
    g.finish();
}

fn gemv(c: &mut Criterion) {
    // (name, out, in): SmolLM2-135M's fused q|k|v, gate|up, down, lm_head; a 7B-sized square.
    let shapes = [("qkv_960x576", 960, 576), ("gate_up_3072x576", 3072, 576), ("down_576x1536", 576, 1536), ("lm_head_49152x576", 49152, 576), ("sq_4096x4096", 4096, 4096)];
    let kinds = [(QKind::Q4_0, GgmlDType::Q4_0), (QKind::Q4_1, GgmlDType::Q4_1), (QKind::Q8_0, GgmlDType::Q8_0), (QKind::Q5_0, GgmlDType::Q5_0)];
    let mut g = c.benchmark_group("qmatmul");
    g.sample_size(20);
    for (name, n, k) in shapes {
        let w = Tensor::from_vec(lcg(1, n * k), (n, k), &Device::Cpu).expect("w");
        for (kind, gd) in kinds {
            let q = QTensor::quantize(&w, gd).expect("quantize");
            let bytes = q.data().expect("bytes").into_owned();
            let packed = PackedQ::from_ggml(kind, n, k, &bytes).expect("pack");
            let candle = QMatMul::from_qtensor(q).expect("qmatmul");
            for rows in [1usize, 16] {
                let x = Tensor::from_vec(lcg(2, rows * k), (rows, k), &Device::Cpu).expect("x");
                g.throughput(Throughput::Bytes(bytes.len() as u64));
                let id = format!("{name}/{kind:?}/t{rows}");
                g.bench_with_input(BenchmarkId::new("flint", &id), &x, |b, x| b.iter(|| qmatmul(x, &packed).expect("mm")));
                g.bench_with_input(BenchmarkId::new("candle", &id), &x, |b, x| b.iter(|| candle.forward(x).expect("mm")));
            }
        }
        // The dense f32 path (what `flint convert` checkpoints run).
        let x = Tensor::from_vec(lcg(2, k), (1, k), &Device::Cpu).expect("x");
        g.throughput(Throughput::Bytes((n * k * 4) as u64));
        let wt = w.t().expect("t");
        g.bench_with_input(BenchmarkId::new("candle-f32", format!("{name}/F32/t1")), &x, |b, x| b.iter(|| x.matmul(&wt).expect("mm")));
    }
    g.finish();
}

criterion_group!(benches, copy_bandwidth, gemv);
criterion_main!(benches);
