//! Launches of `kernels/cuda/reshape_and_cache.cu` and `kernels/cuda/paged_attention.cu`.

use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDevice, CudaStorage, WrapErr};
use candle_core::backend::BackendStorage;
use candle_core::{DType, Layout, Result, Shape};

use super::{suffix, upload, view, view_mut, with_float, Kernel, PAGED_ATTENTION_MODULE, RESHAPE_AND_CACHE_MODULE};
use crate::paged::PagedAttentionMeta;

/// Query rows per prefill CUDA block (`kTileQ` in the .cu).
const TILE_Q: usize = 16;
/// Threads per attention CUDA block (4 warps).
const THREADS: u32 = 128;
/// Split-K partition when the kernel picks it.
const AUTO_PARTITION: usize = 512;

/// [`PagedAttentionMeta`] on the device, uploaded once per forward pass.
pub(crate) struct DeviceMeta {
    /// `[num_seqs][3]` (query_start, query_len, context_len).
    seqs: CudaSlice<u32>,
    /// `[num_seqs][max_blocks_per_seq]`.
    tables: CudaSlice<u32>,
    /// `[num_tiles][2]` (seq, first row): the prefill kernel's work items.
    tiles: CudaSlice<u32>,
    num_tiles: usize,
    /// Every sequence has one query row.
    decode_only: bool,
    max_context: usize,
}

fn device_meta(meta: &PagedAttentionMeta, dev: &CudaDevice) -> Result<Arc<DeviceMeta>> {
    meta.device.get_or_try_init(|| {
        let seqs: Vec<u32> = meta.seqs.iter().flat_map(|s| [s.query_start, s.query_len, s.context_len]).collect();
        let tiles: Vec<u32> = meta
            .seqs
            .iter()
            .enumerate()
            .flat_map(|(i, s)| (0..s.query_len).step_by(TILE_Q).flat_map(move |r| [i as u32, r]))
            .collect();
        Ok(DeviceMeta {
            seqs: upload(dev, &seqs)?,
            tables: upload(dev, &meta.block_tables)?,
            tiles: upload(dev, &tiles)?,
            num_tiles: tiles.len() / 2,
            decode_only: meta.seqs.iter().all(|s| s.query_len == 1),
            max_context: meta.seqs.iter().map(|s| s.context_len as usize).max().unwrap_or(0),
        })
    })
}

