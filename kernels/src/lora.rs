//! Batched multi-adapter LoRA ("BGMV"): every token of a batch gets the low-rank delta of its
//! own adapter, read from stacked per-slot weights, so one forward pass serves many adapters
//! (and the base model) without merging anything into the base weights.
//!
//! For token `t` in slot `s = token_slots[t]` the delta is
//! `scale[s] * Bt[s][..rank[s], :]ᵀ @ (A[s][..rank[s], :] @ x[t])`, where `Bt` holds each
//! adapter's B transposed (`[rank, out]`, so the expand step is a run of contiguous
//! multiply-adds over the outputs); tokens with
//! [`NO_SLOT`], or whose slot has scale 0 for this layer (adapter absent or not targeting it),
//! get zeros.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::elem::{contiguous_slice, Elem};
use crate::device_cache::DeviceCache;

/// The slot of a token that uses no adapter.
pub const NO_SLOT: u32 = u32::MAX;

/// Which adapter slot each token of one forward pass uses; built once per step and shared by
/// every LoRA layer (the GPU copy is uploaded once, on first use).
#[derive(Clone, Debug, Default)]
pub struct LoraTokens {
    /// One entry per token row: a slot index, or [`NO_SLOT`].
    pub token_slots: Vec<u32>,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) device: DeviceCache,
}

impl LoraTokens {
    pub fn new(token_slots: Vec<u32>) -> Self {
        Self { token_slots, device: DeviceCache::default() }
    }

    /// True when no token uses an adapter (the LoRA layers can skip the op).
    pub fn is_empty(&self) -> bool {
        self.token_slots.iter().all(|&s| s == NO_SLOT)
    }
}

/// One slot's parameters for one layer: the adapter's scaling (`lora_alpha / r`, or
/// `/ sqrt(r)` with rsLoRA; 0 = the slot contributes nothing here) and its rank (rows of the
/// stacked A that are in use; the rest are zero padding).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotParams {
    pub scale: f32,
    pub rank: u32,
}

pub(crate) struct LoraDelta<'a> {
    pub(crate) tokens: &'a LoraTokens,
    pub(crate) slots: &'a [SlotParams],
}

/// Tokens per work item: a run of consecutive tokens in one slot (a prefill chunk) reads each
/// A and B row once for all of them instead of once per token.
const RUN: usize = 8;
/// Runs at least this long (f32 only) go through gemm, several times faster than the loops.
const GEMM_MIN: usize = 32;

