//! Sampling on the device: a batch of logits rows `[rows, vocab]` in, one token id per row out,
//! so the engine copies back `rows` u32 rather than `rows × vocab` logits.
//!
//! [`sample_rows`] takes one [`RowSampling`] per row (temperature, top-k, top-p, min-p and the
//! row's random draw, made by the engine) and sparse [`LogitAdjust`] entries (logit bias,
//! penalties, `min_tokens` bans). Per row, on the CPU and on CUDA alike:
//!
//! 1. `x_i = f32(logits[r, i])`, NaN counting as -inf; the row's adjustments apply:
//!    `x' = s(x + bias) + add` with `s(y) = y · pos_scale` for `y > 0`, else `y · neg_scale`
//!    (a NaN result counts as -inf again).
//! 2. Greedy (temperature 0 or top-k 1): the argmax of the adjusted row, first index on ties.
//!    When no adjusted value is above -inf: the argmax of the raw row (0 if that is all -inf too).
//! 3. Otherwise with `m = max x`: `m = -inf` falls back as above, `m = +inf` gives the first
//!    +inf; else weights `w_i = exp((x_i - m) / T)` (the maximum's is exactly 1, -inf's 0).
//! 4. Along the total order "x descending, lower index first on ties" (the engine's
//!    `by_value_desc`), and never keeping a zero weight: top-k keeps the first k tokens; top-p
//!    keeps the shortest prefix of what top-k kept whose mass reaches `top_p` × its mass; min-p
//!    then drops `w < min_p` (= probability below `min_p` × the top probability). All three
//!    keep a prefix of the order, so the first token always stays.
//! 5. The draw: `target = uniform × Σ kept w`, then the kept tokens in vocabulary order,
//!    accumulating `w`; the first index where `target < cumulative` wins (the last kept index
//!    if rounding left none, which the fixed point below rules out).
//!
//! **Fixed point.** The mass arithmetic (top-p's prefix sums and the draw) is done on
//! `q_i = floor(w_i · 2³²)` as u64 integers, not on floats: integer sums are exact and
//! independent of summation order, so the GPU's parallel histograms and scans give the same
//! sums as the CPU's sequential loops. The two float-to-integer steps are single IEEE f64
//! operations, identical everywhere: top-p keeps the shortest prefix with
//! `Σ q ≥ ceil(top_p · Σ_topk q)`, and the draw's target is `floor(uniform · Σ_kept q)` (always
//! below the total, as the top token alone has `q = 2³²`). Weights are computed with one exp
//! implementation written twice ([`cpu`]'s `exp`, a Cephes polynomial, and its transcription
//! in `kernels/cuda/sampling.cu` with every rounding explicit, so nvcc cannot contract to FMA),
//! and so are the adjustments and `(x - m) / T`: CPU and CUDA give bit-identical weights and
//! hence the same token for the same inputs. Weights below 2⁻³² have `q = 0`: they can be kept
//! but never drawn, like the ~1e-10 probability they stand for.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

mod cpu;

/// The sampler's `exp` (Cephes' `expf` polynomial, ~2 ulp, 0 below -87), shared with the
/// engine's host sampler so both weigh tokens with one function.
pub use cpu::exp;
/// The sampler's row maximum (NaN ignored; -inf for an empty row), shared with the engine's
/// host sampler.
pub use cpu::row_max;
#[cfg(test)]
mod tests;

/// One row's sampling parameters (the engine has validated them).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowSampling {
    /// 0: greedy (argmax, first index on ties).
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// 1.0: off; in (0, 1].
    pub top_p: f32,
    /// 0: off; in [0, 1].
    pub min_p: f32,
    /// This row's random draw, in [0, 1).
    pub uniform: f32,
}

/// A sparse change of one logit, applied before sampling:
/// `x' = s(x + bias) + add`, where `s(y) = if y > 0 { y * pos_scale } else { y * neg_scale }`.
/// (This is exactly the CPU sampler's order: logit bias, then repetition penalty by sign, then
/// presence/frequency penalties subtracted; a `min_tokens` ban is add = -inf.) At most one
/// entry per (row, token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogitAdjust {
    pub row: u32,
    pub token: u32,
    pub bias: f32,
    pub pos_scale: f32,
    pub neg_scale: f32,
    pub add: f32,
}

impl LogitAdjust {
    /// The adjusted value of `x` (already NaN → -inf); NaN results count as -inf.
    #[inline]
    pub(crate) fn apply(&self, x: f32) -> f32 {
        let y = x + self.bias;
        let s = if y > 0.0 { y * self.pos_scale } else { y * self.neg_scale };
        let v = s + self.add;
        if v.is_nan() {
            f32::NEG_INFINITY
        } else {
            v
        }
    }
}

/// The adjustments sorted by (row, token), with `offsets[r]..offsets[r + 1]` the entries of
/// row `r` (the layout both the CPU path and the CUDA kernel read).
pub(crate) struct Adjustments {
    pub(crate) entries: Vec<LogitAdjust>,
    pub(crate) offsets: Vec<u32>,
}

