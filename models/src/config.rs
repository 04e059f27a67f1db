//! `config.json` of a Hugging Face checkpoint, parsed once into [`ModelConfig`].

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// The decoder-only architectures flint implements (one file each under `arch/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 1/2/3.x, SmolLM2) and `MistralForCausalLM` (no sliding window).
    Llama,
    /// `Qwen2ForCausalLM` (Qwen2, Qwen2.5): q/k/v projections with bias.
    Qwen2,
    /// `Qwen3ForCausalLM`: per-head RMSNorm on q and k.
    Qwen3,
}

pub const SUPPORTED_ARCHITECTURES: &str =
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM";

impl Architecture {
    fn from_hf(name: &str) -> Option<Self> {
        match name {
            "LlamaForCausalLM" | "MistralForCausalLM" => Some(Self::Llama),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// Llama-3 style frequency-dependent RoPE scaling (`rope_type: "llama3"`).
#[derive(Clone, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// RoPE frequency scaling.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    Llama3(Llama3RopeScaling),
    /// Position interpolation: positions divided by `factor` (`rope_type: "linear"`).
    Linear { factor: f64 },
}

/// The architecture-independent model description the layers are built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// The `architectures[0]` string of config.json, for display.
    pub hf_architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// o_proj carries a bias (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            Self::One(x) => vec![x],
            Self::Many(v) => v,
        }
    }
}

/// The fields of config.json flint reads; unknown fields are ignored.
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    rope_theta: f64,
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    hidden_act: Option<String>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
}

fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}

impl ModelConfig {
    /// Parameters of the checkpoint's shape (embeddings, attention, MLP, norms, biases and an
    /// untied LM head): what `/api/show` and the model list report, and with the dtype the
    /// weights' memory.
    pub fn num_parameters(&self) -> u64 {
        // Saturating: the sizes come from config.json, and no real model comes near u64::MAX.
        let m = u64::saturating_mul;
        let sum = |xs: &[u64]| xs.iter().fold(0u64, |acc, &x| acc.saturating_add(x));
        let (h, i, d) = (self.hidden_size as u64, self.intermediate_size as u64, self.head_dim as u64);
        let (q, kv) = (m(self.num_heads as u64, d), m(self.num_kv_heads as u64, d));
        let mut layer = sum(&[m(h, q), m(2, m(h, kv)), m(q, h), m(3, m(h, i)), m(2, h)]);
        if self.qkv_bias {
            layer = sum(&[layer, q, m(2, kv)]);
        }
        if self.o_bias {
            layer = sum(&[layer, h]);
        }
        if self.qk_norm {
            layer = sum(&[layer, m(2, d)]);
        }
        let embed = m(self.vocab_size as u64, h);
        let head = if self.tie_word_embeddings { 0 } else { embed };
        sum(&[embed, head, h, m(self.num_layers as u64, layer)])
    }

    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ModelError::MissingFile { path: path.to_owned() },
            _ => ModelError::Io { path: path.to_owned(), source },
        })?;
        Self::from_json(&text, path)
    }

    /// Parses config.json text; `path` only names the file in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let hf: HfConfig = ModelError::parse_json(text, path)?;
        let invalid = |field: &'static str, reason: String| ModelError::InvalidConfig {
            path: path.to_owned(),
            field,
            reason,
        };
        let hf_architecture = hf.architectures.first().cloned().unwrap_or_default();
        let architecture = Architecture::from_hf(&hf_architecture).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                path: path.to_owned(),
                name: hf_architecture.clone(),
                supported: SUPPORTED_ARCHITECTURES,
            }
        })?;
        if let Some(act) = hf.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(invalid("hidden_act", format!("{act:?} is not supported (only \"silu\")")));
        }
        for (field, v) in [
            ("vocab_size", hf.vocab_size),
            ("hidden_size", hf.hidden_size),
            ("intermediate_size", hf.intermediate_size),
            ("num_hidden_layers", hf.num_hidden_layers),
            ("num_attention_heads", hf.num_attention_heads),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be > 0".into()));
            }
        }
        let num_heads = hf.num_attention_heads;
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(num_heads);
        if num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(invalid(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads ({num_heads})"),
            ));
        }
        let head_dim = match hf.head_dim {
            Some(d) => d,
            None if hf.hidden_size.is_multiple_of(num_heads) => hf.hidden_size / num_heads,
            None => {
                return Err(invalid(
                    "num_attention_heads",
                    format!("{num_heads} does not divide hidden_size ({})", hf.hidden_size),
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(invalid("head_dim", format!("{head_dim} must be even and > 0 for RoPE")));
        }
        if !(hf.rms_norm_eps.is_finite() && hf.rms_norm_eps > 0.0) {
            return Err(invalid("rms_norm_eps", format!("{} must be > 0", hf.rms_norm_eps)));
        }
        if !(hf.rope_theta.is_finite() && hf.rope_theta > 0.0) {
            return Err(invalid("rope_theta", format!("{} must be > 0", hf.rope_theta)));
        }
        let rope_scaling = match hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => parse_rope_scaling(&v).map_err(|r| invalid("rope_scaling", r))?,
        };
        let sliding = hf.use_sliding_window.unwrap_or(true)
            && hf.sliding_window.as_ref().is_some_and(|w| !w.is_null())
            && architecture == Architecture::Llama;
        if sliding {
            // Mistral v0.1 configs name a 4096 window; flint attends over the full context.
            tracing::warn!("{}: sliding_window is ignored: full attention is used", path.display());
        }
        Ok(Self {
            architecture,
            hf_architecture,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: hf.max_position_embeddings,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            rope_scaling,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias: architecture == Architecture::Qwen2 || hf.attention_bias,
            o_bias: architecture == Architecture::Llama && hf.attention_bias,
            qk_norm: architecture == Architecture::Qwen3,
            bos_token_id: hf.bos_token_id,
            eos_token_ids: hf.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
        })
    }
}

