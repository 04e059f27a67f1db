//! Differentiable building blocks of the training forward pass, each one graph node.
//!
//! candle's autograd computes the gradient of *both* operands of a matmul even when one is a
//! frozen weight, its fused kernels (rms_norm, softmax, rope) have no backward at all, and
//! every graph node costs an allocation plus a zero-fill and an add in the backward pass.
//! So each op here computes its output with untracked tensor ops on detached inputs and
//! [`attach`]es a hand-written backward that produces only the gradients needed: no
//! `dW = gᵀx` for frozen weights (the lm_head's `[V, H]` gradient is never materialised),
//! and a decoder layer is ~16 nodes instead of ~70.

use std::sync::Mutex;

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor, D};

/// What a backward rule sees: the (detached) inputs, the output's gradient and which inputs
/// want a gradient (the others may get `None`).
pub struct Grad<'a> {
    pub x: &'a [Tensor],
    pub g: &'a Tensor,
    pub needs: &'a [bool],
}

type Backward = Box<dyn Fn(&Grad) -> Result<Vec<Option<Tensor>>> + Send + Sync>;

/// A graph node whose forward value was computed beforehand (`y`, handed over once) and
/// whose backward is `bwd`.
struct Fused {
    name: &'static str,
    y: Mutex<Option<Tensor>>,
    needs: Vec<bool>,
    bwd: Backward,
}

impl Fused {
    /// Hands the precomputed output to candle as this op's storage (one copy of its buffer).
    fn take(&self) -> Result<(Storage, Shape)> {
        let y = self.y.lock().map_err(|_| candle_core::Error::msg("fused op poisoned"))?.take();
        let Some(y) = y else { candle_core::bail!("{}: forward ran twice", self.name) };
        let (storage, layout) = y.storage_and_layout();
        Ok((storage.try_clone(layout)?, layout.shape().clone()))
    }

    fn cpu(&self) -> Result<(CpuStorage, Shape)> {
        match self.take()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: output on another device than the inputs", self.name),
        }
    }

    fn cuda(&self) -> Result<(CudaStorage, Shape)> {
        match self.take()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => candle_core::bail!("{}: output on another device than the inputs", self.name),
        }
    }

    fn backward(&self, args: &[&Tensor], g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // Detached so that the backward computation builds no graph of its own.
        let x: Vec<Tensor> = args.iter().map(|a| a.detach()).collect();
        let mut grads = (self.bwd)(&Grad { x: &x, g, needs: &self.needs })?;
        grads.resize(args.len(), None);
        for (grad, need) in grads.iter_mut().zip(&self.needs) {
            if !need {
                *grad = None;
            }
        }
        Ok(grads)
    }
}

impl CustomOp1 for Fused {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, a: &Tensor, _: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(self.backward(&[a], g)?.swap_remove(0))
    }
}

impl CustomOp2 for Fused {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut v = self.backward(&[a, b], g)?.into_iter();
        Ok((v.next().flatten(), v.next().flatten()))
    }
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu()
    }
    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        self.cuda()
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, c: &Tensor, _: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut v = self.backward(&[a, b, c], g)?.into_iter();
        Ok((v.next().flatten(), v.next().flatten(), v.next().flatten()))
    }
}

/// `y` (computed from `inputs` without tracking) as one graph node whose backward is `bwd`;
/// just `y` when no input needs a gradient.
pub fn attach(
    name: &'static str,
    inputs: &[&Tensor],
    y: Tensor,
    bwd: impl Fn(&Grad) -> Result<Vec<Option<Tensor>>> + Send + Sync + 'static,
) -> Result<Tensor> {
    let needs: Vec<bool> = inputs.iter().map(|t| t.track_op()).collect();
    if !needs.contains(&true) {
        return Ok(y);
    }
    // The op's storage is a copy of y's buffer, so y must start at 0 and be contiguous.
    let y = if y.is_contiguous() && y.layout().start_offset() == 0 { y } else { y.force_contiguous()? };
    let op = Fused { name, y: Mutex::new(Some(y)), needs, bwd: Box::new(bwd) };
    match inputs {
        [a] => a.apply_op1(op),
        [a, b] => a.apply_op2(b, op),
        [a, b, c] => a.apply_op3(b, c, op),
        _ => candle_core::bail!("{name}: 1 to 3 inputs"),
    }
}

