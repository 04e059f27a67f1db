//! Self-attention over the paged KV cache: the q/k/v projections fused into one matmul
//! (optional bias), optional per-head q/k RMSNorm (Qwen3), RoPE, cache write, varlen paged
//! attention, o_proj.

use candle_core::{Result, Tensor};
use flint_kernels::{paged_attention, reshape_and_cache};

use crate::{
    batch::ForwardBatch,
    config::ModelConfig,
    layers::{linear::Proj, norm::RmsNorm, rope::RopeRows, weights::Vb},
    lora::TargetModule,
};

#[derive(Debug)]
pub struct Attention {
    /// `q_proj | k_proj | v_proj` (checkpoint names kept for loading and LoRA).
    qkv_proj: Proj,
    o_proj: Proj,
    /// Per-head norms of q and k (Qwen3); `None` elsewhere.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Attention {
    pub fn load(vb: Vb, cfg: &ModelConfig) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_heads * d, cfg.num_kv_heads * d);
        let qk_norm = if cfg.qk_norm {
            Some((
                RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("q_norm"))?,
                RmsNorm::load(d, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            qkv_proj: Proj::load_fused(
                h,
                cfg.qkv_bias,
                &[
                    (TargetModule::Q, q_out, vb.pp("q_proj")),
                    (TargetModule::K, kv_out, vb.pp("k_proj")),
                    (TargetModule::V, kv_out, vb.pp("v_proj")),
                ],
            )?,
            o_proj: Proj::load(q_out, h, cfg.o_bias, TargetModule::O, vb.pp("o_proj"))?,
            qk_norm,
            num_heads: cfg.num_heads,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
        })
    }

    /// `x` `[T, hidden]` → `[T, hidden]`; writes this step's K/V into `k_cache`/`v_cache`.
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &RopeRows,
        batch: &ForwardBatch,
        k_cache: &Tensor,
        v_cache: &Tensor,
    ) -> Result<Tensor> {
        let t = x.dim(0)?;
        let lora = batch.lora.as_ref();
        let (hq, hkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let qkv = self.qkv_proj.forward(x, lora)?;
        // Column ranges of the fused output: views, row-strided when t > 1. q and k are rotated
        // in place below, so they must be contiguous tensors of their own (a copy when strided;
        // for one token the view already is contiguous and is rotated inside `qkv`, which
        // nothing else reads). v only goes to reshape_and_cache, which makes it contiguous.
        let q = qkv.narrow(1, 0, hq * d)?.contiguous()?.reshape((t, hq, d))?;
        let k = qkv.narrow(1, hq * d, hkv * d)?.contiguous()?.reshape((t, hkv, d))?;
        let v = qkv.narrow(1, (hq + hkv) * d, hkv * d)?.reshape((t, hkv, d))?;
        let (q, k) = match &self.qk_norm {
            Some((qn, kn)) => (qn.forward(&q)?, kn.forward(&k)?),
            None => (q, k),
        };
        rope.apply_inplace(&q, &k)?;
        reshape_and_cache(&k, k_cache, &batch.slot_mapping)?;
        reshape_and_cache(&v, v_cache, &batch.slot_mapping)?;
        let out = paged_attention(&q, k_cache, v_cache, &batch.attn, self.scale)?;
        self.o_proj.forward(&out.reshape((t, self.num_heads * self.head_dim))?, lora)
    }

    pub(crate) fn projs_mut(&mut self) -> [&mut Proj; 2] {
        [&mut self.qkv_proj, &mut self.o_proj]
    }

    pub(crate) fn projs(&self) -> [&Proj; 2] {
        [&self.qkv_proj, &self.o_proj]
    }
}
