//! PEFT LoRA adapters: [`LoraAdapter::load`] reads and checks a directory written by
//! Hugging Face `peft` (`adapter_config.json` + `adapter_model.safetensors`) against the base
//! model's [`ModelConfig`]; the weights stay on the host until the engine puts the adapter in
//! a slot of the model's stacked LoRA weights ([`crate::Model::set_lora_slot`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::{
    config::ModelConfig,
    error::{ModelError, Result},
    loader::read_json,
};

/// The projections an adapter may target, named as in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetModule {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl TargetModule {
    pub const ALL: [TargetModule; 7] = [Self::Q, Self::K, Self::V, Self::O, Self::Gate, Self::Up, Self::Down];

    pub fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// `(in_features, out_features)` of this projection in `cfg`'s model.
    pub fn dims(self, cfg: &ModelConfig) -> (usize, usize) {
        let (h, d, i) = (cfg.hidden_size, cfg.head_dim, cfg.intermediate_size);
        match self {
            Self::Q => (h, cfg.num_heads * d),
            Self::K | Self::V => (h, cfg.num_kv_heads * d),
            Self::O => (cfg.num_heads * d, h),
            Self::Gate | Self::Up => (h, i),
            Self::Down => (i, h),
        }
    }

    /// The sub-module of a decoder layer holding this projection.
    pub(crate) fn block(self) -> &'static str {
        match self {
            Self::Q | Self::K | Self::V | Self::O => "self_attn",
            _ => "mlp",
        }
    }
}

/// The fields of peft's adapter_config.json that flint reads; the rest are ignored. Options
/// that change the math and that flint does not implement are refused by name.
#[derive(Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    target_modules: TargetModules,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TargetModules {
    List(Vec<String>),
    One(String),
}

/// One layer's A `[r, in]` and B `[out, r]` for one module (f32, host).
pub type LoraPair = (Tensor, Tensor);

/// A checked PEFT LoRA adapter, weights on the host in f32.
#[derive(Debug)]
pub struct LoraAdapter {
    pub dir: PathBuf,
    pub rank: usize,
    /// `lora_alpha / r`, or `lora_alpha / sqrt(r)` with rsLoRA.
    pub scale: f32,
    pub targets: BTreeSet<TargetModule>,
    /// `weights[layer][module.index()]`.
    weights: Vec<[Option<LoraPair>; 7]>,
}

impl LoraAdapter {
    /// Reads `dir` and checks it against the base model: a supported config, rank at most
    /// `max_rank`, known target modules, and A/B tensors for exactly those modules with the
    /// base model's shapes. Errors name the file and the field or tensor at fault.
    pub fn load(dir: &Path, cfg: &ModelConfig, max_rank: usize) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        if !cfg_path.is_file() {
            return Err(ModelError::MissingFile { path: cfg_path });
        }
        let pc: PeftConfig = read_json(&cfg_path)?;
        let bad = |field: &'static str, reason: String| ModelError::InvalidConfig { path: cfg_path.clone(), field, reason };
        if let Some(t) = pc.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(bad("peft_type", format!("{t:?} is not a LoRA adapter")));
        }
        if pc.r == 0 || pc.r > max_rank {
            return Err(bad("r", format!("rank {} must be between 1 and --max-lora-rank ({max_rank})", pc.r)));
        }
        if !(pc.lora_alpha.is_finite() && pc.lora_alpha > 0.0) {
            return Err(bad("lora_alpha", format!("{} must be a positive number", pc.lora_alpha)));
        }
        if pc.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(bad("bias", "only \"none\" is supported".into()));
        }
        if pc.fan_in_fan_out {
            return Err(bad("fan_in_fan_out", "transposed (Conv1D) weights are not supported".into()));
        }
        if pc.use_dora {
            return Err(bad("use_dora", "DoRA adapters are not supported".into()));
        }
        if pc.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad("modules_to_save", "adapters that replace whole modules are not supported".into()));
        }
        if pc.rank_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad("rank_pattern", "per-module ranks are not supported".into()));
        }
        if pc.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad("alpha_pattern", "per-module alphas are not supported".into()));
        }
        if pc.layers_to_transform.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(bad("layers_to_transform", "adapters on a subset of layers are not supported".into()));
        }
        let targets: BTreeSet<TargetModule> = match &pc.target_modules {
            TargetModules::One(s) if s == "all-linear" => TargetModule::ALL.into_iter().collect(),
            TargetModules::One(s) => {
                return Err(bad("target_modules", format!("the pattern {s:?} is not supported; list the modules")))
            }
            TargetModules::List(names) => names
                .iter()
                .map(|n| {
                    TargetModule::parse(n).ok_or_else(|| {
                        bad("target_modules", format!("unknown target module {n:?} (supported: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"))
                    })
                })
                .collect::<Result<_>>()?,
        };
        if targets.is_empty() {
            return Err(bad("target_modules", "no target modules".into()));
        }
        let scale = if pc.use_rslora { pc.lora_alpha / (pc.r as f64).sqrt() } else { pc.lora_alpha / pc.r as f64 } as f32;
        // A huge alpha overflows f32 (every output would be inf/NaN); a tiny one rounds to 0.
        if !(scale.is_finite() && scale > 0.0) {
            return Err(bad("lora_alpha", format!("{} / r gives a scale of {scale}, outside f32's range", pc.lora_alpha)));
        }
        let weights = load_weights(dir, cfg, pc.r, &targets)?;
        Ok(Self { dir: dir.to_owned(), rank: pc.r, scale, targets, weights })
    }

    /// A and B of `module` in `layer`, if the adapter targets it.
    pub fn pair(&self, layer: usize, module: TargetModule) -> Option<&LoraPair> {
        self.weights.get(layer)?[module.index()].as_ref()
    }

    /// Host bytes held by the weights.
    pub fn size_bytes(&self) -> usize {
        self.weights.iter().flatten().flatten().map(|(a, b)| (a.elem_count() + b.elem_count()) * 4).sum()
    }
}