/// A trainable low-rank update of a projection: `scale · (x Aᵀ) Bᵀ`.
pub struct LoraWeights<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
}

/// `x Wᵀ (+ bias) (+ scale · (x Aᵀ) Bᵀ)` for a frozen `w` `[out, in]`: `x` `[N, in]` →
/// `[N, out]`. Gradients go to `x` and, when they track, A `[r, in]` and B `[out, r]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, lora: Option<LoraWeights>) -> Result<Tensor> {
    let xd = x.detach();
    let mut y = xd.matmul(&w.t()?)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let w = w.clone();
    let Some(LoraWeights { a, b, scale }) = lora else {
        return attach("linear", &[x], y, move |c| Ok(vec![c.needs[0].then(|| c.g.matmul(&w)).transpose()?]));
    };
    // Scaled at rank width, where it is cheap.
    let y = (y + (xd.matmul(&a.detach().t()?)? * scale)?.matmul(&b.detach().t()?)?)?;
    attach("lora-linear", &[x, a, b], y, move |c| {
        let (x, a, b, g) = (&c.x[0], &c.x[1], &c.x[2], c.g);
        // With u = x Aᵀ: dB = s gᵀu, dA = s (g B)ᵀ x, dx = g W + s (g B) A.
        let gb = (g.matmul(b)? * scale)?;
        let da = gb.t()?.matmul(x)?;
        let db = (g.t()?.matmul(&x.matmul(&a.t()?)?)? * scale)?;
        let dx = if c.needs[0] { Some((g.matmul(&w)? + gb.matmul(a)?)?) } else { None };
        Ok(vec![dx, Some(da), Some(db)])
    })
}

/// RMSNorm with a frozen weight `w` `[D]` over each group of `D` values of `x`'s last
/// dimension (the whole row, or each head for Qwen3's q/k norms): `x · rsqrt(mean(x²) + eps)
/// · w`. The output has `x`'s shape.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let shape = x.shape().clone();
    let d = w.dims1()?;
    let rows = move |t: &Tensor| t.reshape(((), d));
    let y = candle_nn::ops::rms_norm(&rows(&x.detach().contiguous()?)?, w, eps as f32)?.reshape(&shape)?;
    let w = w.clone();
    attach("rms-norm", &[x], y, move |c| {
        // With r = rsqrt(mean(x²) + eps), x̂ = x r and g_w = g ⊙ w:
        // dx = r (g_w - x̂ · mean(g_w ⊙ x̂)).
        let x = rows(&c.x[0])?;
        let r = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
        let xhat = x.broadcast_mul(&r)?;
        let gw = rows(c.g)?.broadcast_mul(&w)?;
        let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
        Ok(vec![Some((gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&r)?.reshape(&shape)?)])
    })
}

/// Rotary embedding ("rotate half" layout) of `x` `[B·T, H·D]` (or any shape of that many
/// values) as `[B, T, H, D]`, with `cos`/`sin` `[T, D / 2]`; `neg_sin = -sin` gives the
/// inverse rotation, which is the backward pass.
pub fn rope(x: &Tensor, bthd: (usize, usize, usize, usize), cos: &Tensor, sin: &Tensor, neg_sin: &Tensor) -> Result<Tensor> {
    let shape = x.shape().clone();
    let y = candle_nn::rotary_emb::rope_thd(&x.detach().contiguous()?.reshape(bthd)?, cos, sin)?;
    let (cos, neg_sin) = (cos.clone(), neg_sin.clone());
    attach("rope", &[x], y, move |c| {
        Ok(vec![Some(candle_nn::rotary_emb::rope_thd(&c.g.contiguous()?, &cos, &neg_sin)?.reshape(&shape)?)])
    })
}

