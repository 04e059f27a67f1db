//! Qwen3 dense models (`Qwen3ForCausalLM`).
//!
//! The Llama network with an RMSNorm over each head of q and k (`self_attn.q_norm`,
//! `self_attn.k_norm`, weight `[head_dim]`) applied before RoPE, no q/k/v bias, and a
//! `head_dim` that need not equal hidden_size / num_heads. Reference: transformers'
//! `models/qwen3/modeling_qwen3.py`.

use crate::layers::weights::Vb;

use crate::{layers::decoder::DecoderModel, ModelConfig};

pub fn load(vb: Vb, cfg: &ModelConfig) -> candle_core::Result<DecoderModel> {
    debug_assert!(cfg.qk_norm, "Qwen3 normalises q and k per head");
    DecoderModel::load(vb, cfg)
}
