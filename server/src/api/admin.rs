//! Admin routes (they need `--api-key`): the models the server runs, loaded and unloaded at
//! runtime, and the recent log lines.
//!
//! - `GET /admin/models`, `GET /admin/models/{name}`: each model's status (`loading` with its
//!   phase, `ready`, `failed` with the reason, `unloading`), memory, keep-alive; plus the
//!   catalog's names.
//! - `POST /admin/models/load`: a catalog name, or a directory / `.gguf` file inside a
//!   `--model-root`, with options; answers 202 at once (poll the status) or, with `wait`,
//!   when the model is ready.
//! - `POST /admin/models/unload`: running requests finish first.
//! - `POST /admin/models/switch`: loads the new model, then unloads `from`.
//! - `GET /admin/logs` ([`super::logs`]).

use std::{path::PathBuf, sync::Arc};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::{models::parse_dtype, KvCacheBudget};
use serde::Deserialize;

use super::{error::ApiError, lora::confine, types::ErrorBody, AppState, JsonBody};
use crate::registry::{check_model_name, parse_size, KeepAlive, LoadOverrides, LoadRequest, ModelStatus, Source};

/// `POST /admin/models/load`, and the new model of a switch.
#[derive(Deserialize, Debug, utoipa::ToSchema)]
pub struct LoadModelRequest {
    /// A catalog name, or a model directory / `.gguf` file inside a `--model-root` (relative
    /// to one, or absolute).
    pub model: String,
    /// The name to serve it as (default: the catalog name, or the directory / file name).
    #[serde(default)]
    pub name: Option<String>,
    /// `f32`, `bf16` or `f16`.
    #[serde(default)]
    pub dtype: Option<String>,
    /// Prompt + output limit per request.
    #[serde(default)]
    pub max_model_len: Option<i64>,
    /// KV cache size: bytes, or a string like `"512MiB"`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub kv_cache_memory: Option<serde_json::Value>,
    /// Fraction of the GPU's memory for weights + KV cache, in (0, 1].
    #[serde(default)]
    pub gpu_memory_utilization: Option<f32>,
    /// How long the model stays loaded once idle: `"5m"`, seconds, `-1` for forever.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub keep_alive: Option<serde_json::Value>,
    /// Answer when the model is ready (or failed) instead of at once.
    #[serde(default)]
    pub wait: bool,
}

/// `POST /admin/models/unload`.
#[derive(Deserialize, Debug, utoipa::ToSchema)]
pub struct UnloadModelRequest {
    pub model: String,
}

/// `POST /admin/models/switch`: load `to` (with its options), then unload `from`.
#[derive(Deserialize, Debug, utoipa::ToSchema)]
pub struct SwitchModelRequest {
    pub from: String,
    #[serde(flatten)]
    pub to: LoadModelRequest,
}

/// The load order a request body describes, checked.
fn load_request(state: &AppState, body: &LoadModelRequest) -> Result<LoadRequest, ApiError> {
    let mut req = match state.registry.catalog().get(&body.model) {
        Some(entry) => entry.request.clone(),
        None => {
            let path = model_path(state, &body.model)?;
            let gguf = path.is_file();
            let stem = if gguf { path.file_stem() } else { path.file_name() };
            let name = stem.map_or_else(|| body.model.clone(), |s| s.to_string_lossy().into_owned());
            let source = if gguf { Source::Gguf(path) } else { Source::Dir(path) };
            LoadRequest { name, source, overrides: LoadOverrides::default(), keep_alive: None }
        }
    };
    if let Some(name) = &body.name {
        req.name = name.clone();
    }
    check_model_name(&req.name).map_err(|m| ApiError::invalid("name", m))?;
    let o = &mut req.overrides;
    if let Some(d) = &body.dtype {
        o.dtype = Some(parse_dtype(d).map_err(|e| ApiError::invalid("dtype", format!("`dtype`: {e}")))?);
    }
    if let Some(m) = body.max_model_len {
        let m = usize::try_from(m)
            .ok()
            .filter(|&m| m >= 1)
            .ok_or_else(|| ApiError::invalid("max_model_len", format!("`max_model_len` must be >= 1, got {m}")))?;
        o.max_model_len = Some(m);
    }
    match (&body.kv_cache_memory, body.gpu_memory_utilization) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "kv_cache_memory",
                "give `kv_cache_memory` or `gpu_memory_utilization`, not both",
            ))
        }
        (Some(v), None) => {
            let bytes = match v {
                serde_json::Value::Number(n) => {
                    n.as_u64().filter(|&b| b > 0).ok_or_else(|| format!("{n} is not a size in bytes"))
                }
                serde_json::Value::String(s) => parse_size(s),
                other => Err(format!("expected a size like \"512MiB\" or bytes, got {other}")),
            }
            .map_err(|e| ApiError::invalid("kv_cache_memory", format!("`kv_cache_memory`: {e}")))?;
            o.kv_cache = Some(KvCacheBudget::Bytes(bytes));
        }
        (None, Some(f)) if f > 0.0 && f <= 1.0 => o.kv_cache = Some(KvCacheBudget::GpuFraction(f)),
        (None, Some(f)) => {
            return Err(ApiError::invalid(
                "gpu_memory_utilization",
                format!("`gpu_memory_utilization` must be in (0, 1], got {f}"),
            ))
        }
        (None, None) => {}
    }
    if let Some(k) = &body.keep_alive {
        req.keep_alive =
            Some(KeepAlive::from_json(k).map_err(|e| ApiError::invalid("keep_alive", format!("`keep_alive`: {e}")))?);
    }
    Ok(req)
}

