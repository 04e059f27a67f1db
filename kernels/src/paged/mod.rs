//! Paged KV cache kernels: writing new K/V into blocks and attending over block tables.
//!
//! Cache layout (per layer, K and V alike): `[num_blocks, block_size, num_kv_heads, head_dim]`.
//! A *slot* is `block * block_size + offset`: the row a token's K/V lives in once the cache is
//! viewed as `[num_blocks * block_size, num_kv_heads, head_dim]`.
//!
//! One batch is "varlen": the new tokens of every sequence are flattened into one
//! `[num_tokens, ...]` tensor, sequence `i` owning rows `query_start..query_start + query_len`.
//! Those rows are the *last* `query_len` tokens of a context of `context_len` tokens whose K/V
//! (the new rows included) are in the cache by the time attention runs. Prefill, chunked
//! prefill and decode (query_len == 1) are the same case.

use candle_core::{
    backend::BackendStorage, CpuStorage, CustomOp3, DType, InplaceOp3, Layout, Result, Shape,
    Tensor,
};
use crate::device_cache::DeviceCache;
use crate::elem::contiguous_slice;

mod cpu;

/// Largest head_dim the kernels take (the GPU kernels keep a row in registers).
pub const MAX_HEAD_DIM: usize = 256;

/// Where one sequence's new tokens sit in the flattened batch, and how long its context is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqSpan {
    /// First row of this sequence in the flattened `[num_tokens, ..]` batch.
    pub query_start: u32,
    /// Number of new tokens (rows) of this sequence in the batch; at least 1.
    pub query_len: u32,
    /// Tokens in the cache for this sequence once this step's K/V are written
    /// (previously computed tokens + `query_len`).
    pub context_len: u32,
}

/// Host-side metadata of one varlen attention call over the paged cache.
#[derive(Clone, Debug, Default)]
pub struct PagedAttentionMeta {
    /// One span per sequence, in row order; spans tile `0..num_tokens` without gaps.
    pub seqs: Vec<SeqSpan>,
    /// Row-major `[seqs.len(), max_blocks_per_seq]` block ids; entries past a sequence's
    /// last block are ignored (any value).
    pub block_tables: Vec<u32>,
    /// Width of a `block_tables` row.
    pub max_blocks_per_seq: usize,
    /// Tokens per KV block.
    pub block_size: usize,
    /// This metadata on the GPU: uploaded by the first GPU call and reused by every layer of
    /// the forward pass, so the fields must not change after that call.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) device: DeviceCache,
}

impl PagedAttentionMeta {
    /// Empty metadata for a cache of `block_size`-token blocks and block tables
    /// `max_blocks_per_seq` wide; add sequences with [`PagedAttentionMeta::push`].
    pub fn new(block_size: usize, max_blocks_per_seq: usize) -> Self {
        Self { block_size, max_blocks_per_seq, ..Default::default() }
    }

    /// Appends a sequence: its span and its block table (padded with block 0, or cut, to
    /// `max_blocks_per_seq`).
    pub fn push(&mut self, span: SeqSpan, blocks: &[u32]) {
        self.seqs.push(span);
        let w = self.max_blocks_per_seq;
        self.block_tables.extend(blocks.iter().copied().take(w));
        self.block_tables.extend(std::iter::repeat_n(0, w.saturating_sub(blocks.len())));
    }