impl Adjustments {
    /// Sorts and checks `adjust` against a `[rows, vocab]` batch.
    fn new(adjust: &[LogitAdjust], rows: usize, vocab: usize) -> Result<Self> {
        for (n, a) in adjust.iter().enumerate() {
            if a.row as usize >= rows {
                candle_core::bail!("sample_rows: adjust[{n}].row {} out of range ({rows} rows)", a.row);
            }
            if a.token as usize >= vocab {
                candle_core::bail!("sample_rows: adjust[{n}].token {} out of range (vocab {vocab})", a.token);
            }
        }
        let mut entries = adjust.to_vec();
        entries.sort_unstable_by_key(|a| (a.row, a.token));
        if let Some(w) = entries.windows(2).find(|w| (w[0].row, w[0].token) == (w[1].row, w[1].token)) {
            candle_core::bail!("sample_rows: adjust has two entries for row {} token {}", w[0].row, w[0].token);
        }
        if u32::try_from(entries.len()).is_err() {
            candle_core::bail!("sample_rows: adjust has too many entries ({})", entries.len());
        }
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut e = 0;
        for r in 0..=rows {
            while e < entries.len() && (entries[e].row as usize) < r {
                e += 1;
            }
            offsets.push(e as u32);
        }
        Ok(Self { entries, offsets })
    }

    /// Row `r`'s entries, sorted by token.
    pub(crate) fn row(&self, r: usize) -> &[LogitAdjust] {
        &self.entries[self.offsets[r] as usize..self.offsets[r + 1] as usize]
    }
}

fn check_row(n: usize, p: &RowSampling) -> Result<()> {
    if p.temperature.is_nan() || p.temperature < 0.0 {
        candle_core::bail!("sample_rows: rows[{n}].temperature must be >= 0, got {}", p.temperature);
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        candle_core::bail!("sample_rows: rows[{n}].top_p must be in (0, 1], got {}", p.top_p);
    }
    if !(0.0..=1.0).contains(&p.min_p) {
        candle_core::bail!("sample_rows: rows[{n}].min_p must be in [0, 1], got {}", p.min_p);
    }
    if !(0.0..1.0).contains(&p.uniform) {
        candle_core::bail!("sample_rows: rows[{n}].uniform must be in [0, 1), got {}", p.uniform);
    }
    Ok(())
}

/// Whether row `p` is sampled by argmax.
#[inline]
pub(crate) fn is_greedy(p: &RowSampling) -> bool {
    p.temperature == 0.0 || p.top_k == 1
}

/// The custom op: `[rows, vocab]` logits (rows' elements adjacent, any row stride) → `[rows]`
/// u32 token ids on the logits' device.
pub(crate) struct SampleRows {
    pub(crate) rows: Vec<RowSampling>,
    pub(crate) adjust: Adjustments,
}

/// `(rows, vocab, start offset, row stride)` of a 2-D layout whose rows are unit-stride.
pub(crate) fn row_layout(l: &Layout) -> Result<(usize, usize, usize, usize)> {
    let (rows, vocab) = l.shape().dims2()?;
    let stride = l.stride();
    if vocab > 1 && stride[1] != 1 {
        candle_core::bail!("sample_rows: logits rows must be unit-stride, got strides {stride:?}");
    }
    Ok((rows, vocab, l.start_offset(), stride[0]))
}

impl CustomOp1 for SampleRows {
    fn name(&self) -> &'static str {
        "sample_rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab, start, stride) = row_layout(l)?;
        let ids = match s {
            CpuStorage::F32(d) => cpu::sample(d, start, stride, vocab, &self.rows, &self.adjust),
            CpuStorage::F16(d) => cpu::sample(d, start, stride, vocab, &self.rows, &self.adjust),
            CpuStorage::BF16(d) => cpu::sample(d, start, stride, vocab, &self.rows, &self.adjust),
            other => candle_core::bail!("sample_rows: logits dtype {:?} is not f32/f16/bf16", other.dtype()),
        };
        Ok((CpuStorage::U32(ids), Shape::from(rows)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::sampling::sample(self, s, l)
    }
}

/// `logits` [rows, vocab] (f32/f16/bf16, any device, contiguous or not) → one token id per
/// row, on the host: row `r` sampled with `rows[r]` after its `adjust` entries, as the module
/// documentation describes. On CUDA the whole computation runs on the GPU and only the ids
/// come back (the call waits for the GPU); other devices (and the CPU) run the CPU path.
/// Rows whose elements are not adjacent (a transposed batch) are copied first; any row
/// stride is fine. On CUDA, a batch with adjustments takes a vocabulary of at most 327,680
/// (a one-bit-per-token map of the adjusted tokens lives in shared memory).
pub fn sample_rows(logits: &Tensor, rows: &[RowSampling], adjust: &[LogitAdjust]) -> Result<Vec<u32>> {
    let (n, vocab) = match logits.dims() {
        &[n, v] => (n, v),
        dims => candle_core::bail!("sample_rows: logits must be 2-D [rows, vocab], got shape {dims:?}"),
    };
    if !matches!(logits.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("sample_rows: logits dtype {:?} is not f32/f16/bf16", logits.dtype());
    }
    if rows.len() != n {
        candle_core::bail!("sample_rows: rows has {} entries but logits has {n} rows", rows.len());
    }
    for (i, p) in rows.iter().enumerate() {
        check_row(i, p)?;
    }
    if vocab > u32::MAX as usize {
        candle_core::bail!("sample_rows: logits vocab {vocab} too large");
    }
    let adjust = Adjustments::new(adjust, n, vocab)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if vocab == 0 {
        return Ok(vec![0; n]); // as the engine's sampler on an empty row
    }
    let logits = if vocab == 1 || logits.stride()[1] == 1 { logits.clone() } else { logits.contiguous()? };
    let logits = if logits.device().is_cpu() || logits.device().is_cuda() {
        logits
    } else {
        logits.to_device(&Device::Cpu)?
    };
    let ids = logits.apply_op1_no_bwd(&SampleRows { rows: rows.to_vec(), adjust })?;
    ids.to_vec1::<u32>()
}