/// `model` as a model directory (with a config.json) or `.gguf` file inside a `--model-root`.
fn model_path(state: &AppState, raw: &str) -> Result<PathBuf, ApiError> {
    let roots = &state.config.model_roots;
    if roots.is_empty() {
        let names: Vec<&str> = state.registry.catalog().names().collect();
        return Err(ApiError::invalid(
            "model",
            format!(
                "`{raw}` is not a catalog name ({}) and loading by path is off: start the server with --model-root DIR",
                if names.is_empty() { "the catalog is empty".to_owned() } else { names.join(", ") }
            ),
        ));
    }
    let mut last = None;
    for root in roots {
        match confine(root, raw, "model", "--model-root") {
            Ok(p) => {
                if p.is_dir() && !p.join("config.json").is_file() {
                    return Err(ApiError::invalid("model", format!("`model` {raw:?} has no config.json")));
                }
                return Ok(p);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::invalid("model", "no --model-root")))
}

/// Every model with its status, and the catalog's names.
#[utoipa::path(get, path = "/admin/models", responses((status = 200), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let catalog: Vec<serde_json::Value> = state
        .registry
        .catalog()
        .entries()
        .map(|e| {
            serde_json::json!({
                "name": e.request.name,
                "source": e.request.source.to_string(),
                "loaded": state.registry.state(&e.request.name).is_some(),
            })
        })
        .collect();
    Json(serde_json::json!({"object": "list", "data": state.registry.statuses(), "catalog": catalog}))
}

/// One model's status.
#[utoipa::path(get, path = "/admin/models/{name}", responses((status = 200, body = ModelStatus), (status = 404, body = ErrorBody)))]
pub async fn get(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<ModelStatus>, ApiError> {
    state
        .registry
        .status(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no model named `{name}`")).with_param("name"))
}

/// Load a model: 202 with its `loading` status, or with `wait: true` its `ready` status.
#[utoipa::path(post, path = "/admin/models/load", request_body = LoadModelRequest,
    responses((status = 202, body = ModelStatus), (status = 200, body = ModelStatus), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn load(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<LoadModelRequest>,
) -> Result<Response, ApiError> {
    let req = load_request(&state, &body)?;
    let name = req.name.clone();
    let status = state.registry.start_load(req)?;
    if !body.wait {
        return Ok((StatusCode::ACCEPTED, Json(status)).into_response());
    }
    state.registry.wait_ready(&name).await?;
    let status = state.registry.status(&name).ok_or_else(|| ApiError::internal(format!("`{name}` vanished")))?;
    Ok((StatusCode::OK, Json(status)).into_response())
}

/// Unload a model once its running requests are done.
#[utoipa::path(post, path = "/admin/models/unload", request_body = UnloadModelRequest,
    responses((status = 200), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn unload(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<UnloadModelRequest>,
) -> Result<Response, ApiError> {
    state.registry.unload(&body.model).await?;
    Ok(Json(serde_json::json!({"name": crate::registry::normalize(&body.model), "status": "unloaded"})).into_response())
}

/// Load `to`, then unload `from`: 202 at once, or with `wait: true` when both are done.
#[utoipa::path(post, path = "/admin/models/switch", request_body = SwitchModelRequest,
    responses((status = 202, body = ModelStatus), (status = 200, body = ModelStatus), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn switch(
    State(state): State<Arc<AppState>>,
    JsonBody(body): JsonBody<SwitchModelRequest>,
) -> Result<Response, ApiError> {
    let req = load_request(&state, &body.to)?;
    let name = req.name.clone();
    let status = state.registry.begin_switch(&body.from, req)?;
    if !body.to.wait {
        let (registry, from) = (state.registry.clone(), body.from.clone());
        tokio::spawn(async move {
            if let Err(e) = registry.finish_switch(&from, &name).await {
                tracing::error!(from = %from, to = %name, "switch failed, `{from}` stays: {e}");
            }
        });
        return Ok((StatusCode::ACCEPTED, Json(status)).into_response());
    }
    state.registry.finish_switch(&body.from, &name).await?;
    let status = state.registry.status(&name).ok_or_else(|| ApiError::internal(format!("`{name}` vanished")))?;
    Ok((StatusCode::OK, Json(status)).into_response())
}