impl LoraDelta<'_> {
    fn run<T: Elem>(&self, x: &[T], a: &[T], b: &[T], dims: (usize, usize, usize)) -> Vec<T> {
        let (max_rank, d_in, d_out) = dims;
        let slots = &self.tokens.token_slots;
        let mut out = vec![T::from_f32(0.0); slots.len() * d_out];
        // Work items: (first token, slot, params) over runs of up to RUN tokens in one active
        // slot; tokens without an active slot keep their zero rows.
        let use_gemm = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
        let mut items: Vec<(usize, usize, SlotParams)> = Vec::new();
        let mut rows: Vec<&mut [T]> = Vec::new();
        let mut rest: &mut [T] = &mut out;
        let mut t = 0;
        while t < slots.len() {
            let s = slots[t];
            let active = self.slots.get(s as usize).copied().filter(|p| p.scale != 0.0);
            let mut n = 1;
            while t + n < slots.len() && slots[t + n] == s && (n < RUN || use_gemm) {
                n += 1;
            }
            if n > RUN && n < GEMM_MIN {
                n = RUN; // the rest of this run is the next item
            }
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n * d_out);
            rest = tail;
            match active {
                Some(p) if n >= GEMM_MIN => {
                    let rank = (p.rank as usize).min(max_rank);
                    // SAFETY: T is f32 (checked through TypeId above), so the casts are identities.
                    let cast = |v: &[T]| unsafe { std::slice::from_raw_parts(v.as_ptr() as *const f32, v.len()) };
                    let head = unsafe { std::slice::from_raw_parts_mut(head.as_mut_ptr() as *mut f32, head.len()) };
                    let a_s = &cast(a)[s as usize * max_rank * d_in..][..rank * d_in];
                    let b_s = &cast(b)[s as usize * max_rank * d_out..][..rank * d_out];
                    gemm_run(&cast(x)[t * d_in..][..n * d_in], a_s, b_s, p.scale, head, (n, rank, d_in, d_out));
                }
                Some(p) => {
                    items.push((t, s as usize, p));
                    rows.push(head);
                }
                None => {}
            }
            t += n;
        }
        items.into_par_iter().zip(rows).for_each(|((t0, s, p), rows)| {
            let n = rows.len() / d_out;
            let rank = (p.rank as usize).min(max_rank);
            let xs = &x[t0 * d_in..][..n * d_in];
            // shrink: mid[j][r] = scale * A[s][r] . x[t0 + j]
            let mut mid = vec![0f32; n * rank];
            for r in 0..rank {
                let arow = &a[(s * max_rank + r) * d_in..][..d_in];
                for (j, xt) in xs.chunks_exact(d_in).enumerate() {
                    mid[j * rank + r] = p.scale * dot(arow, xt);
                }
            }
            // expand: out[j] = sum_r mid[j][r] * Bt[s][r], accumulated in f32
            let mut acc = vec![0f32; d_out];
            for j in 0..n {
                acc.iter_mut().for_each(|v| *v = 0.0);
                for r in 0..rank {
                    let m = mid[j * rank + r];
                    let brow = &b[(s * max_rank + r) * d_out..][..d_out];
                    for (v, w) in acc.iter_mut().zip(brow) {
                        *v += m * w.to_f32();
                    }
                }
                for (y, v) in rows[j * d_out..][..d_out].iter_mut().zip(&acc) {
                    *y = T::from_f32(*v);
                }
            }
        });
        out
    }
}

/// One long same-slot run in f32 through gemm: `out = (scale · x Aᵀ) Bt`, with `x` `[n, d_in]`,
/// `a` `[rank, d_in]`, `bt` `[rank, d_out]`, `out` `[n, d_out]`.
fn gemm_run(x: &[f32], a: &[f32], bt: &[f32], scale: f32, out: &mut [f32], dims: (usize, usize, usize, usize)) {
    let (n, rank, d_in, d_out) = dims;
    if rank == 0 {
        return;
    }
    let par = match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        k => gemm::Parallelism::Rayon(k),
    };
    let mut mid = vec![0f32; n * rank];
    // SAFETY: every pointer/stride pair describes a matrix inside its slice: mid [n, rank] and
    // x [n, d_in] row-major, Aᵀ read as [d_in, rank] (column stride d_in, row stride 1),
    // Bt [rank, d_out] and out [n, d_out] row-major.
    unsafe {
        gemm::gemm(
            n, rank, d_in,
            mid.as_mut_ptr(), 1, rank as isize, false,
            x.as_ptr(), 1, d_in as isize,
            a.as_ptr(), d_in as isize, 1,
            0.0, scale, false, false, false, par,
        );
        gemm::gemm(
            n, d_out, rank,
            out.as_mut_ptr(), 1, d_out as isize, false,
            mid.as_ptr(), 1, rank as isize,
            bt.as_ptr(), 1, d_out as isize,
            0.0, 1.0, false, false, false, par,
        );
    }
}

