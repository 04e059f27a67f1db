//! The hyper-parameters of a llama GGUF and the `config.json` / `generation_config.json` they
//! become, including rope scaling (from `llama.rope.scaling.*` or a `rope_freqs` tensor).

use serde_json::{json, Value as Json};

use super::convert::dequantize;
use super::reader::{GgufFile, TensorInfo};
use super::tokenizer::TokenizerFiles;
use super::{GgufError, OutDType};

pub(crate) const ROPE_FREQS: &str = "rope_freqs.weight";

/// The hyper-parameters of a llama GGUF, validated.
#[derive(Debug, Clone)]
pub(crate) struct LlamaParams {
    pub n_layer: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
    pub vocab_size: usize,
    pub tied: bool,
    pub rope_scaling: Option<Json>,
}

impl LlamaParams {
    pub fn from_gguf(g: &GgufFile) -> Result<Self, GgufError> {
        let positive = |key: &str, v: usize| {
            if v == 0 {
                Err(g.invalid(key, "must be positive"))
            } else {
                Ok(v)
            }
        };
        let n_layer = positive("llama.block_count", g.get_usize("llama.block_count")?)?;
        let hidden = positive(
            "llama.embedding_length",
            g.get_usize("llama.embedding_length")?,
        )?;
        let ffn = positive(
            "llama.feed_forward_length",
            g.get_usize("llama.feed_forward_length")?,
        )?;
        let n_head = positive(
            "llama.attention.head_count",
            g.get_usize("llama.attention.head_count")?,
        )?;
        let n_head_kv = g
            .opt_usize("llama.attention.head_count_kv")?
            .unwrap_or(n_head);
        let n_head_kv = positive("llama.attention.head_count_kv", n_head_kv)?;
        if n_head % n_head_kv != 0 {
            return Err(g.invalid(
                "llama.attention.head_count_kv",
                format!("{n_head_kv} does not divide the head count {n_head}"),
            ));
        }
        let head_dim = match g.opt_usize("llama.attention.key_length")? {
            Some(d) => d,
            None if hidden % n_head == 0 => hidden / n_head,
            None => {
                return Err(g.invalid(
                    "llama.embedding_length",
                    format!("{hidden} is not a multiple of the head count {n_head}"),
                ))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(g.invalid(
                "llama.attention.key_length",
                format!("head dim {head_dim} must be even and positive"),
            ));
        }
        // The projections have n_head × head_dim rows (n_head_kv <= n_head).
        if n_head.checked_mul(head_dim).is_none() {
            return Err(g.invalid(
                "llama.attention.key_length",
                format!("head dim {head_dim} × {n_head} heads overflows"),
            ));
        }
        if let Some(v) = g.opt_usize("llama.attention.value_length")? {
            if v != head_dim {
                return Err(g.invalid(
                    "llama.attention.value_length",
                    format!("{v} differs from the key length {head_dim}"),
                ));
            }
        }
        if let Some(r) = g.opt_usize("llama.rope.dimension_count")? {
            if r != head_dim {
                return Err(g.invalid(
                    "llama.rope.dimension_count",
                    format!("partial rotary embeddings ({r} of {head_dim} dims) are not supported"),
                ));
            }
        }
        let context_length =
            positive("llama.context_length", g.get_usize("llama.context_length")?)?;
        let rms_eps = g
            .opt_f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5);
        let rope_theta = g.opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0);

        let embd = find(g, "token_embd.weight").ok_or_else(|| missing(g, "token_embd.weight"))?;
        let vocab_size = match embd.hf_shape()[..] {
            [v, h] if h == hidden => v,
            ref s => {
                return Err(bad(
                    g,
                    &embd.name,
                    format!("shape {s:?}, expected [vocab, {hidden}]"),
                ))
            }
        };
        let tied = find(g, "output.weight").is_none();
        let rope_scaling = rope_scaling(g, head_dim, rope_theta)?;
        Ok(Self {
            n_layer,
            hidden,
            ffn,
            n_head,
            n_head_kv,
            head_dim,
            context_length,
            rms_eps,
            rope_theta,
            vocab_size,
            tied,
            rope_scaling,
        })
    }
}

pub(crate) fn find<'f>(g: &'f GgufFile, name: &str) -> Option<&'f TensorInfo> {
    g.tensors.iter().find(|t| t.name == name)
}

pub(crate) fn missing(g: &GgufFile, tensor: &str) -> GgufError {
    GgufError::MissingTensor {
        path: g.path().to_path_buf(),
        tensor: tensor.to_string(),
    }
}

