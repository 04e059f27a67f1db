//! The Llama-family decoder-only transformer, named like the HF checkpoint:
//! `model.embed_tokens`, `model.layers.N.{input_layernorm, self_attn, post_attention_layernorm,
//! mlp}`, `model.norm`, `lm_head` (or the embedding when tied).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, Embedding, Linear, VarBuilder};

use crate::{
    batch::ForwardBatch,
    config::ModelConfig,
    kv_cache::{KvCache, KvCacheSpec},
    lora::LoraAdapter,
    layers::{
        attention::Attention,
        mlp::Mlp,
        norm::RmsNorm,
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
            input_layernorm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            post_attention_layernorm: RmsNorm::load(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb.pp("post_attention_layernorm"),
            )?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
        })
    }

    /// One layer on the residual stream. `x` is the previous layer's MLP output and
    /// `residual` the stream before it (`None` for the first layer, whose `x` is the
    /// embedding); returns this layer's MLP output and the stream before it, so each residual
    /// add is fused into the norm that follows it.
    fn forward(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        rope: &RopeRows,
        batch: &ForwardBatch,
        kv: (&Tensor, &Tensor),
    ) -> Result<(Tensor, Tensor)> {
        let (h, residual) = match residual {
            None => (self.input_layernorm.forward(x)?, x.clone()),
            Some(r) => self.input_layernorm.add_forward(x, r)?,
        };
        let attn = self.self_attn.forward(&h, rope, batch, kv.0, kv.1)?;
        let (h, residual) = self.post_attention_layernorm.add_forward(&attn, &residual)?;
        Ok((self.mlp.forward(&h, batch.lora.as_ref())?, residual))
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
    /// LoRA slots allocated by `enable_lora` (0: LoRA off).
    lora_slots: usize,
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
            norm: RmsNorm::load(cfg.hidden_size, cfg.rms_norm_eps, m.pp("norm"))?,
            lm_head,
            rope: RotaryEmbedding::new(cfg, vb.dtype(), vb.device())?,
            lora_slots: 0,
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

    fn enable_lora(&mut self, slots: usize, max_rank: usize) -> Result<()> {
        let device = self.embed_tokens.embeddings().device().clone();
        for layer in &mut self.layers {
            let DecoderLayer { self_attn, mlp, .. } = layer;
            for p in self_attn.projs_mut().into_iter().chain(mlp.projs_mut()) {
                p.enable_lora(slots, max_rank, self.dtype, &device)?;
            }
        }
        self.lora_slots = slots;
        Ok(())
    }

    fn lora_slots(&self) -> usize {
        self.lora_slots
    }

    fn set_lora_slot(&self, slot: usize, adapter: Option<&LoraAdapter>) -> Result<()> {
        for (i, layer) in self.layers.iter().enumerate() {
            for p in layer.self_attn.projs().into_iter().chain(layer.mlp.projs()) {
                // Per checkpoint module, also inside the fused q|k|v and gate|up projections.
                for module in p.modules() {
                    let pair = adapter.and_then(|a| a.pair(i, module)).map(|(a, b)| (a, b));
                    p.set_slot(module, slot, pair, adapter.map_or(0.0, |a| a.scale))?;
                }
            }
        }
        Ok(())
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
        let mut residual = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let (out, r) = layer.forward(&x, residual.as_ref(), &rope, batch, kv.layer(i)?)?;
            (x, residual) = (out, Some(r));
        }
        // Only the rows that sample pay for the final norm and the vocabulary projection.
        let rows = |t: &Tensor| t.index_select(&batch.logits_indices, 0);
        let h = match &residual {
            Some(r) => self.norm.add_forward(&rows(&x)?, &rows(r)?)?.0,
            None => self.norm.forward(&rows(&x)?)?,
        };
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
    }
}
