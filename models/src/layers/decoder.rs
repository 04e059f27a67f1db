//! The Llama-family decoder-only transformer, named like the HF checkpoint:
//! `model.embed_tokens`, `model.layers.N.{input_layernorm, self_attn, post_attention_layernorm,
//! mlp}`, `model.norm`, `lm_head` (or the embedding when tied).

use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear};

use crate::{
    batch::ForwardBatch,
    config::ModelConfig,
    kv_cache::{KvCache, KvCacheSpec},
    lora::LoraAdapter,
    layers::{
        attention::Attention,
        mlp::Mlp,
        norm::RmsNorm,
        qlinear::QLinear,
        rope::{RopeRows, RotaryEmbedding},
        weights::Vb,
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
    fn load(vb: Vb, cfg: &ModelConfig) -> Result<Self> {
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

/// The token embedding: dense, or quantized rows dequantized as they are looked up (a GGUF's
/// `token_embd`, which a tied `lm_head` then shares).
#[derive(Debug)]
enum Embed {
    Dense(Embedding),
    Quant(Arc<QLinear>),
}

impl Embed {
    fn forward(&self, ids: &Tensor, dtype: DType) -> Result<Tensor> {
        match self {
            Embed::Dense(e) => e.forward(ids),
            Embed::Quant(q) => q.embedding(ids, dtype),
        }
    }
}

/// The vocabulary projection: dense (possibly the dense embedding, tied) or quantized.
#[derive(Debug)]
enum LmHead {
    Dense(Linear),
    Quant(Arc<QLinear>),
}

/// A decoder-only transformer of the Llama family; the variants (q/k/v bias, q/k norm, RoPE
/// scaling, tied embeddings) come from its [`ModelConfig`].
#[derive(Debug)]
pub struct DecoderModel {
    cfg: ModelConfig,
    dtype: DType,
    device: Device,
    embed_tokens: Embed,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: LmHead,
    rope: RotaryEmbedding,
    /// LoRA slots allocated by `enable_lora` (0: LoRA off).
    lora_slots: usize,
}

impl DecoderModel {
    pub fn load(vb: Vb, cfg: &ModelConfig) -> Result<Self> {
        let m = vb.pp("model");
        let (vocab, h) = (cfg.vocab_size, cfg.hidden_size);
        let device = vb.device().clone();
        let embed_vb = m.pp("embed_tokens");
        let embed_tokens = match embed_vb.quant_embedding((vocab, h), "weight")? {
            Some(rows) => Embed::Quant(Arc::new(QLinear::new(&rows, &device)?)),
            None => Embed::Dense(Embedding::new(embed_vb.get((vocab, h), "weight")?, h)),
        };
        let layers = (0..cfg.num_layers)
            .map(|i| DecoderLayer::load(m.pp("layers").pp(i), cfg))
            .collect::<Result<_>>()?;
        // A tied head shares a quantized embedding; in-situ quantization quantizes a tied head
        // as a projection of its own (the embedding stays dense for exact row lookups).
        let head_vb = if cfg.tie_word_embeddings { m.pp("embed_tokens") } else { vb.pp("lm_head") };
        let lm_head = match (&embed_tokens, cfg.tie_word_embeddings) {
            (Embed::Quant(q), true) => LmHead::Quant(q.clone()),
            (embed, tied) => match head_vb.quant_linear((vocab, h), "weight")? {
                Some(rows) => LmHead::Quant(Arc::new(QLinear::new(&rows, &device)?)),
                None => match (embed, tied) {
                    (Embed::Dense(e), true) => LmHead::Dense(Linear::new(e.embeddings().clone(), None)),
                    _ => LmHead::Dense(Linear::new(head_vb.get((vocab, h), "weight")?, None)),
                },
            },
        };
        Ok(Self {
            cfg: cfg.clone(),
            dtype: vb.dtype(),
            device,
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
        let device = self.device.clone();
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
        if self.device.is_cpu() {
            flint_kernels::on_compute_pool(|| self.forward_step(batch, kv))
        } else {
            self.forward_step(batch, kv)
        }
    }
}

impl DecoderModel {
    fn forward_step(&self, batch: &ForwardBatch, kv: &KvCache) -> Result<Tensor> {
        let max_pos = self.cfg.max_position_embeddings;
        if let Some(s) = batch.attn.seqs.iter().find(|s| s.context_len as usize > max_pos) {
            candle_core::bail!(
                "context of {} tokens exceeds max_position_embeddings ({max_pos})",
                s.context_len
            );
        }
        let rope = self.rope.for_positions(&batch.positions)?;
        let mut x = self.embed_tokens.forward(&batch.input_ids, self.dtype)?;
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
        let logits = match &self.lm_head {
            LmHead::Dense(l) => l.forward(&h)?,
            LmHead::Quant(q) => q.forward(&h)?,
        };
        logits.to_dtype(DType::F32)
    }
}
