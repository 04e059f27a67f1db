//! Fused elementwise kernels of the decoder layer: RMSNorm with the residual add folded in,
//! rotary embedding applied in place, and SiLU-and-mul (two tensors, or one packed `[gate | up]`
//! row as the fused gate-up projection writes it).
//!
//! Each rounds where transformers rounds when it runs in the storage dtype (bf16/f16), so the
//! fused versions track the unfused reference; in f32 they are the plain formulas.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, InplaceOp3, Layout, Result,
    Shape, Tensor,
};
use half::{bf16, f16};
use rayon::prelude::*;

use crate::elem::{contiguous_slice, Elem};

fn check_float(what: &str, dtype: DType) -> Result<()> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("{what}: unsupported dtype {dtype:?} (f32/f16/bf16)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (+ residual)

pub(crate) struct AddRmsNorm {
    pub(crate) eps: f32,
}

impl AddRmsNorm {
    /// One row: `sum = T(x + residual)`, `out = T(w * T(sum * rstd))`.
    fn row<T: Elem>(&self, x: &[T], residual: &[T], w: &[T], out: &mut [T], sum: &mut [T]) {
        let mut sq = 0f32;
        for ((s, a), b) in sum.iter_mut().zip(x).zip(residual) {
            *s = T::from_f32(a.to_f32() + b.to_f32());
            let f = s.to_f32();
            sq += f * f;
        }
        let rstd = 1.0 / (sq / x.len() as f32 + self.eps).sqrt();
        for ((o, s), w) in out.iter_mut().zip(sum.iter()).zip(w) {
            let n = T::from_f32(s.to_f32() * rstd).to_f32();
            *o = T::from_f32(w.to_f32() * n);
        }
    }

    /// `x`, `residual`: `[rows * hidden]`; returns `[2 * rows * hidden]` = normed rows, then sums.
    fn run<T: Elem>(&self, x: &[T], residual: &[T], w: &[T]) -> Vec<T> {
        let hidden = w.len();
        let mut out = vec![T::from_f32(0.0); 2 * x.len()];
        let (normed, sums) = out.split_at_mut(x.len());
        normed
            .par_chunks_mut(hidden)
            .zip(sums.par_chunks_mut(hidden))
            .zip(x.par_chunks(hidden).zip(residual.par_chunks(hidden)))
            .for_each(|((o, s), (x, r))| self.row(x, r, w, o, s));
        out
    }
}

impl CustomOp3 for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add_rms_norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_l: &Layout,
        r: &CpuStorage,
        r_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = match (x, r, w) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(w)) => CpuStorage::F32(self.run(
                contiguous_slice(x, x_l, "x")?,
                contiguous_slice(r, r_l, "residual")?,
                contiguous_slice(w, w_l, "weight")?,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(w)) => CpuStorage::F16(self.run::<f16>(
                contiguous_slice(x, x_l, "x")?,
                contiguous_slice(r, r_l, "residual")?,
                contiguous_slice(w, w_l, "weight")?,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(w)) => CpuStorage::BF16(self.run::<bf16>(
                contiguous_slice(x, x_l, "x")?,
                contiguous_slice(r, r_l, "residual")?,
                contiguous_slice(w, w_l, "weight")?,
            )),
            _ => candle_core::bail!("add_rms_norm: x, residual and weight must share one of f32/f16/bf16"),
        };
        let mut dims = vec![2];
        dims.extend_from_slice(x_l.dims());
        Ok((out, Shape::from(dims)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_l: &Layout,
        r: &candle_core::CudaStorage,
        r_l: &Layout,
        w: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fused::add_rms_norm(self.eps, x, x_l, r, r_l, w, w_l)
    }
}

/// `residual + x` and its RMSNorm in one pass: returns `(normed, sum)` where
/// `sum = residual + x` (rounded to the dtype) and `normed = weight * (sum / rms(sum))`, as
/// HF's LlamaRMSNorm computes it (`[.., hidden]` for `x` and `residual`, `[hidden]` for
/// `weight`; f32/f16/bf16, all three the same). `sum` is the next layer's residual.
pub fn add_rms_norm(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    let hidden = weight.dims1()?;
    if x.dims() != residual.dims() || x.dims().last() != Some(&hidden) || x.dtype() != residual.dtype() || x.dtype() != weight.dtype() {
        candle_core::bail!(
            "add_rms_norm: x {:?} {:?}, residual {:?} {:?}, weight {:?} {:?} disagree",
            x.shape(), x.dtype(), residual.shape(), residual.dtype(), weight.shape(), weight.dtype()
        );
    }
    check_float("add_rms_norm", x.dtype())?;
    let both = x
        .contiguous()?
        .apply_op3_no_bwd(&residual.contiguous()?, &weight.contiguous()?, &AddRmsNorm { eps })?;
    Ok((both.get(0)?, both.get(1)?))
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding, in place

pub(crate) struct Rotary;

impl Rotary {
    fn run<T: Elem>(x: &mut [T], cos: &[T], sin: &[T], head_dim: usize) {
        let half = head_dim / 2;
        let tokens = cos.len() / half;
        let per_token = x.len() / tokens;
        x.par_chunks_mut(per_token).enumerate().for_each(|(t, xt)| {
            let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
            for head in xt.chunks_mut(head_dim) {
                let (lo, hi) = head.split_at_mut(half);
                for (((a, b), c), s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
                    let (fa, fb, fc, fs) = (a.to_f32(), b.to_f32(), c.to_f32(), s.to_f32());
                    *a = T::from_f32(fa * fc - fb * fs);
                    *b = T::from_f32(fb * fc + fa * fs);
                }
            }
        });
    }
}

impl InplaceOp3 for Rotary {
    fn name(&self) -> &'static str {
        "rotary_inplace"
    }

    fn cpu_fwd(
        &self,
        x: &mut CpuStorage,
        x_l: &Layout,
        cos: &CpuStorage,
        cos_l: &Layout,
        sin: &CpuStorage,
        sin_l: &Layout,
    ) -> Result<()> {
        let head_dim = *x_l.dims().last().expect("checked rank 3 in rotary_inplace");
        let (start, end) = x_l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::msg("rotary_inplace: x must be contiguous"))?;
        match (x, cos, sin) {
            (CpuStorage::F32(x), CpuStorage::F32(c), CpuStorage::F32(s)) => Self::run(
                &mut x[start..end],
                contiguous_slice(c, cos_l, "cos")?,
                contiguous_slice(s, sin_l, "sin")?,
                head_dim,
            ),
            (CpuStorage::F16(x), CpuStorage::F16(c), CpuStorage::F16(s)) => Self::run(
                &mut x[start..end],
                contiguous_slice(c, cos_l, "cos")?,
                contiguous_slice(s, sin_l, "sin")?,
                head_dim,
            ),
            (CpuStorage::BF16(x), CpuStorage::BF16(c), CpuStorage::BF16(s)) => Self::run(
                &mut x[start..end],
                contiguous_slice(c, cos_l, "cos")?,
                contiguous_slice(s, sin_l, "sin")?,
                head_dim,
            ),
            _ => candle_core::bail!("rotary_inplace: x, cos and sin must share one of f32/f16/bf16"),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &mut candle_core::CudaStorage,
        x_l: &Layout,
        cos: &candle_core::CudaStorage,
        cos_l: &Layout,
        sin: &candle_core::CudaStorage,
        sin_l: &Layout,
    ) -> Result<()> {
        crate::cuda::fused::rotary(x, x_l, cos, cos_l, sin, sin_l)
    }
}

/// Rotates `x` `[tokens, heads, head_dim]` in place by each token's angles, HF's "rotate half"
/// layout: `(a, b) = (x[i], x[i + d/2])` becomes `(a·cos − b·sin, b·cos + a·sin)` with
/// `cos`/`sin` `[tokens, head_dim / 2]`. `x` must be contiguous and own its storage (nothing
/// else may read it expecting the unrotated values). f32/f16/bf16, all three the same.
pub fn rotary_inplace(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<()> {
    let (t, _, d) = x.dims3()?;
    if d % 2 != 0 || cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        candle_core::bail!(
            "rotary_inplace: x {:?} {:?}, cos {:?} {:?}, sin {:?} disagree",
            x.shape(), x.dtype(), cos.shape(), cos.dtype(), sin.shape()
        );
    }
    check_float("rotary_inplace", x.dtype())?;
    if !x.is_contiguous() {
        candle_core::bail!("rotary_inplace: x must be contiguous");
    }
    x.inplace_op3(&cos.contiguous()?, &sin.contiguous()?, &Rotary)
}

// ---------------------------------------------------------------------------------------------
// SiLU and mul

/// Elements per parallel work item of the SiLU-and-mul loops.
const SILU_CHUNK: usize = 4096;

/// `out = T(T(silu(g)) * u)` elementwise: the one per-element formula of both SiLU-and-mul
/// forms, so the packed one rounds exactly like the two-tensor one.
#[inline]
fn silu_mul_slice<T: Elem>(gate: &[T], up: &[T], out: &mut [T]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        let g = g.to_f32();
        let act = T::from_f32(g / (1.0 + (-g).exp())).to_f32();
        *o = T::from_f32(act * u.to_f32());
    }
}

