//! [`Proj`]: a projection of the decoder (q/k/v/o, gate/up/down) that can also add per-token
//! LoRA deltas. The adapters live in stacked slot tensors (`A [slots, max_rank, in]` and B
//! transposed, `[slots, max_rank, out]`, zero-padded past each adapter's rank); each token picks its
//! slot, so one pass serves many adapters and the base weights are never modified.

use std::sync::Mutex;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{linear_b, Linear, VarBuilder};
use flint_kernels::{lora_delta, LoraTokens, SlotParams};

use crate::lora::TargetModule;

#[derive(Debug)]
struct LoraStack {
    a: Tensor,
    b: Tensor,
    /// Per slot: the adapter's scale and rank in this projection (scale 0: slot unused here).
    params: Mutex<Vec<SlotParams>>,
}

#[derive(Debug)]
pub struct Proj {
    base: Linear,
    pub module: TargetModule,
    d_in: usize,
    d_out: usize,
    lora: Option<LoraStack>,
}

impl Proj {
    pub fn load(d_in: usize, d_out: usize, bias: bool, module: TargetModule, vb: VarBuilder) -> Result<Self> {
        Ok(Self { base: linear_b(d_in, d_out, bias, vb)?, module, d_in, d_out, lora: None })
    }

    /// `x` `[T, in]` → `[T, out]`, plus each token's LoRA delta when `lora` names slots.
    pub fn forward(&self, x: &Tensor, lora: Option<&LoraTokens>) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let (Some(stack), Some(tokens)) = (&self.lora, lora) else { return Ok(y) };
        let params = stack.params.lock().map_err(|_| candle_core::Error::msg("LoRA slot table poisoned"))?.clone();
        if tokens.is_empty() || params.iter().all(|p| p.scale == 0.0) {
            return Ok(y);
        }
        y + lora_delta(x, &stack.a, &stack.b, tokens, &params)?
    }

    /// Allocates `slots` empty LoRA slots of rank up to `max_rank`.
    pub fn enable_lora(&mut self, slots: usize, max_rank: usize, dtype: DType, device: &Device) -> Result<()> {
        self.lora = Some(LoraStack {
            a: Tensor::zeros((slots, max_rank, self.d_in), dtype, device)?,
            b: Tensor::zeros((slots, max_rank, self.d_out), dtype, device)?,
            params: Mutex::new(vec![SlotParams::default(); slots]),
        });
        Ok(())
    }

    /// Writes `pair` (A `[r, in]`, B `[out, r]`, any float dtype, host or device) into `slot`
    /// with `scale`; `None` leaves the slot unused by this projection.
    pub fn set_slot(&self, slot: usize, pair: Option<(&Tensor, &Tensor)>, scale: f32) -> Result<()> {
        let Some(stack) = &self.lora else { candle_core::bail!("LoRA is not enabled on this model") };
        let (slots, max_rank, _) = stack.a.dims3()?;
        if slot >= slots {
            candle_core::bail!("LoRA slot {slot} out of range ({slots} slots)");
        }
        let mut params = stack.params.lock().map_err(|_| candle_core::Error::msg("LoRA slot table poisoned"))?;
        let Some((a, b)) = pair else {
            params[slot] = SlotParams::default();
            return Ok(());
        };
        let r = a.dim(0)?;
        if r > max_rank || a.dims() != [r, self.d_in] || b.dims() != [self.d_out, r] {
            candle_core::bail!("LoRA weights A {:?} / B {:?} do not fit {:?} (max rank {max_rank})", a.shape(), b.shape(), self.module);
        }
        let (dtype, dev) = (stack.a.dtype(), stack.a.device().clone());
        let pad_a = Tensor::zeros((max_rank - r, self.d_in), DType::F32, a.device())?;
        let pad_b = Tensor::zeros((max_rank - r, self.d_out), DType::F32, b.device())?;
        let a = Tensor::cat(&[&a.to_dtype(DType::F32)?, &pad_a], 0)?;
        let b = Tensor::cat(&[&b.to_dtype(DType::F32)?.t()?, &pad_b], 0)?;
        stack.a.slice_set(&a.to_dtype(dtype)?.to_device(&dev)?.unsqueeze(0)?, 0, slot)?;
        stack.b.slice_set(&b.to_dtype(dtype)?.to_device(&dev)?.unsqueeze(0)?, 0, slot)?;
        params[slot] = SlotParams { scale, rank: r as u32 };
        Ok(())
    }
}
