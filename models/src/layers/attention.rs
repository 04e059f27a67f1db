//! Self-attention over the paged KV cache: q/k/v projections (optional bias), optional per-head
//! q/k RMSNorm (Qwen3), RoPE, cache write, varlen paged attention, o_proj.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use flint_kernels::{paged_attention, reshape_and_cache};

use crate::{
    batch::ForwardBatch,
    config::ModelConfig,
    layers::{linear::Proj, norm::RmsNorm, rope::RopeRows},
    lora::TargetModule,
};

#[derive(Debug)]
pub struct Attention {
    q_proj: Proj,
    k_proj: Proj,
    v_proj: Proj,
    o_proj: Proj,
    /// Per-head norms of q and k (Qwen3); `None` elsewhere.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Attention {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
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
            q_proj: Proj::load(h, q_out, cfg.qkv_bias, TargetModule::Q, vb.pp("q_proj"))?,
            k_proj: Proj::load(h, kv_out, cfg.qkv_bias, TargetModule::K, vb.pp("k_proj"))?,
            v_proj: Proj::load(h, kv_out, cfg.qkv_bias, TargetModule::V, vb.pp("v_proj"))?,
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
        let q = self.q_proj.forward(x, lora)?.reshape((t, self.num_heads, self.head_dim))?;
        let k = self.k_proj.forward(x, lora)?.reshape((t, self.num_kv_heads, self.head_dim))?;
        let v = self.v_proj.forward(x, lora)?.reshape((t, self.num_kv_heads, self.head_dim))?;
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

    pub(crate) fn projs_mut(&mut self) -> [&mut Proj; 4] {
        [&mut self.q_proj, &mut self.k_proj, &mut self.v_proj, &mut self.o_proj]
    }

    pub(crate) fn projs(&self) -> [&Proj; 4] {
        [&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }
}