pub(crate) struct SiluAndMul;

impl SiluAndMul {
    fn run<T: Elem>(gate: &[T], up: &[T]) -> Vec<T> {
        let mut out = vec![T::from_f32(0.0); gate.len()];
        out.par_chunks_mut(SILU_CHUNK)
            .zip(gate.par_chunks(SILU_CHUNK).zip(up.par_chunks(SILU_CHUNK)))
            .for_each(|(o, (g, u))| silu_mul_slice(g, u, o));
        out
    }
}

impl CustomOp2 for SiluAndMul {
    fn name(&self) -> &'static str {
        "silu_and_mul"
    }

    fn cpu_fwd(&self, g: &CpuStorage, g_l: &Layout, u: &CpuStorage, u_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (g, u) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => {
                CpuStorage::F32(Self::run(contiguous_slice(g, g_l, "gate")?, contiguous_slice(u, u_l, "up")?))
            }
            (CpuStorage::F16(g), CpuStorage::F16(u)) => {
                CpuStorage::F16(Self::run(contiguous_slice(g, g_l, "gate")?, contiguous_slice(u, u_l, "up")?))
            }
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => {
                CpuStorage::BF16(Self::run(contiguous_slice(g, g_l, "gate")?, contiguous_slice(u, u_l, "up")?))
            }
            _ => candle_core::bail!("silu_and_mul: gate and up must share one of f32/f16/bf16"),
        };
        Ok((out, g_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        g: &candle_core::CudaStorage,
        g_l: &Layout,
        u: &candle_core::CudaStorage,
        u_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::fused::silu_and_mul(g, g_l, u, u_l)
    }
}

