//! Launches of `kernels/cuda/lora.cu`: `lora_shrink_*` (x · Aᵀ into an f32 buffer of rank
//! values, scaled) then `lora_expand_*` (that buffer · Bᵀ).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{Layout, Result, Shape};

use super::{suffix, upload, view, with_float, Kernel, LORA_MODULE};
use crate::lora::{LoraTokens, SlotParams};

/// Threads per CUDA block of both kernels.
const THREADS: u32 = 128;
/// Rank values per shrink block: one per warp.
const SHRINK_WARPS: usize = THREADS as usize / 32;

/// [`LoraTokens::token_slots`] on the device, uploaded once per forward pass.
struct DeviceSlots(CudaSlice<u32>);

/// A dimension as the kernels' `int32_t`.
fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::msg(format!("lora_delta: {what} {n} too large for the CUDA kernel")))
}

/// `lora_delta` on the GPU: x `[T, d_in]`, a `[S, R, d_in]`, b `[S, R, d_out]` (B transposed) → `[T, d_out]`.
pub(crate) fn delta(
    tokens: &LoraTokens,
    slots: &[SlotParams],
    (x, x_l): (&CudaStorage, &Layout),
    (a, a_l): (&CudaStorage, &Layout),
    (b, b_l): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device.clone();
    let (num_slots, max_rank, d_in) = a_l.shape().dims3()?;
    let (_, _, d_out) = b_l.shape().dims3()?;
    let num_tokens = tokens.token_slots.len();
    let shape = Shape::from((num_tokens, d_out));
    let sfx = suffix(x.dtype())?;
    let (num_slots_i, max_rank_i, d_in_i, d_out_i) =
        (int(num_slots, "num_slots")?, int(max_rank, "max_rank")?, int(d_in, "d_in")?, int(d_out, "d_out")?);
    int(num_tokens, "num_tokens")?;
    with_float!(x.dtype(), T => {
        let (xv, av, bv) = (view::<T>(x, x_l, "x")?, view::<T>(a, a_l, "lora A")?, view::<T>(b, b_l, "lora B")?);
        if num_tokens == 0 || d_out == 0 {
            // SAFETY: nothing is read from an empty output (the one element is padding).
            let out = unsafe { dev.alloc::<T>(1) }?;
            return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
        }
        let token_slots = tokens.device.get_or_try_init(|| Ok(DeviceSlots(upload(&dev, &tokens.token_slots)?)))?;
        // Per-layer parameters change every call: (scale bits, rank) per slot, one small upload.
        let params: Vec<u32> = slots.iter().flat_map(|p| [p.scale.to_bits(), p.rank]).collect();
        let params = upload(&dev, &params)?;
        // SAFETY: the shrink kernel writes every element (zeros where a token has no rank value).
        let mut mid = unsafe { dev.alloc::<f32>((num_tokens * max_rank).max(1)) }?;
        if max_rank > 0 {
            let kernel = Kernel::load(&dev, LORA_MODULE, &format!("lora_shrink_{sfx}"))?;
            let cfg = LaunchConfig {
                grid_dim: (num_tokens as u32, max_rank.div_ceil(SHRINK_WARPS) as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = kernel.builder();
            b.arg(&mut mid).arg(&xv).arg(&av).arg(&token_slots.0).arg(&params);
            b.arg(&num_slots_i).arg(&max_rank_i).arg(&d_in_i);
            // SAFETY: arguments match `lora_shrink_*` in lora.cu; slot indices are bounds-checked
            // on the device.
            unsafe { b.launch(cfg) }.w()?;
        }
        // SAFETY: the expand kernel writes every element of every row.
        let mut out = unsafe { dev.alloc::<T>(num_tokens * d_out) }?;
        let kernel = Kernel::load(&dev, LORA_MODULE, &format!("lora_expand_{sfx}"))?;
        let cfg = LaunchConfig {
            grid_dim: (num_tokens as u32, d_out.div_ceil(THREADS as usize) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = kernel.builder();
        b.arg(&mut out).arg(&mid).arg(&bv).arg(&token_slots.0).arg(&params);
        b.arg(&num_slots_i).arg(&max_rank_i).arg(&d_out_i);
        // SAFETY: arguments match `lora_expand_*` in lora.cu; mid is [num_tokens, max_rank].
        unsafe { b.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
    })
}
