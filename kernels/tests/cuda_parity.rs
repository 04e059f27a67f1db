//! GPU kernels against their CPU references over a grid of shapes, block sizes and dtypes.
//! Built only with the `cuda` feature; every test passes trivially (saying so) when no GPU is
//! present, so `cargo test --features cuda` also runs on a GPU-less machine with a driver.
//!
//!   cargo test --release -p flint-kernels --features cuda --test cuda_parity -- --nocapture
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use flint_kernels::{
    add_rms_norm, lora_delta, paged_attention, paged_attention_split_k, reshape_and_cache,
    rotary_inplace, silu_and_mul, LoraTokens, PagedAttentionMeta, SeqSpan, SlotParams, NO_SLOT,
};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

fn gpu() -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: no CUDA device ({e})");
            None
        }
    }
}

/// Deterministic values in [-1, 1).
fn rand(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
    flint_kernels::testing::lcg_tensor(seed, shape, -1.0, 1.0).to_dtype(dtype).expect("valid dtype")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).expect("to cpu");
    let b = b.to_device(&Device::Cpu).and_then(|t| t.to_dtype(DType::F32)).expect("to cpu");
    (a - b).and_then(|d| d.abs()).and_then(|d| d.flatten_all()).and_then(|d| d.max(0)).and_then(|d| d.to_scalar::<f32>()).expect("diff")
}

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 4e-3,
        _ => 3e-2,
    }
}

/// A batch over a randomly filled cache: `seqs` = (computed before, new tokens) per sequence,
/// block tables drawn in a scrambled order.
struct Case {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    meta: PagedAttentionMeta,
}

fn case(dtype: DType, heads: usize, kvh: usize, d: usize, bs: usize, seqs: &[(usize, usize)], seed: u64) -> Case {
    let max_blocks = seqs.iter().map(|(c, n)| (c + n).div_ceil(bs)).max().expect("non-empty");
    let num_blocks = max_blocks * seqs.len() + 3;
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.sort_by_key(|&i| (i as u64 * 7919 + seed) % num_blocks as u64);
    let mut meta = PagedAttentionMeta::new(bs, max_blocks);
    let mut rows = 0;
    for &(computed, new) in seqs {
        let ctx = computed + new;
        let table: Vec<u32> = (0..ctx.div_ceil(bs)).map(|_| free.pop().expect("enough blocks")).collect();
        meta.push(SeqSpan { query_start: rows, query_len: new as u32, context_len: ctx as u32 }, &table);
        rows += new as u32;
    }
    Case {
        q: rand(seed, &[rows as usize, heads, d], dtype),
        k: rand(seed + 1, &[num_blocks, bs, kvh, d], dtype),
        v: rand(seed + 2, &[num_blocks, bs, kvh, d], dtype),
        meta,
    }
}

#[test]
fn reshape_and_cache_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    for dtype in DTYPES {
        for (bs, kvh, d) in [(8, 2, 64), (16, 8, 128), (32, 1, 80)] {
            let cache = rand(9, &[6, bs, kvh, d], dtype);
            let new = rand(10, &[5, kvh, d], dtype);
            let slots = Tensor::new(&[3i64, -1, (6 * bs - 1) as i64, 0, bs as i64], &Device::Cpu).expect("slots");
            let cpu = cache.copy().expect("copy");
            reshape_and_cache(&new, &cpu, &slots).expect("cpu write");
            let dev = cache.to_device(&gpu).expect("upload");
            let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
            reshape_and_cache(&on(&new), &dev, &on(&slots)).expect("gpu write");
            assert_eq!(max_diff(&cpu, &dev), 0.0, "{dtype:?} bs{bs} kvh{kvh} d{d}");
        }
    }
}

fn attention_cases() -> Vec<(&'static str, Vec<(usize, usize)>)> {
    vec![
        ("decode", vec![(0, 1), (16, 1), (32, 1), (99, 1), (7, 1)]),
        ("decode-long", vec![(2999, 1), (700, 1), (0, 1), (1500, 1)]),
        ("prefill", vec![(0, 37), (0, 1), (0, 16)]),
        ("mixed", vec![(50, 20), (9, 1), (0, 33), (130, 1), (17, 5)]),
    ]
}

