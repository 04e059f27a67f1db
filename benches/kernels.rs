//! Every flint-kernels kernel, and the dense ops around them, on Llama shapes. Each benchmark
//! declares the minimal bytes its kernel must move (criterion's `Throughput::Bytes`), so its
//! GB/s can be set against the device's copy bandwidth (the `copy` group, the memory roofline):
//! `python3 scripts/bench_table.py` prints the table.
//!
//! Device: CUDA device 0 in bf16, at full decode batch sizes and contexts, when built with the
//! `cuda` feature and a GPU is present (each iteration ends with a device synchronize, so the
//! times are the kernels' own); else the CPU in f32 with batches and contexts divided by 8.
//!
//!   cargo bench --bench kernels                   # CPU
//!   cargo bench --bench kernels --features cuda   # GPU when present (CPU otherwise)
//!   python3 scripts/bench_table.py

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput};
use flint_kernels::{
    add_rms_norm, lora_delta, paged_attention, paged_attention_split_k, reshape_and_cache,
    rotary_inplace, sample_rows, silu_and_mul, LoraTokens, PagedAttentionMeta, RowSampling, SeqSpan,
    SlotParams,
};

/// Tokens per KV cache block.
const BLOCK: usize = 16;

/// One model's decoder-layer shapes.
struct Model {
    name: &'static str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
}

const LLAMA_8B: Model =
    Model { name: "llama-3.1-8b", hidden: 4096, heads: 32, kv_heads: 8, head_dim: 128, intermediate: 14336 };
const LLAMA_1B: Model =
    Model { name: "llama-3.2-1b", hidden: 2048, heads: 32, kv_heads: 8, head_dim: 64, intermediate: 8192 };
const MODELS: [&Model; 2] = [&LLAMA_8B, &LLAMA_1B];

/// Where the bench runs, in which dtype and at which scale.
struct Env {
    dev: Device,
    dtype: DType,
    cuda: bool,
}

impl Env {
    fn new() -> Self {
        #[cfg(feature = "cuda")]
        match Device::new_cuda(0) {
            Ok(dev) => {
                eprintln!("kernels bench: CUDA device 0, bf16, full batch sizes and contexts");
                return Self { dev, dtype: DType::BF16, cuda: true };
            }
            Err(e) => eprintln!("kernels bench: no CUDA device ({e})"),
        }
        #[cfg(not(feature = "cuda"))]
        eprintln!("kernels bench: built without the `cuda` feature");
        eprintln!("kernels bench: CPU, f32, batch sizes and contexts divided by 8");
        Self { dev: Device::Cpu, dtype: DType::F32, cuda: false }
    }

    /// A batch size or context length: `full` on the GPU, an eighth of it (at least 1) on the CPU.
    fn n(&self, full: usize) -> usize {
        if self.cuda {
            full
        } else {
            (full / 8).max(1)
        }
    }

    /// Bytes of `elems` elements of the bench dtype.
    fn bytes(&self, elems: usize) -> u64 {
        (elems * self.dtype.size_in_bytes()) as u64
    }

    /// Deterministic values in [-1, 1) on the device, in the bench dtype.
    fn rand(&self, seed: u64, shape: &[usize]) -> Tensor {
        self.rand_in(seed, shape, -1.0, 1.0)
    }

    /// Deterministic values in [lo, hi) on the device, in the bench dtype.
    fn rand_in(&self, seed: u64, shape: &[usize], lo: f32, hi: f32) -> Tensor {
        self.put(&flint_kernels::testing::lcg_tensor(seed, shape, lo, hi))
    }

    /// A host f32 tensor on the device, in the bench dtype.
    fn put(&self, t: &Tensor) -> Tensor {
        t.to_dtype(self.dtype).and_then(|t| t.to_device(&self.dev)).expect("tensor to the bench device")
    }

    fn sync(&self) {
        if self.cuda {
            self.dev.synchronize().expect("device synchronize");
        }
    }

    fn group<'a>(&self, c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
        let mut g = c.benchmark_group(name);
        if !self.cuda {
            // CPU iterations take milliseconds: 100 samples would stretch each bench to minutes.
            g.sample_size(10);
        }
        g
    }
}

