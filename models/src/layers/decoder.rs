//! The Llama-family decoder-only transformer, named like the HF checkpoint:
//! `model.embed_tokens`, `model.layers.N.{input_layernorm, self_attn, post_attention_layernorm,
//! mlp}`, `model.norm`, `lm_head` (or the embedding when tied).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, rms_norm, Embedding, Linear, RmsNorm, VarBuilder};

use crate::{
    batch::ForwardBatch,
    config::ModelConfig,
    kv_cache::{KvCache, KvCacheSpec},
    layers::{
        attention::Attention,
        mlp::Mlp,
        rope::{RopeRows, RotaryEmbedding},
    },
    Model,
};

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            input_layernorm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: rms_norm(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeRows,
        batch: &ForwardBatch,
        kv: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, batch, kv.0, kv.1)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x)?)?;
        x + h
    }
}

/// A decoder-only transformer of the Llama family; the variants (q/k/v bias, q/k norm, RoPE
/// scaling, tied embeddings) come from its [`ModelConfig`].
#[derive(Debug)]
pub struct DecoderModel {
    cfg: ModelConfig,
    dtype: DType,
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RotaryEmbedding,
}

impl DecoderModel {
    pub fn load(vb: VarBuilder, cfg: &ModelConfig) -> Result<Self> {
        let m = vb.pp("model");
        let embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size, m.pp("embed_tokens"))?;
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(m.pp("layers").pp(i), cfg))
            .collect::<Result<_>>()?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(cfg.hidden_size, cfg.vocab_size, vb.pp("lm_head"))?
        };
        Ok(Self {
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            embed_tokens,
            layers,
            norm: rms_norm(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            rope: RotaryEmbedding::new(cfg, vb.dtype(), vb.device())?,
        })
    }
}

impl Model for DecoderModel {
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    fn kv_cache_spec(&self) -> KvCacheSpec {
        KvCacheSpec {
            num_layers: self.cfg.num_layers,
            num_kv_heads: self.cfg.num_kv_heads,
            head_dim: self.cfg.head_dim,
            dtype: self.dtype,
        }
    }

    fn forward(&self, batch: &ForwardBatch, kv: &KvCache) -> Result<Tensor> {
        let max_pos = self.cfg.max_position_embeddings;
        if let Some(s) = batch.attn.seqs.iter().find(|s| s.context_len as usize > max_pos) {
            candle_core::bail!(
                "context of {} tokens exceeds max_position_embeddings ({max_pos})",
                s.context_len
            );
        }
        let rope = self.rope.for_positions(&batch.positions)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids)?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &rope, batch, kv.layer(i)?)?;
        }
        // Only the rows that sample pay for the final norm and the vocabulary projection.
        let x = x.index_select(&batch.logits_indices, 0)?;
        self.lm_head.forward(&self.norm.forward(&x)?)?.to_dtype(DType::F32)
    }
}