/// `reshape_and_cache` on the GPU: one CUDA block per token row.
pub(crate) fn write_cache(
    (cache, cache_l): (&mut CudaStorage, &Layout),
    (new, new_l): (&CudaStorage, &Layout),
    (slots, slots_l): (&CudaStorage, &Layout),
) -> Result<()> {
    let dev = cache.device.clone();
    let (num_blocks, block_size, kv_heads, head_dim) = cache_l.shape().dims4()?;
    let tokens = new_l.shape().dims()[0];
    if tokens == 0 {
        return Ok(());
    }
    let slot_suffix = match slots.dtype() {
        DType::I64 => "",
        DType::U32 => "_u32",
        other => candle_core::bail!("slot_mapping must be i64 or u32, not {other:?}"),
    };
    let name = format!("reshape_and_cache_{}{slot_suffix}", suffix(cache.dtype())?);
    let kernel = Kernel::load(&dev, RESHAPE_AND_CACHE_MODULE, &name)?;
    let cfg = LaunchConfig { grid_dim: (tokens as u32, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 };
    let null = 0u64; // no V in this launch: the op writes one cache tensor
    let row = (kv_heads * head_dim) as i64;
    let (kvh, hd, num_slots) = (kv_heads as i32, head_dim as i32, (num_blocks * block_size) as i64);
    with_float!(cache.dtype(), T => {
        let src = view::<T>(new, new_l, "new k/v")?;
        let slots_i64 = (slots.dtype() == DType::I64).then(|| view::<i64>(slots, slots_l, "slot_mapping")).transpose()?;
        let slots_u32 = (slots.dtype() == DType::U32).then(|| view::<u32>(slots, slots_l, "slot_mapping")).transpose()?;
        let mut dst = view_mut::<T>(cache, cache_l, "kv cache")?;
        let mut b = kernel.builder();
        b.arg(&src).arg(&null).arg(&mut dst).arg(&null);
        match (&slots_i64, &slots_u32) {
            (Some(s), _) => b.arg(s),
            (_, Some(s)) => b.arg(s),
            (None, None) => unreachable!("slot dtype checked above"),
        };
        b.arg(&row).arg(&0i64).arg(&kvh).arg(&hd).arg(&num_slots);
        // SAFETY: argument list and types match `reshape_and_cache_*` in the .cu; the slots are
        // bounds-checked on the device.
        unsafe { b.launch(cfg) }.w()?;
    });
    Ok(())
}

/// Which kernel a batch goes to: the decode kernel (split-K or not) when every sequence has
/// one query row, the tiled prefill kernel otherwise.
fn pick_partition(dm: &DeviceMeta, requested: Option<usize>, blocks: usize) -> Result<Option<usize>> {
    Ok(match requested {
        Some(n) if !dm.decode_only => {
            candle_core::bail!("paged_attention_split_k: the GPU kernel takes decode batches only (every query_len 1), not a split of {n}")
        }
        Some(n) => Some(n),
        // Split when the context is long and the batch alone would leave SMs idle (an H100
        // has 132); not tuned on hardware yet.
        None if dm.decode_only && dm.max_context > 2 * AUTO_PARTITION && (blocks < 4 * 132 || dm.max_context > 8192) => {
            Some(AUTO_PARTITION)
        }
        None => None,
    })
}

/// `paged_attention` on the GPU.
pub(crate) fn attention(
    meta: &PagedAttentionMeta,
    scale: f32,
    partition: Option<usize>,
    (q, q_l): (&CudaStorage, &Layout),
    (k, k_l): (&CudaStorage, &Layout),
    (v, v_l): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = q.device.clone();
    let (tokens, heads, head_dim) = q_l.shape().dims3()?;
    let (_, block_size, kv_heads, _) = k_l.shape().dims4()?;
    let dm = device_meta(meta, &dev)?;
    let num_seqs = meta.seqs.len();
    let sfx = suffix(q.dtype())?;
    let ints = [heads as i32, kv_heads as i32, head_dim as i32, block_size as i32, meta.max_blocks_per_seq as i32];
    let [heads_i, kv_heads_i, head_dim_i, block_size_i, max_blocks_i] = ints;
    let partition = pick_partition(&dm, partition, num_seqs * heads)?;
    with_float!(q.dtype(), T => {
        let qv = view::<T>(q, q_l, "q")?;
        let kv = view::<T>(k, k_l, "k cache")?;
        let vv = view::<T>(v, v_l, "v cache")?;
        // SAFETY: every element is written by the kernels below (each row of each head).
        let mut out = unsafe { dev.alloc::<T>((tokens * heads * head_dim).max(1)) }?;
        if tokens > 0 && dm.decode_only {
            let (psize, max_parts) = match partition {
                Some(n) => (n, dm.max_context.div_ceil(n)),
                None => (0, 1),
            };
            let tmp = if psize > 0 {
                let rows = num_seqs * heads * max_parts;
                // SAFETY: the decode kernel writes every partition row it owns, including empty ones.
                Some(unsafe { (dev.alloc::<f32>(rows * head_dim)?, dev.alloc::<f32>(rows * 2)?) })
            } else {
                None
            };
            let (psize_i, max_parts_i) = (psize as i32, max_parts as i32);
            let kernel = Kernel::load(&dev, PAGED_ATTENTION_MODULE, &format!("paged_attention_decode_{sfx}"))?;
            let cfg = LaunchConfig {
                grid_dim: (heads as u32, num_seqs as u32, max_parts as u32),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let null = 0u64;
            let mut b = kernel.builder();
            b.arg(&mut out);
            match &tmp {
                Some((acc, ml)) => b.arg(acc).arg(ml),
                None => b.arg(&null).arg(&null),
            };
            b.arg(&qv).arg(&kv).arg(&vv).arg(&dm.seqs).arg(&dm.tables);
            b.arg(&heads_i).arg(&kv_heads_i).arg(&head_dim_i).arg(&block_size_i).arg(&max_blocks_i);
            b.arg(&scale).arg(&psize_i).arg(&max_parts_i);
            // SAFETY: arguments match `paged_attention_decode_*`; metadata was validated.
            unsafe { b.launch(cfg) }.w()?;
            if let Some((acc, ml)) = &tmp {
                let kernel = Kernel::load(&dev, PAGED_ATTENTION_MODULE, &format!("paged_attention_reduce_{sfx}"))?;
                let cfg = LaunchConfig {
                    grid_dim: (heads as u32, num_seqs as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = kernel.builder();
                b.arg(&mut out).arg(acc).arg(ml).arg(&dm.seqs);
                b.arg(&heads_i).arg(&head_dim_i).arg(&psize_i).arg(&max_parts_i);
                // SAFETY: arguments match `paged_attention_reduce_*`.
                unsafe { b.launch(cfg) }.w()?;
            }
        } else if tokens > 0 {
            let kt = if head_dim <= 128 { 16 } else { 8 };
            let smem = (TILE_Q * head_dim + 2 * kt * (head_dim + 1)) * 4;
            let kernel = Kernel::load(&dev, PAGED_ATTENTION_MODULE, &format!("paged_attention_prefill_{sfx}"))?;
            let cfg = LaunchConfig {
                grid_dim: (heads as u32, dm.num_tiles as u32, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let mut b = kernel.builder();
            b.arg(&mut out).arg(&qv).arg(&kv).arg(&vv).arg(&dm.seqs).arg(&dm.tables).arg(&dm.tiles);
            b.arg(&heads_i).arg(&kv_heads_i).arg(&head_dim_i).arg(&block_size_i).arg(&max_blocks_i);
            b.arg(&scale);
            // SAFETY: arguments match `paged_attention_prefill_*`; shared memory as documented there.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((tokens, heads, head_dim))))
    })
}