/// `silu(gate) * up` elementwise (the gated MLP's activation), same shape and dtype
/// (f32/f16/bf16) for both.
pub fn silu_and_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() || gate.dtype() != up.dtype() {
        candle_core::bail!("silu_and_mul: gate {:?} and up {:?} disagree", gate.shape(), up.shape());
    }
    check_float("silu_and_mul", gate.dtype())?;
    gate.contiguous()?.apply_op2_no_bwd(&up.contiguous()?, &SiluAndMul)
}

pub(crate) struct SiluAndMulPacked;

impl SiluAndMulPacked {
    /// `x` rows of `[gate (inter) | up (inter)]` → rows of `inter`.
    fn run<T: Elem>(x: &[T], inter: usize) -> Vec<T> {
        if inter == 0 {
            return Vec::new();
        }
        let mut out = vec![T::from_f32(0.0); x.len() / 2];
        // One item per row (a prefill batch), split further along wide rows so a single decode
        // token still spreads over the cores like the two-tensor form does.
        out.par_chunks_mut(inter).zip(x.par_chunks(2 * inter)).for_each(|(o, row)| {
            let (gate, up) = row.split_at(inter);
            o.par_chunks_mut(SILU_CHUNK)
                .zip(gate.par_chunks(SILU_CHUNK).zip(up.par_chunks(SILU_CHUNK)))
                .for_each(|(o, (g, u))| silu_mul_slice(g, u, o));
        });
        out
    }
}

/// `[.., 2 * inter]` → `[.., inter]`.
fn halved(shape: &Shape) -> Result<Shape> {
    let mut dims = shape.dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last % 2 == 0 => *last /= 2,
        _ => candle_core::bail!("silu_and_mul_packed: last dim of {shape:?} must be even (gate | up)"),
    }
    Ok(Shape::from(dims))
}

impl CustomOp1 for SiluAndMulPacked {
    fn name(&self) -> &'static str {
        "silu_and_mul_packed"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out_shape = halved(x_l.shape())?;
        let inter = out_shape.dims().last().copied().unwrap_or(0);
        let out = match x {
            CpuStorage::F32(x) => CpuStorage::F32(Self::run(contiguous_slice(x, x_l, "x")?, inter)),
            CpuStorage::F16(x) => CpuStorage::F16(Self::run(contiguous_slice(x, x_l, "x")?, inter)),
            CpuStorage::BF16(x) => CpuStorage::BF16(Self::run(contiguous_slice(x, x_l, "x")?, inter)),
            _ => candle_core::bail!("silu_and_mul_packed: x must be f32/f16/bf16"),
        };
        Ok((out, out_shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, x: &candle_core::CudaStorage, x_l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        let out_shape = halved(x_l.shape())?;
        crate::cuda::fused::silu_and_mul_packed(x, x_l, out_shape)
    }
}

/// [`silu_and_mul`] on one packed tensor: `x` `[.., 2 * inter]` holds `[gate | up]` along its
/// last dim (the fused gate-up projection's output); returns `silu(gate) * up` `[.., inter]`,
/// rounded exactly as [`silu_and_mul`] rounds (f32/f16/bf16).
pub fn silu_and_mul_packed(x: &Tensor) -> Result<Tensor> {
    check_float("silu_and_mul_packed", x.dtype())?;
    halved(x.shape())?;
    x.contiguous()?.apply_op1_no_bwd(&SiluAndMulPacked)
}

#[cfg(test)]
mod tests;
