//! flint-models: the model side of flint.
//!
//! - [`Model`]: the one trait the engine runs — a forward pass over a [`ForwardBatch`] (the
//!   flattened new tokens of many sequences plus their paged-attention metadata) that writes
//!   K/V into a [`KvCache`] and returns logits for the rows that sample.
//! - [`ModelConfig`]: config.json parsed and checked once.
//! - [`load`] / [`LoadedModel`]: a Hugging Face directory (config.json, generation_config.json,
//!   model.safetensors or sharded) to a ready model, on the CPU or a GPU, in f32/bf16/f16.
//! - [`load_dummy`]: the same models with random weights made on the device (`--load-format
//!   dummy`), for benchmarks at real sizes without weight files.
//! - `arch/`: one file per architecture (Llama/Mistral/SmolLM2, Qwen2, Qwen3), built from the
//!   shared layers in `layers/` and shaped like the HF checkpoint.
//! - [`LoraAdapter`]: a PEFT LoRA adapter read and checked against the base model; models put
//!   adapters into slots ([`Model::set_lora_slot`]) and apply them per token.
//! - [`TrainableModel`]: the same decoder in differentiable ops with trainable LoRA
//!   adapters ([`LoraSpec`]), for fine-tuning; saves PEFT adapters.
//! - [`gguf`]: GGUF files: served as stored ([`gguf::GgufWeights`]), converted to a Hugging
//!   Face directory, or written quantized ([`gguf::quantize`]); [`source`]: model references (local
//!   directories or Hugging Face repo ids).

pub mod arch;
pub mod batch;
pub mod config;
pub mod dummy;
pub mod error;
pub mod gguf;
pub mod kv_cache;
pub mod layers;
pub mod loader;
pub mod lora;
pub mod source;
pub mod train;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod test_support;

pub use batch::{ForwardBatch, LogitsRows, SeqInput};
pub use candle_core::quantized::GgmlDType;
pub use candle_core::{DType, Device, Tensor};
pub use config::{Architecture, ModelConfig};
pub use dummy::load_dummy;
pub use error::ModelError;
pub use kv_cache::{KvCache, KvCacheSpec};
pub use loader::{load, parse_dtype, GenerationConfig, LoadOptions, LoadedModel};
pub use lora::{LoraAdapter, TargetModule};
pub use train::{LoraSpec, TrainableModel};

use candle_core::Result;

/// A causal language model that runs varlen batches over a paged KV cache.
pub trait Model: Send {
    fn config(&self) -> &ModelConfig;
    /// The per-layer K/V shape and dtype this model writes.
    fn kv_cache_spec(&self) -> KvCacheSpec;
    /// Runs the batch's new tokens: writes their K/V into `kv` and returns f32 logits
    /// `[batch.num_logits, vocab_size]` for the rows in `batch.logits_indices`.
    fn forward(&self, batch: &ForwardBatch, kv: &KvCache) -> Result<Tensor>;

    /// Allocates `slots` LoRA adapter slots of rank up to `max_rank` in every projection
    /// (zeroed, unused). Called once, before the first forward pass.
    fn enable_lora(&mut self, slots: usize, max_rank: usize) -> Result<()> {
        let _ = (slots, max_rank);
        candle_core::bail!("this model does not support LoRA adapters")
    }

    /// LoRA slots allocated (0 when LoRA is off).
    fn lora_slots(&self) -> usize {
        0
    }

    /// Puts `adapter` into LoRA slot `slot` (`None`: the slot contributes nothing). Tokens
    /// name their slot in `ForwardBatch::lora`.
    fn set_lora_slot(&self, slot: usize, adapter: Option<&LoraAdapter>) -> Result<()> {
        let _ = (slot, adapter);
        candle_core::bail!("this model does not support LoRA adapters")
    }
}