/// Reads adapter_model.safetensors: every tensor must be one of the expected A/B weights.
fn load_weights(dir: &Path, cfg: &ModelConfig, rank: usize, targets: &BTreeSet<TargetModule>) -> Result<Vec<[Option<LoraPair>; 7]>> {
    let path = dir.join("adapter_model.safetensors");
    if !path.is_file() {
        if dir.join("adapter_model.bin").is_file() {
            return Err(ModelError::CorruptWeights {
                path: dir.join("adapter_model.bin"),
                reason: "PyTorch pickle weights are not loaded; save the adapter with safetensors (peft's default)".into(),
            });
        }
        return Err(ModelError::MissingFile { path });
    }
    let bytes = std::fs::read(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| ModelError::CorruptWeights { path: path.clone(), reason: e.to_string() })?;
    let invalid = |reason: String| ModelError::InvalidAdapter { path: path.clone(), reason };
    let mut weights: Vec<[Option<LoraPair>; 7]> = (0..cfg.num_layers).map(|_| Default::default()).collect();
    let mut halves: std::collections::HashMap<(usize, TargetModule), (Option<Tensor>, Option<Tensor>)> = Default::default();
    for (name, t) in tensors {
        let (layer, module, is_a) = parse_key(&name).ok_or_else(|| {
            invalid(format!("unexpected tensor {name:?} (expected base_model.model.model.layers.N.{{self_attn,mlp}}.<module>.lora_{{A,B}}.weight)"))
        })?;
        if layer >= cfg.num_layers {
            return Err(invalid(format!("tensor {name:?}: layer {layer} does not exist (the base model has {})", cfg.num_layers)));
        }
        if !targets.contains(&module) {
            return Err(invalid(format!("tensor {name:?}: {} is not in target_modules", module.name())));
        }
        let (d_in, d_out) = module.dims(cfg);
        let want = if is_a { [rank, d_in] } else { [d_out, rank] };
        if t.dims() != want {
            return Err(invalid(format!("tensor {name:?} has shape {:?}, expected {want:?} for r={rank} on this base model", t.dims())));
        }
        let t = t.to_dtype(DType::F32).map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
        let slot = halves.entry((layer, module)).or_default();
        if is_a { slot.0 = Some(t) } else { slot.1 = Some(t) }
    }
    for (layer, slots) in weights.iter_mut().enumerate() {
        for &module in targets {
            let (a, b) = halves.remove(&(layer, module)).unwrap_or_default();
            let missing = |half: &str| invalid(format!("missing tensor base_model.model.model.layers.{layer}.{}.{}.lora_{half}.weight", module.block(), module.name()));
            let a = a.ok_or_else(|| missing("A"))?;
            let b = b.ok_or_else(|| missing("B"))?;
            slots[module.index()] = Some((a, b));
        }
    }
    Ok(weights)
}

/// `base_model.model.model.layers.{N}.{self_attn|mlp}.{module}.lora_{A|B}[.default].weight`
/// → (N, module, is A).
fn parse_key(name: &str) -> Option<(usize, TargetModule, bool)> {
    let rest = name.strip_prefix("base_model.model.")?;
    let rest = rest.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer = layer.parse().ok()?;
    let (block, rest) = rest.split_once('.')?;
    let (module, rest) = rest.split_once('.')?;
    let module = TargetModule::parse(module).filter(|m| m.block() == block)?;
    let is_a = match rest {
        "lora_A.weight" | "lora_A.default.weight" => true,
        "lora_B.weight" | "lora_B.default.weight" => false,
        _ => return None,
    };
    Some((layer, module, is_a))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `proptests::peft_configs`: `lora_alpha: 1e308` made the scale infinite.
    #[test]
    fn scale_must_fit_f32() {
        let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));
        let cfg = ModelConfig::from_file(&fixture.join("tiny/llama-gqa-tied/config.json")).unwrap();
        let adapter = fixture.join("lora/llama-gqa-tied/attn-r8");
        for alpha in ["1e308", "5e-324"] {
            let dir = tempfile::tempdir().unwrap();
            let text = format!(r#"{{"r": 8, "lora_alpha": {alpha}, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}"#);
            std::fs::write(dir.path().join("adapter_config.json"), text).unwrap();
            std::fs::copy(adapter.join("adapter_model.safetensors"), dir.path().join("adapter_model.safetensors")).unwrap();
            let err = LoraAdapter::load(dir.path(), &cfg, 16).unwrap_err();
            assert!(matches!(err, ModelError::InvalidConfig { field: "lora_alpha", .. }), "{err}");
        }
    }

    #[test]
    fn peft_keys_parse() {
        assert_eq!(parse_key("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"), Some((3, TargetModule::Q, true)));
        assert_eq!(parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"), Some((0, TargetModule::Down, false)));
        assert_eq!(parse_key("base_model.model.model.layers.0.mlp.q_proj.lora_B.weight"), None, "q_proj lives in self_attn");
        assert_eq!(parse_key("base_model.model.lm_head.lora_A.weight"), None);
        assert_eq!(parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_embedding_A"), None);
    }
}
