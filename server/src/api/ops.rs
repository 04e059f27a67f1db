//! Operational routes: `/health`, `/ready`, `/v1/models`, `/openapi.json`, `/docs`.
//! `/v1/models` lists the base model, then each loaded LoRA adapter (`parent`: the base).

use std::sync::Arc;

use axum::{
    extract::{Path, State},
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
        super::metrics::metrics
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
        ErrorBody
    ))
)]
struct ApiDoc;

/// Create a chat completion (`stream: true` answers with server-sent events).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, body = ChatCompletion), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[allow(dead_code)]
fn chat_completions_doc() {}

/// Create a completion (`stream: true` answers with server-sent events).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, body = Completion), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
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

/// The served models: the base model, then the loaded LoRA adapters by name.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let served = state.model()?;
    let mut data = vec![card(&served)];
    data.extend(served.engine.adapters().iter().map(|a| adapter_card(&served, a)));
    Ok(Json(ModelList { object: "list", data }))
}

/// One model.
#[utoipa::path(get, path = "/v1/models/{id}", responses((status = 200, body = ModelCard), (status = 404, body = ErrorBody)))]
pub async fn get_model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<ModelCard>, ApiError> {
    let served = state.model()?;
    if id == served.name {
        return Ok(Json(card(&served)));
    }
    match served.engine.adapters().iter().find(|a| a.name == id) {
        Some(a) => Ok(Json(adapter_card(&served, a))),
        None => Err(served.not_found(&id)),
    }
}

/// The process is alive.
#[utoipa::path(get, path = "/health", responses((status = 200)))]
pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// The model is loaded and requests are accepted (503 before and while shutting down).
#[utoipa::path(get, path = "/ready", responses((status = 200), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.model() {
        Ok(_) => (StatusCode::OK, Json(serde_json::json!({"status": "ready"}))).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// A dependency-free docs page rendered from `/openapi.json`.
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}
