//! `GET /api/tags`, `POST /api/show`, `GET /api/ps`: what UIs read to list models, show
//! their context length and capabilities, and see what is loaded.
//!
//! flint has no Ollama registry blobs, so the fields Ollama reads from a model's manifest are
//! derived from what flint knows: `size` is the weights' bytes, `digest` a stable hash of
//! the model's source and name (clients use it only to tell models apart), `format` is
//! `safetensors`, and `quantization_level` the weights' dtype.

use std::{path::Path, sync::Arc};

use axum::{extract::State, Json};
use chrono::{DateTime, Utc};
use flint_engine::models::config::ModelConfig;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{not_found, rfc3339, types::ShowRequest, OllamaError, OllamaJson};
use crate::{
    api::{AppState, Served},
    registry::{normalize, KeepAlive, Source},
};

#[derive(Serialize, Clone)]
struct Details {
    parent_model: String,
    format: &'static str,
    family: String,
    families: Vec<String>,
    parameter_size: String,
    quantization_level: String,
}

/// One model of `/api/tags` (and, with more fields, of `/api/ps`).
#[derive(Serialize)]
struct TagModel {
    name: String,
    model: String,
    modified_at: String,
    size: u64,
    digest: String,
    details: Details,
}

#[derive(Serialize)]
struct PsModel {
    #[serde(flatten)]
    base: TagModel,
    expires_at: String,
    size_vram: u64,
    context_length: usize,
}

