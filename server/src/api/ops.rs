//! Operational routes: `/health`, `/ready`, `/v1/models`, `/openapi.json`, `/docs`.
//! `/v1/models` lists the base model, then each loaded LoRA adapter (`parent`: the base).

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{Html, IntoResponse, Response},
    Json,
};
use flint_engine::AdapterInfo;
use utoipa::OpenApi;

use super::{
    error::ApiError,
    types::{
        ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorBody, LoadLoraAdapterRequest,
        ModelCard, ModelList, UnloadLoraAdapterRequest,
    },
    AppState, Served,
};
use crate::registry::ModelState;

#[derive(OpenApi)]
#[openapi(
    info(title = "flint", description = "OpenAI-compatible inference server"),
    paths(
        chat_completions_doc,
        completions_doc,
        list_models,
        get_model,
        super::lora::load_lora_adapter,
        super::lora::unload_lora_adapter,
        health,
        ready,
        super::metrics::metrics,
        super::admin::list,
        super::admin::get,
        super::admin::load,
        super::admin::unload,
        super::admin::switch,
        super::files::upload_file,
        super::files::list_files,
        super::files::retrieve_file,
        super::files::file_content,
        super::files::delete_file,
        super::fine_tuning::create,
        super::fine_tuning::list_jobs,
        super::fine_tuning::get_job,
        super::fine_tuning::cancel,
        super::fine_tuning::events,
        super::fine_tuning::checkpoints
    ),
    components(schemas(
        ChatCompletionRequest,
        ChatCompletion,
        CompletionRequest,
        Completion,
        ModelList,
        ModelCard,
        LoadLoraAdapterRequest,
        UnloadLoraAdapterRequest,
        ErrorBody,
        super::admin::LoadModelRequest,
        super::admin::UnloadModelRequest,
        super::admin::SwitchModelRequest,
        crate::registry::ModelStatus,
        crate::finetune::store::FileObject,
        super::files::FileList,
        super::files::FileDeleted,
        crate::finetune::job::CreateJob
    ))
)]
struct ApiDoc;

/// Create a chat completion (`stream: true` answers with server-sent events: one
/// `ChatCompletionChunk` per `data:` line, then `data: [DONE]`).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn chat_completions_doc() {}

/// Create a completion (`stream: true` answers with server-sent events: one `Completion` chunk
/// per `data:` line, then `data: [DONE]`).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, content((Completion = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
#[allow(dead_code)]
fn completions_doc() {}

fn card(s: &Served) -> ModelCard {
    ModelCard {
        id: s.name.clone(),
        object: "model",
        created: s.created,
        owned_by: "flint",
        root: s.engine.info().model_dir.display().to_string(),
        parent: None,
        max_model_len: s.engine.info().max_model_len,
    }
}

fn adapter_card(s: &Served, a: &AdapterInfo) -> ModelCard {
    ModelCard {
        id: a.name.clone(),
        object: "model",
        created: i64::try_from(a.created).unwrap_or(i64::MAX),
        owned_by: "flint",
        root: a.path.display().to_string(),
        parent: Some(s.name.clone()),
        max_model_len: s.engine.info().max_model_len,
    }
}

/// The ready models, each followed by its loaded LoRA adapters (models that are loading,
/// failed or unloading are not listed; see `GET /admin/models`).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    if state.shutting_down() {
        return Err(ApiError::shutting_down());
    }
    let mut data = Vec::new();
    for served in state.registry.ready() {
        data.push(card(&served));
        data.extend(served.engine.adapters().iter().map(|a| adapter_card(&served, a)));
    }
    Ok(Json(ModelList { object: "list", data }))
}

/// One model.
#[utoipa::path(get, path = "/v1/models/{id}", responses((status = 200, body = ModelCard), (status = 404, body = ErrorBody)))]
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let (served, adapter) = state.resolve(&id)?;
    match adapter.and_then(|name| served.engine.adapters().into_iter().find(|a| a.name == name)) {
        Some(a) => Ok(Json(adapter_card(&served, &a))),
        None => Ok(Json(card(&served))),
    }
}

/// `?model=NAME` of `/health` and `/ready`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct ModelQuery {
    /// Ask about this model only.
    pub model: Option<String>,
}

/// The process is alive; with `?model=`, that model's engine answers too (503 when it failed
/// to load, its engine failed or stopped; 404 when unknown).
#[utoipa::path(get, path = "/health", params(ModelQuery), responses((status = 200), (status = 503, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn health(State(state): State<Arc<AppState>>, Query(q): Query<ModelQuery>) -> Response {
    let Some(model) = q.model else { return StatusCode::OK.into_response() };
    let served = match state.registry.state(&model) {
        None => return ApiError::not_found(format!("no model named `{model}`")).with_param("model").into_response(),
        Some(s @ ModelState::Failed { .. }) => {
            return ApiError::from(s.refusal(&model).expect("a failed model is refused")).into_response()
        }
        Some(ModelState::Ready(m)) => {
            // A failure the watcher has not seen yet is noticed (and reported) here.
            if let Err(e) = state.registry.resolve(&m.name) {
                return ApiError::from(e).into_response();
            }
            m
        }
        Some(ModelState::Unloading(m)) => m,
        Some(s @ ModelState::Loading { .. }) => {
            return (StatusCode::OK, Json(serde_json::json!({"model": model, "status": s.label()}))).into_response()
        }
    };
    // The engine thread answers a stats query unless it died.
    match tokio::time::timeout(std::time::Duration::from_secs(5), served.engine.stats()).await {
        Ok(Ok(_)) => {
            (StatusCode::OK, Json(serde_json::json!({"model": served.name, "status": "ready"}))).into_response()
        }
        Ok(Err(e)) => ApiError::model_unavailable(&served.name, &format!("has no running engine: {e}")).into_response(),
        Err(_) => ApiError::model_unavailable(&served.name, "did not answer within 5 s").into_response(),
    }
}

/// Requests are accepted: the models given at startup are loaded, one is ready, and none has
/// failed while serving (503 before, while shutting down, and while a failed model is not back:
/// failed or restarting). With `?model=`, that model is ready (503 with its state otherwise).
#[utoipa::path(get, path = "/ready", params(ModelQuery), responses((status = 200), (status = 503, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>, Query(q): Query<ModelQuery>) -> Response {
    if state.shutting_down() {
        return ApiError::shutting_down().into_response();
    }
    if let Some(model) = q.model {
        return match state.resolve(&model) {
            Ok((served, _)) => {
                (StatusCode::OK, Json(serde_json::json!({"model": served.name, "status": "ready"}))).into_response()
            }
            Err(e) => e.into_response(),
        };
    }
    if !state.started() {
        return ApiError::not_ready().into_response();
    }
    if let Some(e) = state.registry.unhealthy().into_iter().next() {
        return ApiError::from(e).into_response();
    }
    let models: Vec<String> = state.registry.ready().iter().map(|m| m.name.clone()).collect();
    if models.is_empty() {
        return ApiError::not_ready().into_response();
    }
    (StatusCode::OK, Json(serde_json::json!({"status": "ready", "models": models}))).into_response()
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn not_found(uri: axum::http::Uri) -> Response {
    super::error_response(uri.path(), ApiError::not_found(format!("no route for {}", uri.path())))
}

/// A dependency-free docs page rendered from `/openapi.json`.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
