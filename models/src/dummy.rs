//! `--load-format dummy`: random weights created directly on the device for any config.json,
//! as vLLM does, so throughput at real sizes (Llama-3.1-8B, Qwen2.5-7B shapes) can be measured
//! without weight files. Norm weights are ones and everything else is N(0, 0.02), so activations
//! stay in range through deep stacks in bf16.

use std::path::Path;

use candle_core::{DType, Device, Result as CResult, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::{
    error::{ModelError, Result},
    loader::{read_generation_config, LoadOptions, LoadedModel},
    ModelConfig,
};

struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> CResult<Tensor> {
        if name.ends_with("norm.weight") {
            return Tensor::ones(s, dtype, dev);
        }
        // Sampled in f32 (every backend supports it), then stored in the model's dtype.
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> CResult<Tensor> {
        candle_core::bail!("dummy weights need a shape for `{name}`")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Builds the model of `dir/config.json` with random weights (no weight files are read).
pub fn load_dummy(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let generation = read_generation_config(dir)?;
    let dtype = opts.dtype.unwrap_or(if opts.device.is_cpu() { DType::F32 } else { DType::BF16 });
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), dtype, opts.device.clone());
    let model =
        crate::arch::load(vb.into(), &config).map_err(|source| ModelError::Weights { dir: dir.to_owned(), source })?;
    Ok(LoadedModel { model, config, generation, dir: dir.to_owned(), dtype, device: opts.device.clone(), quantization: None })
}
