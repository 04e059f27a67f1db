//! Quantized matmul on the CPU: `y [T, N] = x [T, K] · Wᵀ` for weights `W [N, K]` stored in
//! GGML's 32-wide block types ([`QKind`]: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), repacked at load into
//! [`PackedQ`] (per-block scales widened to f32 and split from the quants, so the inner loop
//! reads two flat streams).
//!
//! Each activation row is quantized once to 8 bits per 32-block ([`QuantizedRows`]), and the
//! dot products are integer (`maddubs`/`madd` on AVX2), as llama.cpp does. Work is split by
//! output rows across rayon's pool; each weight row is read from memory once per call and
//! reused from L1 (and, in tiles of rows, from registers) for every activation row, so a decode
//! step of many sequences streams the weights once. The instruction set is detected at run
//! time: AVX-512 VNNI (`vnni`), else AVX2+FMA (`x86`), else the portable loop, which is also
//! the reference the SIMD kernels are tested against (and what aarch64 runs).

mod pack;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub use pack::QKind;

/// Values per quantization block (every type here).
pub const QK: usize = 32;

/// A weight matrix `[n, k]` in one of the [`QKind`]s, repacked for [`qmatmul`].
#[derive(Debug, Clone)]
pub struct PackedQ {
    kind: QKind,
    n: usize,
    k: usize,
    /// Per block, row-major `[n, k / 32]`: the scale `d`.
    d: Vec<f32>,
    /// Per block: the offset `m` (Q4_1, Q5_1), empty otherwise.
    m: Vec<f32>,
    /// Per block: [`QKind::quant_bytes`] of quants, as in GGML (Q4: byte j holds elements j
    /// and j + 16; Q5: the fifth bits expanded so a block is 32 unsigned bytes; Q8: i8).
    qs: Vec<u8>,
}

impl PackedQ {
    /// Outputs (`n`) and inputs (`k`).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn kind(&self) -> QKind {
        self.kind
    }

    /// Bytes held (scales and quants).
    pub fn size_in_bytes(&self) -> usize {
        4 * (self.d.len() + self.m.len()) + self.qs.len()
    }

    fn blocks_per_row(&self) -> usize {
        self.k / QK
    }
}

/// Activation rows quantized to 8 bits per 32-block: `d` the scale, `qs` the values, and
/// `qsum` = d·Σq, which the zero points (Q4_0, Q5_0) and offsets (Q4_1, Q5_1) multiply. The
/// offset takes the sum of the *quantized* activations, as llama.cpp's Q8_1 does: then the
/// rounding error of the whole block dot is Σw·e, while the exact Σx would leave Σ(w − m)·e,
/// about twice as large (m sits near −max|w|).
#[derive(Debug, Default)]
pub struct QuantizedRows {
    rows: usize,
    kb: usize,
    /// Each pair of blocks laid out `[b0 0..16 | b1 0..16 | b0 16..32 | b1 16..32]` (what the
    /// VNNI kernel's Q4 unpacking produces) instead of block after block.
    pair_order: bool,
    d: Vec<f32>,
    qs: Vec<i8>,
    qsum: Vec<f32>,
    /// Per block pair, 16 lanes each (the VNNI kernel's `vpdpbusd` lanes, four bytes a lane):
    /// −zero·Σq of the lane's bytes (the zero point, in the integer dot), the lane's block
    /// scale, and scale·Σq (what an offset `m` multiplies). Filled by `vnni::prepare`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    lane_zero: Vec<i32>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    lane_scale: Vec<f32>,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    lane_msum: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x` (`rows` rows of `k` values, `k` a multiple of 32; a multiple of 64 for
    /// `pair_order`), reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], rows: usize, k: usize, pair_order: bool) {
        let kb = k / QK;
        self.rows = rows;
        self.kb = kb;
        self.pair_order = pair_order;
        let nb = rows * kb;
        self.d.resize(nb, 0.0);
        self.qsum.resize(nb, 0.0);
        self.qs.resize(nb * QK, 0);
        for (b, xb) in x[..rows * k].chunks_exact(QK).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let q = &mut self.qs[b * QK..(b + 1) * QK];
            let mut qsum = 0i32;
            for (qi, &v) in q.iter_mut().zip(xb) {
                let r = (v * inv).round() as i32;
                *qi = r.clamp(-127, 127) as i8;
                qsum += *qi as i32;
            }
            self.d[b] = d;
            self.qsum[b] = d * qsum as f32;
        }
        if pair_order {
            let mut tmp = [0i8; 2 * QK];
            for pair in self.qs.chunks_exact_mut(2 * QK) {
                let (b0, b1) = pair.split_at(QK);
                tmp[..16].copy_from_slice(&b0[..16]);
                tmp[16..32].copy_from_slice(&b1[..16]);
                tmp[32..48].copy_from_slice(&b0[16..]);
                tmp[48..].copy_from_slice(&b1[16..]);
                pair.copy_from_slice(&tmp);
            }
        }
    }
}

/// The dot products of weight rows `r, r + 1, …` with every activation row: `out` holds
/// `out.len() / x.rows` weight rows' results, each `x.rows` long.
type RowKernel = fn(&PackedQ, usize, &QuantizedRows, &mut [f32]);

/// A one-row kernel applied row by row.
fn each_row(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32], one: fn(&PackedQ, usize, &QuantizedRows, &mut [f32])) {
    for (i, o) in out.chunks_exact_mut(x.rows).enumerate() {
        one(w, r + i, x, o);
    }
}