fn parse_rope_scaling(v: &serde_json::Value) -> Result<Option<RopeScaling>, String> {
    let kind = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|t| t.as_str())
        .ok_or("missing \"rope_type\"")?;
    let num = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or(format!("missing number \"{k}\""));
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
        "llama3" => {
            let s = Llama3RopeScaling {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
            };
            if s.high_freq_factor <= s.low_freq_factor || s.factor <= 0.0 {
                return Err("llama3 scaling needs factor > 0 and high_freq_factor > low_freq_factor".into());
            }
            Ok(Some(RopeScaling::Llama3(s)))
        }
        other => Err(format!("rope_type {other:?} is not supported (default, linear, llama3)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ModelConfig> {
        ModelConfig::from_json(json, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn defaults_and_eos_list() {
        let c = parse(&format!(
            r#"{{"architectures": ["Qwen2ForCausalLM"], {BASE}, "eos_token_id": [3, 4]}}"#
        ))
        .unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.qkv_bias), (2, 4, true));
        assert_eq!(c.eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(&format!(r#"{{"architectures": ["GPT2LMHeadModel"], {BASE}}}"#)).unwrap_err();
        assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
        let e = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "num_key_value_heads": 3}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("num_key_value_heads"), "{e}");
        let e = parse(r#"{"architectures": ["LlamaForCausalLM"]}"#).unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        let e = parse(&format!(
            r#"{{"architectures": ["LlamaForCausalLM"], {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 2}}}}"#
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rope_scaling"), "{e}");
    }

    /// Published sizes: Llama-3.2-1B 1,235,814,400; Llama-3.1-8B 8,030,261,248;
    /// Qwen2.5-7B 7,615,616,512 parameters.
    #[test]
    fn parameter_counts_match_the_published_sizes() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../benches/configs"));
        for (name, n) in [("llama-3.2-1b", 1_235_814_400), ("llama-3.1-8b", 8_030_261_248), ("qwen2.5-7b", 7_615_616_512)] {
            let c = ModelConfig::from_file(&dir.join(name).join("config.json")).unwrap();
            assert_eq!(c.num_parameters(), n, "{name}");
        }
    }
}