/// f32 dot product over eight partial sums, so it vectorizes (one running sum is a chain of
/// dependent adds, several times slower).
fn dot<T: Elem, U: Elem>(a: &[T], b: &[U]) -> f32 {
    const L: usize = 8;
    let mut acc = [0f32; L];
    let n = a.len() - a.len() % L;
    for (ca, cb) in a[..n].chunks_exact(L).zip(b[..n].chunks_exact(L)) {
        for l in 0..L {
            acc[l] += ca[l].to_f32() * cb[l].to_f32();
        }
    }
    acc.iter().sum::<f32>() + a[n..].iter().zip(&b[n..]).map(|(x, y)| x.to_f32() * y.to_f32()).sum::<f32>()
}


impl CustomOp3 for LoraDelta<'_> {
    fn name(&self) -> &'static str {
        "lora_delta"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        a: &CpuStorage,
        a_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, max_rank, d_in) = a_l.shape().dims3()?;
        let (_, _, d_out) = b_l.shape().dims3()?;
        let dims = (max_rank, d_in, d_out);
        macro_rules! run {
            ($v:ident, $x:expr, $a:expr, $b:expr) => {
                CpuStorage::$v(self.run(
                    contiguous_slice($x, x_l, "x")?,
                    contiguous_slice($a, a_l, "lora A")?,
                    contiguous_slice($b, b_l, "lora B")?,
                    dims,
                ))
            };
        }
        let out = match (x, a, b) {
            (CpuStorage::F32(x), CpuStorage::F32(a), CpuStorage::F32(b)) => run!(F32, x, a, b),
            (CpuStorage::F16(x), CpuStorage::F16(a), CpuStorage::F16(b)) => run!(F16, x, a, b),
            (CpuStorage::BF16(x), CpuStorage::BF16(a), CpuStorage::BF16(b)) => run!(BF16, x, a, b),
            _ => candle_core::bail!("lora_delta: x, A and B must share one of f32/f16/bf16"),
        };
        Ok((out, Shape::from((self.tokens.token_slots.len(), d_out))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        a: &candle_core::CudaStorage,
        a_l: &Layout,
        b: &candle_core::CudaStorage,
        b_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::lora::delta(self.tokens, self.slots, (x, x_l), (a, a_l), (b, b_l))
    }
}

/// The LoRA deltas of a batch: `x` `[num_tokens, d_in]`, stacked adapters `a`
/// `[num_slots, max_rank, d_in]` (A) and `b` `[num_slots, max_rank, d_out]` (B transposed),
/// zero-padded past each adapter's rank, one slot per token in `tokens`, per-slot `slots` parameters for this layer.
/// Returns `[num_tokens, d_out]` in x's dtype (f32/f16/bf16, the same for all three); rows of
/// tokens without an active adapter are zero. Accumulates in f32.
pub fn lora_delta(x: &Tensor, a: &Tensor, b: &Tensor, tokens: &LoraTokens, slots: &[SlotParams]) -> Result<Tensor> {
    let (t, d_in) = x.dims2()?;
    let (num_slots, max_rank, a_in) = a.dims3()?;
    let (b_slots, b_rank, _) = b.dims3()?;
    if a_in != d_in || b_slots != num_slots || b_rank != max_rank || tokens.token_slots.len() != t || slots.len() != num_slots {
        candle_core::bail!(
            "lora_delta: x {:?}, A {:?}, B {:?}, {} token slots and {} slot params disagree",
            x.shape(),
            a.shape(),
            b.shape(),
            tokens.token_slots.len(),
            slots.len()
        );
    }
    if let Some(s) = tokens.token_slots.iter().find(|&&s| s != NO_SLOT && s as usize >= num_slots) {
        candle_core::bail!("lora_delta: token slot {s} out of range ({num_slots} slots)");
    }
    if x.dtype() != a.dtype() || x.dtype() != b.dtype() || !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("lora_delta: dtypes {:?}/{:?}/{:?} (need one of f32/f16/bf16)", x.dtype(), a.dtype(), b.dtype());
    }
    x.contiguous()?.apply_op3_no_bwd(&a.contiguous()?, &b.contiguous()?, &LoraDelta { tokens, slots })
}

#[cfg(test)]
mod tests;
