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
use half::{bf16, f16};
use rayon::prelude::*;

use crate::elem::Elem;

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
}

impl PagedAttentionMeta {
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

fn contiguous_slice<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what} must be contiguous"),
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
}

impl PagedAttention<'_> {
    #[allow(clippy::too_many_arguments)]
    fn run<T: Elem>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Vec<T> {
        let meta = self.meta;
        let num_tokens = q.len() / (heads * head_dim);
        let group = heads / kv_heads;
        let bs = meta.block_size;
        // Row -> sequence index, so every (row, head) task finds its context directly.
        let mut row_seq = Vec::with_capacity(num_tokens);
        for (i, s) in meta.seqs.iter().enumerate() {
            row_seq.extend(std::iter::repeat_n(i, s.query_len as usize));
        }
        let mut out = vec![T::from_f32(0.0); q.len()];
        out.par_chunks_mut(head_dim).enumerate().for_each(|(task, out_row)| {
            let (t, h) = (task / heads, task % heads);
            let seq = row_seq[t];
            let span = meta.seqs[seq];
            let table = &meta.block_tables[seq * meta.max_blocks_per_seq..];
            // Causal: this row is token `pos` of its context and sees tokens 0..=pos.
            let pos = (span.context_len - span.query_len) as usize + (t - span.query_start as usize);
            let g = h / group;
            let qrow = &q[(t * heads + h) * head_dim..][..head_dim];
            let kv_offset = |p: usize| {
                let slot = table[p / bs] as usize * bs + p % bs;
                (slot * kv_heads + g) * head_dim
            };
            let mut scores = Vec::with_capacity(pos + 1);
            let mut max = f32::NEG_INFINITY;
            for p in 0..=pos {
                let s = dot(qrow, &k[kv_offset(p)..][..head_dim]) * self.scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut acc = vec![0f32; head_dim];
            let mut denom = 0f32;
            for (p, s) in scores.iter().enumerate() {
                let w = (s - max).exp();
                denom += w;
                let vrow = &v[kv_offset(p)..][..head_dim];
                for (a, x) in acc.iter_mut().zip(vrow) {
                    *a += w * x.to_f32();
                }
            }
            for (o, a) in out_row.iter_mut().zip(&acc) {
                *o = T::from_f32(a / denom);
            }
        });
        out
    }
}

/// Dot product in f32 over eight independent partial sums, so the compiler can vectorize it
/// (a single running sum is a serial chain of dependent adds).
#[inline]
fn dot<T: Elem>(a: &[T], b: &[T]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (ca, cb) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += ca[l].to_f32() * cb[l].to_f32();
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x.to_f32() * y.to_f32()).sum();
    acc.iter().sum::<f32>() + tail
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
        let out = match (q, k, v) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.run(
                    contiguous_slice(q, q_l, "q")?,
                    contiguous_slice(k, k_l, "k cache")?,
                    contiguous_slice(v, v_l, "v cache")?,
                    heads,
                    kv_heads,
                    head_dim,
                ))
            }
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                CpuStorage::F16(self.run::<f16>(
                    contiguous_slice(q, q_l, "q")?,
                    contiguous_slice(k, k_l, "k cache")?,
                    contiguous_slice(v, v_l, "v cache")?,
                    heads,
                    kv_heads,
                    head_dim,
                ))
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(self.run::<bf16>(
                    contiguous_slice(q, q_l, "q")?,
                    contiguous_slice(k, k_l, "k cache")?,
                    contiguous_slice(v, v_l, "v cache")?,
                    heads,
                    kv_heads,
                    head_dim,
                ))
            }
            _ => candle_core::bail!("paged_attention: q, k and v must share one of f32/f16/bf16"),
        };
        Ok((out, q_l.shape().clone()))
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
    let (t, heads, d) = q.dims3()?;
    let (num_blocks, block_size, kv_heads, cd) = k_cache.dims4()?;
    if v_cache.dims() != k_cache.dims() || cd != d || kv_heads == 0 || heads % kv_heads != 0 {
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
    q.apply_op3_no_bwd(k_cache, v_cache, &PagedAttention { meta, scale })
}

#[cfg(test)]
mod tests;
