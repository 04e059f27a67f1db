//! The paged KV cache tensors: per layer, K and V of shape
//! `[num_blocks, block_size, num_kv_heads, head_dim]`. Which blocks belong to whom is the
//! engine's business (its block pool); this type only owns the memory.

use candle_core::{DType, Device, Result, Tensor};

/// What a model needs from a KV cache: one K and one V tensor per layer of this shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvCacheSpec {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: DType,
}

impl KvCacheSpec {
    /// Bytes one block takes over all layers, K and V.
    pub fn bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.num_layers * block_size * self.num_kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// How many blocks fit in `budget_bytes` (at least zero).
    pub fn blocks_for_budget(&self, budget_bytes: usize, block_size: usize) -> usize {
        budget_bytes / self.bytes_per_block(block_size).max(1)
    }
}

/// The cache memory: written in place by the attention layers.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    block_size: usize,
    num_blocks: usize,
}

impl KvCache {
    pub fn new(spec: &KvCacheSpec, num_blocks: usize, block_size: usize, device: &Device) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            candle_core::bail!("a KV cache needs at least one block of at least one token");
        }
        let shape = (num_blocks, block_size, spec.num_kv_heads, spec.head_dim);
        let layers = (0..spec.num_layers)
            .map(|_| Ok((Tensor::zeros(shape, spec.dtype, device)?, Tensor::zeros(shape, spec.dtype, device)?)))
            .collect::<Result<_>>()?;
        Ok(Self { layers, block_size, num_blocks })
    }

    /// K and V of layer `i`.
    pub fn layer(&self, i: usize) -> Result<(&Tensor, &Tensor)> {
        self.layers
            .get(i)
            .map(|(k, v)| (k, v))
            .ok_or_else(|| candle_core::Error::msg(format!("KV cache has no layer {i}")))
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
}