    /// Total rows of the flattened batch.
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.query_len as usize).sum()
    }

    /// Checks the metadata against itself and a cache of `num_blocks` blocks, so the kernels
    /// can index without further checks.
    pub fn validate(&self, num_blocks: usize) -> Result<()> {
        if self.block_size == 0 {
            candle_core::bail!("paged attention: block_size must be > 0");
        }
        if self.block_tables.len() != self.seqs.len() * self.max_blocks_per_seq {
            candle_core::bail!(
                "paged attention: block_tables has {} entries, expected {} seqs x {}",
                self.block_tables.len(),
                self.seqs.len(),
                self.max_blocks_per_seq
            );
        }
        let mut next_row = 0u32;
        for (i, s) in self.seqs.iter().enumerate() {
            if s.query_start != next_row || s.query_len == 0 || s.context_len < s.query_len {
                candle_core::bail!("paged attention: sequence {i} has an invalid span {s:?}");
            }
            next_row += s.query_len;
            let blocks = (s.context_len as usize).div_ceil(self.block_size);
            if blocks > self.max_blocks_per_seq {
                candle_core::bail!(
                    "paged attention: sequence {i} needs {blocks} blocks, table holds {}",
                    self.max_blocks_per_seq
                );
            }
            let row = &self.block_tables[i * self.max_blocks_per_seq..][..blocks];
            if let Some(b) = row.iter().find(|&&b| b as usize >= num_blocks) {
                candle_core::bail!("paged attention: block {b} out of range ({num_blocks} blocks)");
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// reshape_and_cache

struct WriteCache;

impl InplaceOp3 for WriteCache {
    fn name(&self) -> &'static str {
        "reshape_and_cache"
    }

    fn cpu_fwd(
        &self,
        cache: &mut CpuStorage,
        cache_l: &Layout,
        new: &CpuStorage,
        new_l: &Layout,
        slots: &CpuStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        let slots = match slots {
            CpuStorage::I64(s) => contiguous_slice(s, slots_l, "slot_mapping")?,
            _ => candle_core::bail!("slot_mapping must be i64"),
        };
        let (num_blocks, block_size, kv_heads, head_dim) = cache_l.shape().dims4()?;
        let row = kv_heads * head_dim;
        let capacity = num_blocks * block_size;
        fn write<T: Copy>(
            cache: &mut [T],
            cache_l: &Layout,
            new: &[T],
            new_l: &Layout,
            slots: &[i64],
            row: usize,
            capacity: usize,
        ) -> Result<()> {
            let (c0, c1) = cache_l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::msg("kv cache must be contiguous"))?;
            let cache = &mut cache[c0..c1];
            let new = contiguous_slice(new, new_l, "new k/v")?;
            for (t, &slot) in slots.iter().enumerate() {
                // Negative slots are padding rows that own no cache slot.
                let Ok(slot) = usize::try_from(slot) else { continue };
                if slot >= capacity {
                    candle_core::bail!("slot {slot} out of range (cache has {capacity} slots)");
                }
                cache[slot * row..(slot + 1) * row].copy_from_slice(&new[t * row..(t + 1) * row]);
            }
            Ok(())
        }
        match (cache, new) {
            (CpuStorage::F32(c), CpuStorage::F32(n)) => {
                write(c, cache_l, n, new_l, slots, row, capacity)
            }
            (CpuStorage::F16(c), CpuStorage::F16(n)) => {
                write(c, cache_l, n, new_l, slots, row, capacity)
            }
            (CpuStorage::BF16(c), CpuStorage::BF16(n)) => {
                write(c, cache_l, n, new_l, slots, row, capacity)
            }
            (c, n) => candle_core::bail!(
                "reshape_and_cache: cache dtype {:?} and new k/v dtype {:?} must match (f32/f16/bf16)",
                c.dtype(),
                n.dtype()
            ),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        cache: &mut candle_core::CudaStorage,
        cache_l: &Layout,
        new: &candle_core::CudaStorage,
        new_l: &Layout,
        slots: &candle_core::CudaStorage,
        slots_l: &Layout,
    ) -> Result<()> {
        crate::cuda::paged::write_cache((cache, cache_l), (new, new_l), (slots, slots_l))
    }
}

/// Writes `new` K or V rows `[num_tokens, num_kv_heads, head_dim]` into `cache`
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, row `t` going to slot `slot_mapping[t]`
/// (`i64 [num_tokens]`; a negative slot skips its row). Dtypes f32/f16/bf16, equal for cache
/// and rows. The cache is modified in place.
pub fn reshape_and_cache(new: &Tensor, cache: &Tensor, slot_mapping: &Tensor) -> Result<()> {
    let (t, kvh, d) = new.dims3()?;
    let (_, _, ckvh, cd) = cache.dims4()?;
    if (kvh, d) != (ckvh, cd) || slot_mapping.dims1()? != t {
        candle_core::bail!(
            "reshape_and_cache: shapes {:?} / cache {:?} / slots {:?} disagree",
            new.shape(),
            cache.shape(),
            slot_mapping.shape()
        );
    }
    let new = new.contiguous()?;
    cache.inplace_op3(&new, slot_mapping, &WriteCache)
}

// ---------------------------------------------------------------------------------------------
// paged_attention

struct PagedAttention<'a> {
    meta: &'a PagedAttentionMeta,
    scale: f32,
    /// `None`: the kernel picks (one pass on the CPU; split-K on the GPU for long decode
    /// contexts). `Some(n)`: split the context into chunks of `n` keys.
    partition: Option<usize>,
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_l: &Layout,
        k: &CpuStorage,
        k_l: &Layout,
        v: &CpuStorage,
        v_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, heads, head_dim) = q_l.shape().dims3()?;
        let (_, _, kv_heads, _) = k_l.shape().dims4()?;
        let dims = cpu::Dims { heads, kv_heads, head_dim };
        let (meta, scale, part) = (self.meta, self.scale, self.partition);
        macro_rules! run {
            ($variant:ident, $q:expr, $k:expr, $v:expr) => {
                CpuStorage::$variant(cpu::attention(
                    meta,
                    contiguous_slice($q, q_l, "q")?,
                    contiguous_slice($k, k_l, "k cache")?,
                    contiguous_slice($v, v_l, "v cache")?,
                    dims,
                    scale,
                    part,
                ))
            };
        }
        let out = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => run!(F32, q, k, v),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => run!(F16, q, k, v),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => run!(BF16, q, k, v),
            _ => candle_core::bail!("paged_attention: q, k and v must share one of f32/f16/bf16"),
        };
        Ok((out, q_l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        q: &candle_core::CudaStorage,
        q_l: &Layout,
        k: &candle_core::CudaStorage,
        k_l: &Layout,
        v: &candle_core::CudaStorage,
        v_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::paged::attention(self.meta, self.scale, self.partition, (q, q_l), (k, k_l), (v, v_l))
    }
}

