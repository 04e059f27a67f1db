//! Launch of `kernels/cuda/sampling.cu`: one block per row samples it and writes its token id
//! into a `[rows]` u32 buffer, the only thing copied back.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorage, WrapErr};
use candle_core::{Layout, Result, Shape};

use super::{suffix, upload, with_float, Kernel, SAMPLING_MODULE};
use crate::sampling::{row_layout, SampleRows};

/// Threads per block: `SAMPLING_THREADS` in sampling.cu (the kernel is built for exactly this).
const THREADS: u32 = 512;
/// Largest adjusted-token bitmap (dynamic shared memory, one bit per vocabulary entry) a launch
/// asks for; under the 48 KiB a kernel gets without opting in, with room for the static part.
/// It bounds the vocabulary of batches with adjustments to 327,680 tokens.
const MAX_BITMAP_BYTES: usize = 40 * 1024;

/// `sample_rows` on the GPU: logits `[rows, vocab]` (rows unit-stride) → `[rows]` u32 ids.
pub(crate) fn sample(op: &SampleRows, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = s.device.clone();
    let (rows, vocab, start, stride) = row_layout(l)?;
    let shape = Shape::from(rows);
    if rows == 0 || vocab == 0 {
        let out = dev.alloc_zeros::<u32>(rows.max(1))?; // sample_rows' answer for an empty row
        return Ok((CudaStorage::wrap_cuda_slice(out, dev), shape));
    }
    let too_large = |what: &str, n: usize| candle_core::Error::msg(format!("sample_rows: {what} {n} too large for the CUDA kernel"));
    let vocab_u = u32::try_from(vocab).map_err(|_| too_large("vocab", vocab))?;
    let grid = u32::try_from(rows).ok().filter(|&g| g <= i32::MAX as u32).ok_or_else(|| too_large("rows", rows))?;
    let stride_i = i64::try_from(stride).map_err(|_| too_large("row stride", stride))?;
    let entries = &op.adjust.entries;
    let bitmap_bytes = if entries.is_empty() { 0 } else { vocab.div_ceil(32) * 4 };
    if bitmap_bytes > MAX_BITMAP_BYTES {
        candle_core::bail!(
            "sample_rows: vocab {vocab} too large for the CUDA kernel with adjustments (at most {})",
            MAX_BITMAP_BYTES * 8
        );
    }
    let kernel = Kernel::load(&dev, SAMPLING_MODULE, &format!("sample_rows_{}", suffix(s.dtype())?))?;
    // One buffer per kind: row parameters (f32 as bits), offsets, tokens, adjustment floats.
    let params: Vec<u32> = op
        .rows
        .iter()
        .flat_map(|p| [p.temperature.to_bits(), p.top_k, p.top_p.to_bits(), p.min_p.to_bits(), p.uniform.to_bits()])
        .collect();
    let params = upload(&dev, &params)?;
    let offsets = upload(&dev, &op.adjust.offsets)?;
    let tokens = upload(&dev, &entries.iter().map(|a| a.token).collect::<Vec<u32>>())?;
    let adj_params = upload(&dev, &entries.iter().flat_map(|a| [a.bias, a.pos_scale, a.neg_scale, a.add]).collect::<Vec<f32>>())?;
    // SAFETY: the kernel writes each row's adjusted values before reading them.
    let mut adj_values = unsafe { dev.alloc::<f32>(entries.len().max(1)) }?;
    // SAFETY: thread 0 of each row's block writes that row's id (exactly one path does).
    let mut out = unsafe { dev.alloc::<u32>(rows) }?;
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: bitmap_bytes as u32,
    };
    let len = (rows - 1) * stride + vocab;
    with_float!(s.dtype(), T => {
        let logits = s.as_cuda_slice::<T>()?.slice(start..start + len);
        let mut b = kernel.builder();
        b.arg(&logits).arg(&stride_i).arg(&vocab_u).arg(&params).arg(&offsets).arg(&tokens);
        b.arg(&adj_params).arg(&mut adj_values).arg(&mut out);
        // SAFETY: arguments match `sample_rows_*` in sampling.cu; row r reads
        // logits[r * stride..][..vocab], inside `len`; adjustment tokens are < vocab (checked
        // by sample_rows) and offsets cover the entries.
        unsafe { b.launch(cfg) }.w()?;
    });
    Ok((CudaStorage::wrap_cuda_slice(out, dev), shape))
}

#[cfg(test)]
mod tests {
    #[test]
    fn entry_points_are_embedded() {
        let (_, ptx) = super::super::ptx::ALL.iter().find(|(m, _)| *m == super::SAMPLING_MODULE).expect("sampling PTX");
        for dtype in ["f32", "f16", "bf16"] {
            let entry = format!(".entry sample_rows_{dtype}(");
            assert!(ptx.contains(&entry), "missing {entry}");
        }
    }
}
