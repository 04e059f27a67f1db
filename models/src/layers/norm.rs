//! RMSNorm as the decoder uses it: plain for the first layer's input, fused with the residual
//! add everywhere after (flint-kernels' `add_rms_norm`), so the residual stream is read once.

use candle_core::{Result, Tensor};
use crate::layers::weights::Vb;

#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(size: usize, eps: f64, vb: Vb) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, eps: eps as f32 })
    }

    /// `x` `[.., size]` normalised.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)
    }

    /// `(norm(x + residual), x + residual)`: the normalised input of the next block and the
    /// new residual.
    pub fn add_forward(&self, x: &Tensor, residual: &Tensor) -> Result<(Tensor, Tensor)> {
        flint_kernels::add_rms_norm(x, residual, &self.weight, self.eps)
    }
}
