//! Writing a trained adapter in PEFT's layout, and the seeded generator of its initial A.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::TrainableModel;
use crate::error::{ModelError, Result};

/// SplitMix64 (Steele, Lea & Flood 2014): a tiny, well-mixed 64-bit generator. flint uses
/// it wherever training needs reproducible randomness (LoRA A initialisation, epoch
/// shuffles) so that a seed means the same numbers on every platform and dependency version.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`), by rejection so that no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

impl TrainableModel {
    /// The adapter weights under PEFT's names
    /// (`base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`), f32
    /// on the host.
    pub fn adapter_tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (layer, m, a, b) in self.adapters() {
            let key = format!("base_model.model.model.layers.{layer}.{}.{}", m.block(), m.name());
            out.insert(format!("{key}.lora_A.weight"), a.as_tensor().detach().to_device(&Device::Cpu)?);
            out.insert(format!("{key}.lora_B.weight"), b.as_tensor().detach().to_device(&Device::Cpu)?);
        }
        Ok(out)
    }

    /// Writes the adapter as a PEFT directory (`adapter_config.json` +
    /// `adapter_model.safetensors`) at `dir`, naming `base_model` as its
    /// `base_model_name_or_path`. The files are written into a temporary directory next to
    /// `dir` and renamed into place, so `dir` either does not exist or is complete; an
    /// existing `dir` is refused rather than overwritten.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        if dir.exists() {
            return Err(ModelError::Io { path: dir.to_owned(), source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists; refusing to overwrite it") });
        }
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adapter".into());
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ModelError::Io { path, source }
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        // Dropped (and removed) on any error below; kept by `keep` once renamed.
        let tmp = tempfile::Builder::new().prefix(&format!(".{name}.partial-")).tempdir_in(&parent).map_err(io(&parent))?;

        let mut targets: Vec<&str> = self.spec.targets.iter().map(|m| m.name()).collect();
        targets.sort_unstable();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": self.spec.rank,
            "lora_alpha": self.spec.alpha,
            "target_modules": targets,
            "lora_dropout": 0.0,
            "bias": "none",
            "use_rslora": false,
            "use_dora": false,
            "fan_in_fan_out": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "layers_to_transform": null,
            "base_model_name_or_path": base_model,
        });
        let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Candle(candle_core::Error::msg(e)))?;
        write_synced(&tmp.path().join("adapter_config.json"), text.as_bytes())?;

        // candle writes the safetensors file; flushed before the rename like the config.
        let weights_path = tmp.path().join("adapter_model.safetensors");
        candle_core::safetensors::save(&self.adapter_tensors()?, &weights_path)
            .map_err(|e| ModelError::CorruptWeights { path: weights_path.clone(), reason: e.to_string() })?;
        std::fs::File::open(&weights_path).and_then(|f| f.sync_all()).map_err(io(&weights_path))?;

        // rename(2) would replace an empty directory created meanwhile: check once more.
        if dir.exists() {
            return Err(ModelError::Io { path: dir.to_owned(), source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "appeared while the adapter was written; refusing to overwrite it") });
        }
        std::fs::rename(tmp.path(), dir).map_err(io(dir))?;
        let _ = tmp.keep();
        Ok(())
    }
}

/// Writes `bytes` to `path` and flushes them to disk before the directory is renamed.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let mut f = std::fs::File::create(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}