/// `x` → `x:latest`, as Ollama names untagged models.
fn tagged(name: &str) -> String {
    if name.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// Ollama's family names are the architecture's, lower case: `LlamaForCausalLM` → `llama`.
fn family(hf_architecture: &str) -> String {
    let base = ["ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "Model"]
        .iter()
        .find_map(|s| hf_architecture.strip_suffix(s))
        .unwrap_or(hf_architecture);
    base.to_ascii_lowercase()
}

/// `134515008` → `135M`, `1235814400` → `1.2B`, as Ollama writes parameter counts.
fn parameter_size(n: u64) -> String {
    let n = n as f64;
    let (value, unit) = match n {
        n if n >= 1e12 => (n / 1e12, "T"),
        n if n >= 1e9 => (n / 1e9, "B"),
        n if n >= 1e6 => (n / 1e6, "M"),
        n if n >= 1e3 => (n / 1e3, "K"),
        n => return format!("{n}"),
    };
    if value >= 100.0 || unit == "M" || unit == "K" {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

/// 64 hex digits from `source` and `name`: four FNV-1a hashes with different offsets, so the
/// digest looks like Ollama's sha256 and is the same on every call and every restart.
fn digest(source: &str, name: &str) -> String {
    let mut out = String::with_capacity(64);
    for round in 0u64..4 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in source.bytes().chain([0]).chain(name.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
    }
    out
}

fn details(cfg: Option<&ModelConfig>, dtype: Option<&str>, parent: &str) -> Details {
    let family = cfg.map(|c| family(&c.hf_architecture)).unwrap_or_default();
    Details {
        parent_model: parent.to_owned(),
        format: "safetensors",
        families: if family.is_empty() { Vec::new() } else { vec![family.clone()] },
        family,
        parameter_size: cfg.map(|c| parameter_size(c.num_parameters())).unwrap_or_default(),
        quantization_level: dtype.map(str::to_ascii_uppercase).unwrap_or_default(),
    }
}

/// Ollama's `model_info` keys (GGUF metadata names), from the model's config.
fn model_info(cfg: &ModelConfig, context: usize) -> Map<String, Value> {
    let f = family(&cfg.hf_architecture);
    let mut m = Map::new();
    m.insert("general.architecture".into(), f.clone().into());
    m.insert("general.parameter_count".into(), cfg.num_parameters().into());
    m.insert(format!("{f}.context_length"), context.into());
    m.insert(format!("{f}.embedding_length"), cfg.hidden_size.into());
    m.insert(format!("{f}.block_count"), cfg.num_layers.into());
    m.insert(format!("{f}.attention.head_count"), cfg.num_heads.into());
    m.insert(format!("{f}.attention.head_count_kv"), cfg.num_kv_heads.into());
    m.insert(format!("{f}.vocab_size"), cfg.vocab_size.into());
    m
}

fn unix(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn served_entry(s: &Served) -> TagModel {
    let info = s.engine.info();
    TagModel {
        name: tagged(&s.name),
        model: tagged(&s.name),
        modified_at: rfc3339(unix(s.created)),
        size: info.weight_bytes,
        digest: digest(&s.source, &s.name),
        details: details(Some(&info.model), Some(&info.dtype), ""),
    }
}

/// The LoRA adapters of `s`, each served under its own name.
fn adapter_entries(s: &Served) -> Vec<TagModel> {
    let info = s.engine.info();
    s.engine
        .adapters()
        .into_iter()
        .map(|a| TagModel {
            name: tagged(&a.name),
            model: tagged(&a.name),
            modified_at: rfc3339(unix(i64::try_from(a.created).unwrap_or(0))),
            size: 0,
            digest: digest(&a.path.display().to_string(), &a.name),
            details: details(Some(&info.model), Some(&info.dtype), &tagged(&s.name)),
        })
        .collect()
}

/// A catalog entry's config.json, when its source is a directory (no load needed).
fn catalog_config(source: &Source) -> Option<ModelConfig> {
    match source {
        Source::Dir(dir) => ModelConfig::from_file(&dir.join("config.json")).ok(),
        _ => None,
    }
}

/// When a catalog entry's files last changed (now when that cannot be told).
fn modified(source: &Source) -> DateTime<Utc> {
    let path: Option<&Path> = match source {
        Source::Dir(p) | Source::Gguf(p) => Some(p),
        Source::Hub(_) => None,
    };
    path.and_then(|p| std::fs::metadata(p).ok()?.modified().ok()).map(DateTime::<Utc>::from).unwrap_or_else(Utc::now)
}

/// Every model a request can name: loaded models, their LoRA adapters, and catalog entries
/// that are not loaded yet (they load on first use, as Ollama's installed models do).
pub async fn tags(State(state): State<Arc<AppState>>) -> Json<Value> {
    let ready = state.registry.ready();
    let mut models: Vec<TagModel> = Vec::new();
    for s in &ready {
        models.push(served_entry(s));
        models.extend(adapter_entries(s));
    }
    for entry in state.registry.catalog().entries() {
        let req = &entry.request;
        if ready.iter().any(|s| s.name == req.name) {
            continue;
        }
        let cfg = catalog_config(&req.source);
        let dtype = req.overrides.dtype.map(|d| d.as_str());
        models.push(TagModel {
            name: tagged(&req.name),
            model: tagged(&req.name),
            modified_at: rfc3339(modified(&req.source)),
            size: 0,
            digest: digest(&req.source.to_string(), &req.name),
            details: details(cfg.as_ref(), dtype, ""),
        });
    }
    Json(json!({ "models": models }))
}

/// `parameters` as Ollama prints them: one `key value` line each.
fn parameters(s: &Served) -> String {
    let info = s.engine.info();
    let tok = s.engine.tokenizer();
    let mut lines: Vec<String> =
        info.eos_ids.iter().map(|&id| format!("{:<30} {:?}", "stop", tok.token_text(id))).collect();
    lines.push(format!("{:<30} {}", "num_ctx", info.max_model_len));
    lines.join("\n")
}

/// The chat template's source (Jinja, not Ollama's Go templates; UIs only display it).
fn template_source(s: &Served) -> String {
    s.engine.tokenizer().template_config().get("chat_template").and_then(Value::as_str).unwrap_or_default().to_owned()
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    OllamaJson(req): OllamaJson<ShowRequest>,
) -> Result<Json<Value>, OllamaError> {
    let model = req.model.or(req.name).unwrap_or_default();
    if model.is_empty() {
        return Err(super::invalid("model", "model is required"));
    }
    let name = normalize(&model);
    let ready = state.registry.ready();
    let found = ready.iter().find(|s| s.name == name).map(|s| (s, None)).or_else(|| {
        ready.iter().find_map(|s| s.engine.adapters().into_iter().find(|a| a.name == name).map(|a| (s, Some(a))))
    });
    if let Some((s, adapter)) = found {
        let info = s.engine.info();
        let parent = if adapter.is_some() { tagged(&s.name) } else { String::new() };
        let mut modelfile = format!("# Modelfile generated by flint\nFROM {}\n", s.source);
        if let Some(a) = &adapter {
            modelfile.push_str(&format!("ADAPTER {}\n", a.path.display()));
        }
        return Ok(Json(json!({
            "modelfile": modelfile,
            "parameters": parameters(s),
            "template": template_source(s),
            "details": details(Some(&info.model), Some(&info.dtype), &parent),
            "model_info": model_info(&info.model, info.max_model_len),
            "capabilities": ["completion"],
            "modified_at": rfc3339(unix(s.created)),
        })));
    }
    // A catalog entry not loaded yet: what its config.json tells, without loading it.
    let entry = state.registry.catalog().get(name).ok_or_else(|| not_found(&model))?;
    let req = &entry.request;
    let cfg = catalog_config(&req.source);
    let context = cfg.as_ref().map(|c| {
        let m = c.max_position_embeddings;
        req.overrides.max_model_len.map_or(m, |o| o.min(m))
    });
    Ok(Json(json!({
        "modelfile": format!("# Modelfile generated by flint\nFROM {}\n", req.source),
        "parameters": context.map(|c| format!("{:<30} {c}", "num_ctx")).unwrap_or_default(),
        "template": "",
        "details": details(cfg.as_ref(), None, ""),
        "model_info": cfg.as_ref().zip(context).map(|(c, n)| model_info(c, n)).unwrap_or_default(),
        "capabilities": ["completion"],
        "modified_at": rfc3339(modified(&req.source)),
    })))
}

/// The loaded models, with their memory and when they will be unloaded.
pub async fn ps(State(state): State<Arc<AppState>>) -> Json<Value> {
    let now = Utc::now();
    // Ollama's "never": its longest duration (about 292 years) from now.
    let never = now.checked_add_signed(chrono::Duration::nanoseconds(i64::MAX)).unwrap_or(now);
    let models: Vec<PsModel> = state
        .registry
        .ready()
        .iter()
        .map(|s| {
            let info = s.engine.info();
            let expires = match s.keep_alive() {
                KeepAlive::Forever => never,
                // While a request runs the idle clock has not started: a full keep-alive is left.
                KeepAlive::For(d) => s.expires_at().unwrap_or_else(|| {
                    chrono::Duration::from_std(d).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(never)
                }),
            };
            let mut base = served_entry(s);
            base.size = s.memory_bytes();
            PsModel {
                base,
                expires_at: rfc3339(expires),
                // flint has no per-model device record; a CUDA build serves from the GPU.
                size_vram: if cfg!(feature = "cuda") { s.memory_bytes() } else { 0 },
                context_length: info.max_model_len,
            }
        })
        .collect();
    Json(json!({ "models": models }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sizes_and_digests() {
        assert_eq!(tagged("smollm2"), "smollm2:latest");
        assert_eq!(tagged("smollm2:135m"), "smollm2:135m");
        assert_eq!(family("LlamaForCausalLM"), "llama");
        assert_eq!(family("Qwen2ForCausalLM"), "qwen2");
        assert_eq!(parameter_size(134_515_008), "135M");
        assert_eq!(parameter_size(1_235_814_400), "1.2B");
        assert_eq!(parameter_size(494_032_768), "494M");
        assert_eq!(parameter_size(7_241_732_096), "7.2B");
        assert_eq!(parameter_size(999), "999");
        let d = digest("/models/a", "a");
        assert_eq!(d.len(), 64);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d, digest("/models/a", "a"));
        assert_ne!(d, digest("/models/a", "b"));
    }
}