#[test]
fn paged_attention_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut worst = 0f32;
    for dtype in DTYPES {
        for bs in [8, 16, 32] {
            for (heads, kvh) in [(8, 8), (16, 2), (32, 8)] {
                for d in [64, 80, 128, 256] {
                    for (name, seqs) in attention_cases() {
                        let c = case(dtype, heads, kvh, d, bs, &seqs, (bs * 31 + d) as u64);
                        let scale = 1.0 / (d as f32).sqrt();
                        let want = paged_attention(&c.q, &c.k, &c.v, &c.meta, scale).expect("cpu");
                        let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
                        let got = paged_attention(&on(&c.q), &on(&c.k), &on(&c.v), &c.meta, scale).expect("gpu");
                        let diff = max_diff(&want, &got);
                        worst = worst.max(diff);
                        assert!(diff <= tol(dtype), "{name} {dtype:?} bs{bs} h{heads}/kv{kvh} d{d}: {diff}");
                    }
                }
            }
        }
    }
    eprintln!("paged_attention: worst max |gpu - cpu| = {worst}");
}

#[test]
fn split_k_decode_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    for dtype in DTYPES {
        for partition in [16, 64, 512] {
            let seqs = [(2999, 1), (700, 1), (0, 1), (64, 1), (65, 1)];
            let c = case(dtype, 32, 8, 128, 16, &seqs, partition as u64);
            let scale = 0.088;
            let want = paged_attention(&c.q, &c.k, &c.v, &c.meta, scale).expect("cpu");
            let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
            let got = paged_attention_split_k(&on(&c.q), &on(&c.k), &on(&c.v), &c.meta, scale, partition).expect("gpu");
            let diff = max_diff(&want, &got);
            assert!(diff <= tol(dtype), "{dtype:?} partition {partition}: {diff}");
        }
    }
    // The GPU split-K kernel is decode-only and says so.
    let c = case(DType::F32, 4, 4, 64, 16, &[(0, 3)], 1);
    let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
    assert!(paged_attention_split_k(&on(&c.q), &on(&c.k), &on(&c.v), &c.meta, 1.0, 16).is_err());
}

#[test]
fn fused_kernels_match_cpu() {
    let Some(gpu) = gpu() else { return };
    let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
    for dtype in DTYPES {
        for (rows, hidden) in [(1, 64), (7, 896), (33, 2048), (3, 4096), (2, 5120)] {
            let (x, r, w) = (rand(1, &[rows, hidden], dtype), rand(2, &[rows, hidden], dtype), rand(3, &[hidden], dtype));
            let (n_cpu, s_cpu) = add_rms_norm(&x, &r, &w, 1e-6).expect("cpu");
            let (n_gpu, s_gpu) = add_rms_norm(&on(&x), &on(&r), &on(&w), 1e-6).expect("gpu");
            assert_eq!(max_diff(&s_cpu, &s_gpu), 0.0, "add_rms_norm sum {dtype:?} {rows}x{hidden}");
            let diff = max_diff(&n_cpu, &n_gpu);
            assert!(diff <= tol(dtype) * 4.0, "add_rms_norm {dtype:?} {rows}x{hidden}: {diff}");

            let (g, u) = (rand(4, &[rows, hidden], dtype), rand(5, &[rows, hidden], dtype));
            let diff = max_diff(&silu_and_mul(&g, &u).expect("cpu"), &silu_and_mul(&on(&g), &on(&u)).expect("gpu"));
            assert!(diff <= tol(dtype), "silu_and_mul {dtype:?} {rows}x{hidden}: {diff}");
        }
        for (t, heads, d) in [(1, 32, 64), (9, 8, 128), (40, 28, 128), (3, 4, 256)] {
            let x = rand(6, &[t, heads, d], dtype);
            let angles = rand(7, &[t, d / 2], DType::F32);
            let cos = angles.cos().and_then(|a| a.to_dtype(dtype)).expect("cos");
            let sin = angles.sin().and_then(|a| a.to_dtype(dtype)).expect("sin");
            let cpu = x.copy().expect("copy");
            rotary_inplace(&cpu, &cos, &sin).expect("cpu");
            let dev = on(&x);
            rotary_inplace(&dev, &on(&cos), &on(&sin)).expect("gpu");
            let diff = max_diff(&cpu, &dev);
            assert!(diff <= tol(dtype), "rotary {dtype:?} {t}x{heads}x{d}: {diff}");
        }
    }
}

