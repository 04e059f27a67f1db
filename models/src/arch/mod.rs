//! One file per architecture; [`load`] picks the file from [`Architecture`].

pub mod llama;
pub mod qwen2;
pub mod qwen3;

use crate::layers::weights::Vb;

use crate::{config::Architecture, ModelConfig};

/// Builds the model `cfg` describes from the weights under `vb`.
pub fn load(vb: Vb, cfg: &ModelConfig) -> candle_core::Result<Box<dyn crate::Model>> {
    Ok(match cfg.architecture {
        Architecture::Llama => Box::new(llama::load(vb, cfg)?),
        Architecture::Qwen2 => Box::new(qwen2::load(vb, cfg)?),
        Architecture::Qwen3 => Box::new(qwen3::load(vb, cfg)?),
    })
}