pub(crate) fn bad(g: &GgufFile, tensor: &str, msg: String) -> GgufError {
    GgufError::BadTensor {
        path: g.path().to_path_buf(),
        tensor: tensor.to_string(),
        msg,
    }
}

/// `rope_scaling` for config.json, from `llama.rope.scaling.*` or from a `rope_freqs` tensor.
fn rope_scaling(g: &GgufFile, head_dim: usize, theta: f64) -> Result<Option<Json>, GgufError> {
    if let Some(t) = find(g, ROPE_FREQS) {
        let factors: Vec<f32> = dequantize(g, t)?
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(|source: candle_core::Error| GgufError::Dequantize {
                path: g.path().to_path_buf(),
                tensor: t.name.clone(),
                source: Box::new(source),
            })?;
        if factors.len() != head_dim / 2 {
            return Err(bad(
                g,
                ROPE_FREQS,
                format!("{} factors, expected {}", factors.len(), head_dim / 2),
            ));
        }
        if factors.iter().all(|&f| (f - 1.0).abs() < 1e-6) {
            return Ok(None);
        }
        return llama3_rope_scaling(&factors, head_dim, theta).map(Some).ok_or_else(|| {
            bad(
                g,
                ROPE_FREQS,
                "per-dimension rope factors that do not match Llama 3 style rope scaling cannot be expressed in config.json".into(),
            )
        });
    }
    let kind = g.opt_str("llama.rope.scaling.type")?;
    let factor = g.opt_f64("llama.rope.scaling.factor")?;
    match (kind, factor) {
        (None | Some("none"), _) => Ok(None),
        (Some("linear"), Some(f)) => Ok(Some(
            json!({ "type": "linear", "rope_type": "linear", "factor": f }),
        )),
        (Some("yarn"), Some(f)) => {
            let orig = g.get_usize("llama.rope.scaling.original_context_length")?;
            Ok(Some(
                json!({ "type": "yarn", "rope_type": "yarn", "factor": f, "original_max_position_embeddings": orig }),
            ))
        }
        (Some(k @ ("linear" | "yarn")), None) => Err(g.invalid(
            "llama.rope.scaling.factor",
            format!("missing although the scaling type is {k}"),
        )),
        (Some(k), _) => Err(g.invalid(
            "llama.rope.scaling.type",
            format!("unsupported rope scaling type `{k}`"),
        )),
    }
}

/// llama.cpp stores Llama 3.1-style rope scaling as precomputed per-dimension factors. Find the
/// HF `llama3` parameters that reproduce them (factor = the largest value; the usual low/high
/// frequency factors 1 and 4; the original context among common sizes), or None.
fn llama3_rope_scaling(factors: &[f32], head_dim: usize, theta: f64) -> Option<Json> {
    let factor = factors.iter().copied().fold(f32::MIN, f32::max) as f64;
    let (low, high) = (1.0f64, 4.0f64);
    for orig in [
        8192.0f64, 4096.0, 2048.0, 16384.0, 32768.0, 65536.0, 131072.0,
    ] {
        let matches = factors.iter().enumerate().all(|(i, &got)| {
            let freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let want = if wavelen < orig / high {
                1.0
            } else if wavelen > orig / low {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            ((got as f64) - want).abs() <= 1e-3 * want.abs().max(1.0)
        });
        if matches {
            return Some(json!({
                "rope_type": "llama3",
                "factor": super::value::widen_f32(factor as f32),
                "low_freq_factor": low,
                "high_freq_factor": high,
                "original_max_position_embeddings": orig as u64,
            }));
        }
    }
    None
}

pub(crate) fn config_json(p: &LlamaParams, tok: &TokenizerFiles, dtype: OutDType) -> Json {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.hidden,
        "intermediate_size": p.ffn,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.head_dim,
        "max_position_embeddings": p.context_length,
        "rms_norm_eps": p.rms_eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": p.rope_scaling,
        "vocab_size": p.vocab_size,
        "tie_word_embeddings": p.tied,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": dtype.torch_dtype(),
        "hidden_act": "silu",
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": true,
    })
}

pub(crate) fn generation_config_json(tok: &TokenizerFiles) -> Json {
    let eos = match (tok.eos_id, tok.eot_id) {
        (Some(e), Some(t)) if e != t => json!([e, t]),
        (Some(e), _) => json!(e),
        (None, Some(t)) => json!(t),
        (None, None) => Json::Null,
    };
    json!({
        "_from_model_config": true,
        "bos_token_id": tok.bos_id,
        "eos_token_id": eos,
        "pad_token_id": tok.pad_id,
    })
}