/// Benchmarks `f` as `kernel`/`param`, moving `bytes` per call; the device is synchronized
/// after every call so asynchronous GPU work is inside the timing.
fn bench<R>(
    g: &mut BenchmarkGroup<WallTime>,
    env: &Env,
    kernel: &str,
    param: String,
    bytes: u64,
    mut f: impl FnMut() -> R,
) {
    env.sync(); // uploads done while setting up stay out of the first sample
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(BenchmarkId::new(kernel, param), |b| {
        b.iter(|| {
            let r = f();
            env.sync();
            black_box(r)
        })
    });
}

/// The memory roofline: a device copy of one large buffer (read + write), into a preallocated
/// buffer (`copy`) and into a fresh one (`clone`: a memcpy on CUDA; on the CPU it also pays for
/// faulting in new pages). `scripts/bench_table.py` takes the faster as the roofline.
fn copy(c: &mut Criterion, env: &Env) {
    let mib = if env.cuda { 256 } else { 64 };
    let elems = (mib << 20) / env.dtype.size_in_bytes();
    let x = Tensor::ones(elems, env.dtype, &env.dev).expect("copy source");
    let dst = Tensor::zeros(elems, env.dtype, &env.dev).expect("copy destination");
    let mut g = env.group(c, "copy");
    let bytes = 2 * env.bytes(elems);
    bench(&mut g, env, "copy", format!("{mib}MiB"), bytes, || dst.slice_set(&x, 0, 0).expect("copy"));
    bench(&mut g, env, "clone", format!("{mib}MiB"), bytes, || x.copy().expect("clone"));
    g.finish();
}

/// The skinny decode GEMM `x [B, 4096] · Wᵀ` (candle's matmul): the weight dominates the bytes.
fn matmul(c: &mut Criterion, env: &Env) {
    let mut g = env.group(c, "matmul");
    let d_in = LLAMA_8B.hidden;
    for d_out in [LLAMA_8B.intermediate, LLAMA_8B.hidden] {
        let w = env.rand(1, &[d_out, d_in]);
        let wt = w.t().expect("transpose view");
        for b in [1, 32, 256].map(|b| env.n(b)) {
            let x = env.rand(2, &[b, d_in]);
            let bytes = env.bytes(d_out * d_in + b * d_in + b * d_out);
            let param = format!("{}/{d_out}x{d_in}/b{b}", LLAMA_8B.name);
            bench(&mut g, env, "matmul", param, bytes, || x.matmul(&wt).expect("matmul"));
        }
    }
    g.finish();
}

/// Writing one decode step's new K rows into the paged cache, each token in its own block.
fn cache_write(c: &mut Criterion, env: &Env) {
    let mut g = env.group(c, "reshape_and_cache");
    for m in MODELS {
        for t in [32, 256].map(|t| env.n(t)) {
            let cache = env.rand(3, &[t, BLOCK, m.kv_heads, m.head_dim]);
            let new = env.rand(4, &[t, m.kv_heads, m.head_dim]);
            let slots: Vec<i64> = (0..t).map(|i| (i * BLOCK + (i * 7) % BLOCK) as i64).collect();
            let slots = Tensor::new(slots, &env.dev).expect("slot mapping");
            // The rows are read and written once; the slot mapping is read once.
            let bytes = 2 * env.bytes(t * m.kv_heads * m.head_dim) + 8 * t as u64;
            let param = format!("{}/t{t}", m.name);
            bench(&mut g, env, "reshape_and_cache", param, bytes, || {
                reshape_and_cache(&new, &cache, &slots).expect("reshape_and_cache")
            });
        }
    }
    g.finish();
}

/// One attention batch over a filled paged cache: `seqs` = (tokens computed before, new tokens)
/// per sequence, block tables handed out in a scrambled order (as a long-running pool would).
struct AttnCase {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    meta: PagedAttentionMeta,
    /// K/V context read once, q read and out written once.
    bytes: u64,
}

