//! Launch of `kernels/cuda/lora.cu` (placeholder until the CUDA kernel lands).

use candle_core::cuda_backend::CudaStorage;
use candle_core::{Layout, Result, Shape};

use crate::lora::{LoraTokens, SlotParams};

pub(crate) fn delta(
    _tokens: &LoraTokens,
    _slots: &[SlotParams],
    _x: (&CudaStorage, &Layout),
    _a: (&CudaStorage, &Layout),
    _b: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    candle_core::bail!("lora_delta: no CUDA kernel yet")
}
