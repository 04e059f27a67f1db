//! Llama (1, 2, 3.x), SmolLM2 and Mistral (`LlamaForCausalLM`, `MistralForCausalLM`).
//!
//! Pre-norm decoder: RMSNorm → GQA self-attention with RoPE (optionally Llama-3 scaled) →
//! residual → RMSNorm → SiLU-gated MLP → residual; tied or untied `lm_head`. Optional
//! `attention_bias` puts biases on q/k/v/o. Mistral is the same network; its sliding window is
//! not applied (full attention), which is exact for contexts within the window.
//! Reference: transformers' `models/llama/modeling_llama.py`.

use crate::layers::weights::Vb;

use crate::{layers::decoder::DecoderModel, ModelConfig};

pub fn load(vb: Vb, cfg: &ModelConfig) -> candle_core::Result<DecoderModel> {
    DecoderModel::load(vb, cfg)
}