fn attn_case(env: &Env, m: &Model, seqs: &[(usize, usize)]) -> AttnCase {
    let blocks: Vec<usize> = seqs.iter().map(|(c, n)| (c + n).div_ceil(BLOCK)).collect();
    let max_blocks = blocks.iter().copied().max().expect("at least one sequence");
    let num_blocks: usize = blocks.iter().sum::<usize>() + 1;
    let mut free: Vec<u32> = (0..num_blocks as u32).collect();
    free.sort_by_key(|&i| (i as u64 * 7919) % num_blocks as u64);
    let mut meta = PagedAttentionMeta::new(BLOCK, max_blocks);
    let (mut rows, mut context) = (0usize, 0usize);
    for (&(computed, new), &nb) in seqs.iter().zip(&blocks) {
        let table: Vec<u32> = (0..nb).map(|_| free.pop().expect("enough blocks")).collect();
        let span = SeqSpan { query_start: rows as u32, query_len: new as u32, context_len: (computed + new) as u32 };
        meta.push(span, &table);
        rows += new;
        context += computed + new;
    }
    let kv = [num_blocks, BLOCK, m.kv_heads, m.head_dim];
    let bytes = env.bytes(2 * context * m.kv_heads * m.head_dim + 2 * rows * m.heads * m.head_dim);
    AttnCase { q: env.rand(5, &[rows, m.heads, m.head_dim]), k: env.rand(6, &kv), v: env.rand(7, &kv), meta, bytes }
}

/// Decode (batch 32 × context 512, batch 8 × context 4096, the long one also split-K) and a
/// 512-token prefill.
fn attention(c: &mut Criterion, env: &Env) {
    let mut g = env.group(c, "paged_attention");
    let partition = env.n(512);
    for m in MODELS {
        let scale = 1.0 / (m.head_dim as f32).sqrt();
        for (batch, ctx) in [(32, 512), (8, 4096)] {
            let (batch, ctx) = (env.n(batch), env.n(ctx));
            let a = attn_case(env, m, &vec![(ctx - 1, 1); batch]);
            let param = format!("{}/decode-b{batch}-ctx{ctx}", m.name);
            bench(&mut g, env, "paged_attention", param.clone(), a.bytes, || {
                paged_attention(&a.q, &a.k, &a.v, &a.meta, scale).expect("paged_attention")
            });
            if ctx > partition {
                bench(&mut g, env, &format!("paged_attention_split_k-p{partition}"), param, a.bytes, || {
                    paged_attention_split_k(&a.q, &a.k, &a.v, &a.meta, scale, partition).expect("split-k")
                });
            }
        }
        let prompt = env.n(512);
        let a = attn_case(env, m, &[(0, prompt)]);
        bench(&mut g, env, "paged_attention", format!("{}/prefill-{prompt}", m.name), a.bytes, || {
            paged_attention(&a.q, &a.k, &a.v, &a.meta, scale).expect("paged_attention")
        });
    }
    g.finish();
}

/// The decoder layer's fused elementwise steps at 32 and 256 tokens.
fn fused(c: &mut Criterion, env: &Env) {
    let tokens = [32, 256].map(|t| env.n(t));

    let mut g = env.group(c, "add_rms_norm");
    for m in MODELS {
        let w = env.rand(8, &[m.hidden]);
        for t in tokens {
            let (x, r) = (env.rand(9, &[t, m.hidden]), env.rand(10, &[t, m.hidden]));
            // x, residual read; normed, sum written; the weight read once.
            let bytes = env.bytes(4 * t * m.hidden + m.hidden);
            bench(&mut g, env, "add_rms_norm", format!("{}/t{t}", m.name), bytes, || {
                add_rms_norm(&x, &r, &w, 1e-5).expect("add_rms_norm")
            });
        }
    }
    g.finish();

    let mut g = env.group(c, "rotary_inplace");
    for m in MODELS {
        for t in tokens {
            // Real rotations (cos² + sin² = 1), so the repeated in-place calls keep q bounded.
            let angles = flint_kernels::testing::lcg_tensor(11, &[t, m.head_dim / 2], 0.0, std::f32::consts::TAU);
            let cos = env.put(&angles.cos().expect("cos"));
            let sin = env.put(&angles.sin().expect("sin"));
            let q = env.rand(12, &[t, m.heads, m.head_dim]);
            // q read and written, cos and sin read.
            let bytes = env.bytes(2 * t * m.heads * m.head_dim + t * m.head_dim);
            bench(&mut g, env, "rotary_inplace", format!("{}/q/t{t}", m.name), bytes, || {
                rotary_inplace(&q, &cos, &sin).expect("rotary_inplace")
            });
        }
    }
    g.finish();

    let mut g = env.group(c, "silu_and_mul");
    for m in MODELS {
        for t in tokens {
            let (gate, up) = (env.rand(13, &[t, m.intermediate]), env.rand(14, &[t, m.intermediate]));
            let bytes = env.bytes(3 * t * m.intermediate);
            bench(&mut g, env, "silu_and_mul", format!("{}/t{t}", m.name), bytes, || {
                silu_and_mul(&gate, &up).expect("silu_and_mul")
            });
        }
    }
    g.finish();
}