#[test]
fn lora_delta_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let on = |t: &Tensor| t.to_device(&gpu).expect("upload");
    let max_abs = |t: &Tensor| {
        let t = t.to_dtype(DType::F32).and_then(|t| t.abs()).and_then(|t| t.flatten_all()).expect("abs");
        t.max(0).and_then(|m| m.to_scalar::<f32>()).expect("max")
    };
    let rel_tol = |dtype: DType| match dtype {
        DType::F32 => 1e-4,
        DType::F16 => 5e-3,
        _ => 3e-2,
    };
    for dtype in DTYPES {
        for (num_slots, max_rank, d_in, d_out) in [(4, 16, 576, 1536), (2, 8, 896, 128), (8, 64, 4096, 4096)] {
            // Padding past each rank is random, not zero: the kernels must respect the ranks.
            let a = rand(11, &[num_slots, max_rank, d_in], dtype);
            let b = rand(12, &[num_slots, max_rank, d_out], dtype);
            let (ga, gb) = (on(&a), on(&b));
            // Mixed ranks (slot 0 one short of the maximum, odd slots full, the rest about half)
            // and the last slot at scale 0 (an adapter not targeting this layer).
            let params: Vec<SlotParams> = (0..num_slots)
                .map(|s| SlotParams {
                    scale: if s == num_slots - 1 { 0.0 } else { 0.5 + 0.25 * s as f32 },
                    rank: match s {
                        0 => max_rank as u32 - 1,
                        s if s % 2 == 1 => max_rank as u32,
                        s => (max_rank / 2 + s % 3) as u32,
                    },
                })
                .collect();
            for t in [1, 16, 37] {
                let x = rand(13 + t as u64, &[t, d_in], dtype);
                let gx = on(&x);
                // Every slot and NO_SLOT, scrambled.
                let slots: Vec<u32> = (0..t)
                    .map(|i| match (i * 7 + 3) % (num_slots + 1) {
                        s if s == num_slots => NO_SLOT,
                        s => s as u32,
                    })
                    .collect();
                let tokens = LoraTokens::new(slots);
                // Two "layers" through the same tokens: the second reuses the cached device copy
                // of the token slots with other per-slot scales.
                let doubled: Vec<SlotParams> = params.iter().map(|p| SlotParams { scale: 2.0 * p.scale, ..*p }).collect();
                for (layer, params) in [&params, &doubled].into_iter().enumerate() {
                    let want = lora_delta(&x, &a, &b, &tokens, params).expect("cpu");
                    let got = lora_delta(&gx, &ga, &gb, &tokens, params).expect("gpu");
                    assert_eq!(got.dims(), want.dims());
                    let (diff, scale) = (max_diff(&want, &got), max_abs(&want).max(1e-6));
                    assert!(
                        diff <= rel_tol(dtype) * scale,
                        "{dtype:?} slots{num_slots} r{max_rank} {d_in}->{d_out} t{t} layer{layer}: {diff} (max |cpu| {scale})"
                    );
                    // Tokens without an active adapter get exact zeros.
                    let rows = got.to_dtype(DType::F32).and_then(|g| g.to_vec2::<f32>()).expect("to host");
                    for (i, row) in rows.iter().enumerate() {
                        let s = tokens.token_slots[i];
                        if s == NO_SLOT || params[s as usize].scale == 0.0 {
                            assert!(row.iter().all(|&v| v == 0.0), "{dtype:?} t{t}: row {i} (slot {s}) not zero");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn silu_and_mul_packed_matches_cpu_and_the_split_form() {
    let Some(dev) = gpu() else { return };
    let on = |t: &Tensor| t.to_device(&dev).expect("upload");
    for dtype in DTYPES {
        // The last shape has more elements than one 65535-block launch covers (grid-stride).
        for (rows, inter) in [(1, 1), (1, 8960), (7, 1536), (33, 11008), (2048, 8960)] {
            let x = rand(11, &[rows, 2 * inter], dtype);
            let gpu_out = flint_kernels::silu_and_mul_packed(&on(&x)).expect("gpu");
            assert_eq!(gpu_out.dims(), [rows, inter]);
            let diff = max_diff(&flint_kernels::silu_and_mul_packed(&x).expect("cpu"), &gpu_out);
            assert!(diff <= tol(dtype), "silu_and_mul_packed {dtype:?} {rows}x{inter}: {diff}");
            // Same per-element code on the device as the two-tensor kernel: bit-identical.
            let xd = on(&x);
            let (g, u) = (xd.narrow(1, 0, inter).expect("gate"), xd.narrow(1, inter, inter).expect("up"));
            let split = silu_and_mul(&g, &u).expect("gpu split");
            assert_eq!(max_diff(&split, &gpu_out), 0.0, "packed vs split {dtype:?} {rows}x{inter}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sample_rows

/// Deterministic numbers in [0, 1) for the sampling tests.
fn unit(state: &mut u64) -> f32 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*state >> 40) as f32 / (1u64 << 24) as f32
}

/// A mix of rows: greedy, top-k 1, top-k, top-p, min-p, all three, plain temperature.
fn sampling_mix(rows: usize, seed: u64) -> Vec<flint_kernels::RowSampling> {
    let mut s = seed;
    (0..rows)
        .map(|r| {
            let (temperature, top_k, top_p, min_p) = match r % 7 {
                0 => (0.0, 0, 1.0, 0.0),
                1 => (1.0, 1, 1.0, 0.0),
                2 => (0.7, 50, 1.0, 0.0),
                3 => (1.0, 0, 0.9, 0.0),
                4 => (0.8, 0, 1.0, 0.05),
                5 => (0.6, 200, 0.95, 0.02),
                _ => (1.3, 0, 1.0, 0.0),
            };
            flint_kernels::RowSampling { temperature, top_k, top_p, min_p, uniform: unit(&mut s) }
        })
        .collect()
}

/// Per row, adjustments of the engine's kinds on distinct tokens: logit bias, repetition
/// penalty, presence/frequency penalty, and a -inf ban (of the row's raw argmax on some rows).
fn sampling_adjust(logits: &Tensor, seed: u64) -> Vec<flint_kernels::LogitAdjust> {
    let vocab = logits.dims2().expect("2-D").1;
    let argmax: Vec<u32> = logits.to_dtype(DType::F32).and_then(|t| t.argmax(1)).and_then(|t| t.to_vec1()).expect("argmax");
    let mut s = seed;
    let mut out = Vec::new();
    for (r, &best) in argmax.iter().enumerate() {
        let n = r % 5 * 8;
        let step = (vocab / (n + 1)).max(1);
        let base = (unit(&mut s) * step as f32) as usize;
        for j in 0..n {
            let token = ((base + j * step) % vocab) as u32;
            if token == best {
                continue;
            }
            let mut a = flint_kernels::LogitAdjust { row: r as u32, token, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: 0.0 };
            match j % 4 {
                0 => a.bias = 10.0 * unit(&mut s) - 5.0,
                1 => (a.pos_scale, a.neg_scale) = (1.0 / 1.3, 1.3),
                2 => a.add = -(0.5 + unit(&mut s)),
                _ => (a.bias, a.pos_scale, a.neg_scale, a.add) = (2.0, 0.8, 1.25, -0.3),
            }
            out.push(a);
        }
        if r % 3 == 0 {
            out.push(flint_kernels::LogitAdjust { row: r as u32, token: best, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: f32::NEG_INFINITY });
        }
    }
    out
}

#[test]
fn sample_rows_matches_cpu() {
    let Some(dev) = gpu() else { return };
    for dtype in [DType::F32, DType::BF16] {
        for vocab in [32000, 128256, 151936] {
            for rows in [1, 37, 256] {
                let seed = (vocab + rows) as u64;
                let logits = flint_kernels::testing::lcg_tensor(seed, &[rows, vocab], -10.0, 10.0).to_dtype(dtype).expect("cast");
                let params = sampling_mix(rows, seed);
                let adjust = sampling_adjust(&logits, seed);
                let cpu = flint_kernels::sample_rows(&logits, &params, &adjust).expect("cpu");
                let on_gpu = logits.to_device(&dev).expect("upload");
                let start = std::time::Instant::now();
                let got = flint_kernels::sample_rows(&on_gpu, &params, &adjust).expect("gpu");
                let took = start.elapsed();
                let (mut sampled, mut mismatches) = (0, 0);
                for (r, p) in params.iter().enumerate() {
                    let greedy = p.temperature == 0.0 || p.top_k == 1;
                    if greedy {
                        assert_eq!(got[r], cpu[r], "{dtype:?} vocab {vocab} rows {rows}: greedy row {r} {p:?}");
                    } else {
                        sampled += 1;
                        if got[r] != cpu[r] {
                            mismatches += 1;
                            eprintln!("{dtype:?} vocab {vocab} row {r} {p:?}: gpu {} cpu {}", got[r], cpu[r]);
                        }
                    }
                }
                eprintln!("sample_rows {dtype:?} vocab {vocab} rows {rows}: {mismatches}/{sampled} sampled rows differ, gpu {took:?}");
                assert!(mismatches as f64 <= 0.005 * sampled as f64, "{dtype:?} vocab {vocab} rows {rows}: {mismatches}/{sampled}");
            }
        }
    }
}

#[test]
fn sample_rows_edge_cases_match_cpu() {
    let Some(dev) = gpu() else { return };
    let (nan, inf) = (f32::NAN, f32::INFINITY);
    let rows: [&[f32]; 6] = [
        &[1.0, 3.0, nan, 3.0, 2.0, 3.0],
        &[-inf, -inf, nan, -inf, -inf, -inf],
        &[1.0, inf, 3.0, inf, nan, 0.0],
        &[2.0, 1.0, 2.0, 1.0, 2.0, 0.0],
        &[0.0, 0.0, 0.0, 0.0, -0.0, 0.0],
        &[-1.0, 0.0, -0.5, -2.0, -90.0, -3.0],
    ];
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    // A wider batch narrowed to 6 columns: rows not contiguous with each other.
    let wide = Tensor::from_vec(data, (6, 6), &Device::Cpu).and_then(|t| t.pad_with_zeros(1, 0, 3)).expect("batch");
    let mut s = 5;
    for dtype in DTYPES {
        let cpu_t = wide.to_dtype(dtype).and_then(|t| t.narrow(1, 0, 6)).expect("narrow");
        let gpu_t = wide.to_dtype(dtype).and_then(|t| t.to_device(&dev)).and_then(|t| t.narrow(1, 0, 6)).expect("narrow");
        for (t, k, p, m) in [(0.0, 0, 1.0, 0.0), (1.0, 0, 1.0, 0.0), (1.0, 2, 1.0, 0.0), (1.0, 0, 0.5, 0.0), (0.5, 3, 0.6, 0.3)] {
            for u in [0.0, 0.3, 0.7, 1.0 - f32::EPSILON / 2.0] {
                let params: Vec<_> = (0..6).map(|_| flint_kernels::RowSampling { temperature: t, top_k: k, top_p: p, min_p: m, uniform: u }).collect();
                let bump = flint_kernels::LogitAdjust { row: 3, token: 5, bias: 2.0 * unit(&mut s), pos_scale: 0.5, neg_scale: 2.0, add: -0.25 };
                let ban = flint_kernels::LogitAdjust { row: 0, token: 1, bias: 0.0, pos_scale: 1.0, neg_scale: 1.0, add: f32::NEG_INFINITY };
                let all: Vec<_> = (0..6).map(|tok| flint_kernels::LogitAdjust { row: 5, token: tok, ..ban }).collect();
                let adjust = [vec![bump, ban], all].concat();
                let cpu = flint_kernels::sample_rows(&cpu_t, &params, &adjust).expect("cpu");
                let got = flint_kernels::sample_rows(&gpu_t, &params, &adjust).expect("gpu");
                assert_eq!(got, cpu, "{dtype:?} T {t} k {k} p {p} min_p {m} u {u}");
            }
        }
    }
}