/// Causal attention of the varlen queries `q` `[num_tokens, num_heads, head_dim]` against
/// their contexts in the paged caches `k_cache`/`v_cache`
/// `[num_blocks, block_size, num_kv_heads, head_dim]`, as laid out by `meta`. The new tokens'
/// K/V must already be written (see [`reshape_and_cache`]). `num_heads` is a multiple of
/// `num_kv_heads` (grouped-query attention). Scores are `q·k * scale`, softmax in f32.
/// Returns `[num_tokens, num_heads, head_dim]` in q's dtype (f32/f16/bf16).
pub fn paged_attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &PagedAttentionMeta,
    scale: f32,
) -> Result<Tensor> {
    attention(q, k_cache, v_cache, meta, scale, None)
}

fn attention(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &PagedAttentionMeta,
    scale: f32,
    partition: Option<usize>,
) -> Result<Tensor> {
    let (t, heads, d) = q.dims3()?;
    let (num_blocks, block_size, kv_heads, cd) = k_cache.dims4()?;
    if v_cache.dims() != k_cache.dims()
        || cd != d
        || d > MAX_HEAD_DIM
        || kv_heads == 0
        || heads % kv_heads != 0
    {
        candle_core::bail!(
            "paged_attention: q {:?}, k cache {:?}, v cache {:?} are inconsistent",
            q.shape(),
            k_cache.shape(),
            v_cache.shape()
        );
    }
    if block_size != meta.block_size || meta.num_tokens() != t {
        candle_core::bail!(
            "paged_attention: metadata (block size {}, {} rows) does not match q {:?} / cache {:?}",
            meta.block_size,
            meta.num_tokens(),
            q.shape(),
            k_cache.shape()
        );
    }
    meta.validate(num_blocks)?;
    if !matches!(q.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("paged_attention: unsupported dtype {:?}", q.dtype());
    }
    let q = q.contiguous()?;
    q.apply_op3_no_bwd(k_cache, v_cache, &PagedAttention { meta, scale, partition })
}

/// [`paged_attention`] with the context of every row split into chunks of `partition_size`
/// keys whose partial softmaxes are merged afterwards ("split-K", flash-decoding): on a GPU it
/// spreads one long sequence over many thread blocks. The GPU kernel takes decode batches only
/// (every `query_len` 1); the CPU reference takes any batch. Same result as
/// [`paged_attention`] up to float rounding.
pub fn paged_attention_split_k(
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    meta: &PagedAttentionMeta,
    scale: f32,
    partition_size: usize,
) -> Result<Tensor> {
    if partition_size == 0 {
        candle_core::bail!("paged_attention_split_k: partition_size must be > 0");
    }
    attention(q, k_cache, v_cache, meta, scale, Some(partition_size))
}

#[cfg(test)]
mod tests;