/// The batched multi-adapter LoRA op on a 4096 → 4096 projection, r = 16, 16 slots: a decode
/// batch (token `i` in slot `i % 16`) and a prefill chunk (one slot).
fn lora(c: &mut Criterion, env: &Env) {
    let (d_in, d_out, rank, slots) = (LLAMA_8B.hidden, LLAMA_8B.hidden, 16, 16);
    let a = env.rand(15, &[slots, rank, d_in]);
    let b = env.rand(16, &[slots, rank, d_out]);
    let params = vec![SlotParams { scale: 2.0, rank: rank as u32 }; slots];
    let mut g = env.group(c, "lora_delta");
    for (case, t, per_token) in [("decode", env.n(32), true), ("prefill-one-slot", env.n(512), false)] {
        let x = env.rand(17, &[t, d_in]);
        let token_slots: Vec<u32> = (0..t).map(|i| if per_token { (i % slots) as u32 } else { 0 }).collect();
        let used = if per_token { t.min(slots) } else { 1 };
        let tokens = LoraTokens::new(token_slots);
        // x read, out written, each used slot's A and B read once.
        let bytes = env.bytes(t * d_in + t * d_out + used * rank * (d_in + d_out));
        let param = format!("{}/{d_in}x{d_out}-r{rank}/{case}-t{t}", LLAMA_8B.name);
        bench(&mut g, env, "lora_delta", param, bytes, || {
            lora_delta(&x, &a, &b, &tokens, &params).expect("lora_delta")
        });
    }
    g.finish();
}

/// Sampling one token per row of `[rows, 128256]` logits (Llama 3's vocabulary) on the device:
/// greedy and top-p 0.9 (temperature 1). Only the ids come back to the host.
fn sampling(c: &mut Criterion, env: &Env) {
    let vocab = 128_256;
    let mut g = env.group(c, "sampling");
    for rows in [32, 256].map(|r| env.n(r)) {
        let logits = env.rand_in(18, &[rows, vocab], -8.0, 8.0);
        for (mode, temperature, top_p) in [("greedy", 0.0, 1.0), ("top-p0.9", 1.0, 0.9)] {
            let params: Vec<RowSampling> = (0..rows)
                .map(|r| RowSampling { temperature, top_k: 0, top_p, min_p: 0.0, uniform: (r as f32 * 0.618).fract() })
                .collect();
            let bytes = env.bytes(rows * vocab);
            bench(&mut g, env, "sample_rows", format!("vocab{vocab}/{mode}/rows{rows}"), bytes, || {
                sample_rows(&logits, &params, &[]).expect("sample_rows")
            });
        }
    }
    g.finish();
}

fn kernels(c: &mut Criterion) {
    let env = Env::new();
    copy(c, &env);
    matmul(c, &env);
    cache_write(c, &env);
    attention(c, &env);
    fused(c, &env);
    lora(c, &env);
    sampling(c, &env);
}

criterion_group!(benches, kernels);
criterion_main!(benches);