/// A row kernel and how it wants the activations laid out.
#[derive(Clone, Copy)]
struct Kernel {
    rows_dot: RowKernel,
    pair_order: bool,
    /// Per-lane activation data to compute after quantizing (`vnni::prepare`).
    prepare: Option<fn(&mut QuantizedRows, QKind)>,
}

impl Kernel {
    fn quantize(&self, xq: &mut QuantizedRows, x: &[f32], rows: usize, w: &PackedQ) {
        xq.quantize(x, rows, w.k, self.pair_order);
        if let Some(p) = self.prepare {
            p(xq, w.kind);
        }
    }
}

const PORTABLE: Kernel = Kernel { rows_dot: portable_rows_dot, pair_order: false, prepare: None };

/// The fastest kernel for `w` on this CPU.
fn row_kernel(w: &PackedQ) -> Kernel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::env::var_os("FLINT_QMATMUL_NO_AVX512").is_none() && vnni::handles(w) {
            return vnni::kernel(w.kind);
        }
        if x86::available() {
            return Kernel { rows_dot: x86::rows_dot, pair_order: false, prepare: None };
        }
    }
    let _ = w;
    PORTABLE
}

/// Every kernel this CPU can run for `w` (tests compare them with the portable one).
#[cfg(test)]
fn all_kernels(w: &PackedQ) -> Vec<(&'static str, Kernel)> {
    let mut v = vec![("portable", PORTABLE)];
    #[cfg(target_arch = "x86_64")]
    {
        if x86::available() {
            v.push(("avx2", Kernel { rows_dot: x86::rows_dot, pair_order: false, prepare: None }));
        }
        if vnni::handles(w) {
            v.push(("avx512-vnni", vnni::kernel(w.kind)));
        }
    }
    let _ = w;
    v
}

/// The portable kernel: the same arithmetic as the SIMD ones (integer block dots, then scaled).
pub(crate) fn portable_rows_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    each_row(w, r, x, out, portable_row_dot)
}

fn portable_row_dot(w: &PackedQ, r: usize, x: &QuantizedRows, out: &mut [f32]) {
    assert!(!x.pair_order, "activations quantized for another kernel");
    let kb = w.blocks_per_row();
    let qb = w.kind.quant_bytes();
    for (t, o) in out.iter_mut().enumerate().take(x.rows) {
        let mut acc = 0f32;
        for b in 0..kb {
            let wi = r * kb + b;
            let xi = t * kb + b;
            let wq = &w.qs[wi * qb..(wi + 1) * qb];
            let xq = &x.qs[xi * QK..(xi + 1) * QK];
            let dot: i32 = match w.kind {
                QKind::Q4_0 | QKind::Q4_1 => (0..16)
                    .map(|j| (wq[j] & 0x0f) as i32 * xq[j] as i32 + (wq[j] >> 4) as i32 * xq[j + 16] as i32)
                    .sum(),
                QKind::Q5_0 | QKind::Q5_1 => (0..QK).map(|j| wq[j] as i32 * xq[j] as i32).sum(),
                QKind::Q8_0 => (0..QK).map(|j| wq[j] as i8 as i32 * xq[j] as i32).sum(),
            };
            acc += w.d[wi] * (x.d[xi] * dot as f32);
            acc += match w.kind {
                QKind::Q4_0 => -8.0 * w.d[wi] * x.qsum[xi],
                QKind::Q5_0 => -16.0 * w.d[wi] * x.qsum[xi],
                QKind::Q4_1 | QKind::Q5_1 => w.m[wi] * x.qsum[xi],
                QKind::Q8_0 => 0.0,
            };
        }
        *o = acc;
    }
}

/// Output rows per rayon task: enough work to amortize a task, enough tasks to balance.
const ROWS_PER_TASK: usize = 64;

/// Writes `y [rows, n]` for `x` already quantized.
fn matmul_into(w: &PackedQ, x: &QuantizedRows, y: &mut [f32], kernel: RowKernel) {
    let (n, rows) = (w.n, x.rows);
    // Work per task is a run of output rows; results land transposed in a scratch strip and
    // are scattered into `y` (row-major [rows, n]) afterwards.
    let mut strips = vec![0f32; n * rows];
    strips.par_chunks_mut(ROWS_PER_TASK * rows).enumerate().for_each(|(task, strip)| {
        kernel(w, task * ROWS_PER_TASK, x, strip);
    });
    for r in 0..n {
        for t in 0..rows {
            y[t * n + r] = strips[r * rows + t];
        }
    }
}

struct QMatmulOp<'a> {
    w: &'a PackedQ,
}

impl CustomOp1 for QMatmulOp<'_> {
    fn name(&self) -> &'static str {
        "flint-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = match s {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("qmatmul: activations must be f32"),
        };
        let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("qmatmul: x must be contiguous") };
        let (rows, k) = l.shape().dims2()?;
        if k != self.w.k {
            candle_core::bail!("qmatmul: x has {k} columns, the weight {}", self.w.k);
        }
        let kernel = row_kernel(self.w);
        let mut xq = QuantizedRows::default();
        kernel.quantize(&mut xq, &x[start..end], rows, self.w);
        let mut y = vec![0f32; rows * self.w.n];
        matmul_into(self.w, &xq, &mut y, kernel.rows_dot);
        Ok((CpuStorage::F32(y), Shape::from((rows, self.w.n))))
    }
}

/// `x [T, K]` (f32, CPU) times `wᵀ` → `[T, N]`.
pub fn qmatmul(x: &Tensor, w: &PackedQ) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        candle_core::bail!("qmatmul runs on f32 CPU tensors (got {:?} on {:?})", x.dtype(), x.device());
    }
    x.contiguous()?.apply_op1_no_bwd(&QMatmulOp { w })
}