/// Causal self-attention of `q` `[B, T, H, D]` over `k`, `v` `[B, T, KV, D]` (H a multiple of
/// KV) with the additive `mask` `[B, 1, T, T]` → `[B·T, H·D]`.
///
/// Query heads `kv·G .. kv·G + G` share kv head `kv` (HF's `repeat_kv`): viewed as
/// `[B, KV, G·T, D]` they meet their k/v in one batched matmul, so k/v are never repeated and
/// their gradients sum over the group for free.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, t, h, d) = q.dims4()?;
    let kv = k.dim(2)?;
    let (g, scale) = (h / kv, 1.0 / (d as f64).sqrt());
    // [B, T, heads, D] → [B, KV, G·T, D] (q) or [B, KV, T, D] (k, v).
    let heads = move |x: &Tensor, n: usize| x.transpose(1, 2)?.contiguous()?.reshape((b, kv, n * t, d));
    let probs = {
        let mask = mask.clone();
        move |qh: &Tensor, kh: &Tensor| -> Result<Tensor> {
            let scores = (qh.matmul(&kh.t()?)? * scale)?.reshape((b, h, t, t))?.broadcast_add(&mask)?;
            candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kv, g * t, t))
        }
    };
    let (qh, kh, vh) = (heads(&q.detach(), g)?, heads(&k.detach(), 1)?, heads(&v.detach(), 1)?);
    let merge = move |o: &Tensor| o.reshape((b, h, t, d))?.transpose(1, 2)?.reshape((b * t, h * d));
    let y = merge(&probs(&qh, &kh)?.matmul(&vh)?)?;
    attach("attention", &[q, k, v], y, move |c| {
        let (qh, kh, vh) = (heads(&c.x[0], g)?, heads(&c.x[1], 1)?, heads(&c.x[2], 1)?);
        // Recomputed rather than kept: [B, H, T, T] is the largest activation of a layer.
        let p = probs(&qh, &kh)?;
        let go = c.g.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()?.reshape((b, kv, g * t, d))?;
        let dv = p.t()?.matmul(&go)?;
        let dp = go.matmul(&vh.t()?)?;
        // Softmax backward, then the score scale.
        let ds = ((dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)? * &p)? * scale)?;
        let dq = ds.matmul(&kh)?.reshape((b, h, t, d))?.transpose(1, 2)?;
        let dk = ds.t()?.matmul(&qh)?.transpose(1, 2)?;
        Ok(vec![Some(dq), Some(dk), Some(dv.transpose(1, 2)?)])
    })
}

/// The gated MLP's activation `silu(gate) ⊙ up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let y = (gate.detach().silu()? * up.detach())?;
    attach("silu-mul", &[gate, up], y, |c| {
        let (gate, up, g) = (&c.x[0], &c.x[1], c.g);
        let sig = candle_nn::ops::sigmoid(gate)?;
        let silu = (gate * &sig)?;
        // silu'(x) = σ(x) (1 + x (1 - σ(x))).
        let dsilu = (&sig * ((gate * (1.0 - &sig)?)? + 1.0)?)?;
        Ok(vec![Some(((g * up)? * dsilu)?), Some((g * silu)?)])
    })
}

/// Per-row cross-entropy: `z` `[N, V]` logits, `targets` `u32 [N]` → `[N]`
/// `logsumexp(z) - z[target]`. The backward pass is `(softmax(z) - onehot(target)) · dy`,
/// without the `[N, V]` intermediates of the composed ops.
pub fn cross_entropy(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let zd = z.detach().contiguous()?;
    let idx = targets.unsqueeze(1)?;
    let max = zd.max_keepdim(D::Minus1)?;
    let lse = (zd.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?;
    let ce = (lse - zd.gather(&idx, D::Minus1)?)?.squeeze(1)?;
    attach("cross-entropy", &[z], ce, move |c| {
        let g = c.g.unsqueeze(1)?;
        let p = candle_nn::ops::softmax_last_dim(&c.x[0].contiguous()?)?.broadcast_mul(&g)?;
        Ok(vec![Some(p.scatter_add(&idx, &g.neg()?, D::Minus1)?)])
    })
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
