//! Qwen2 and Qwen2.5 (`Qwen2ForCausalLM`).
//!
//! The Llama network with a bias on the q, k and v projections (never on o_proj); Qwen2.5's
//! small models tie embeddings. `ModelConfig::qkv_bias` is set for this architecture when
//! config.json is parsed. Reference: transformers' `models/qwen2/modeling_qwen2.py`.

use crate::layers::weights::Vb;

use crate::{layers::decoder::DecoderModel, ModelConfig};

pub fn load(vb: Vb, cfg: &ModelConfig) -> candle_core::Result<DecoderModel> {
    debug_assert!(cfg.qkv_bias && !cfg.o_bias, "Qwen2 has q/k/v bias and no o_proj bias");
    DecoderModel::load(vb, cfg)
}
