//! Ollama's API (`/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/ps`,
//! `/api/version`, `GET /`), so Ollama clients (the `ollama` Python package, Open WebUI,
//! LangChain's `ChatOllama`) work against `flint serve` unchanged.
//!
//! Ollama differs from OpenAI in ways clients depend on, all handled here at the edge:
//! - errors are `{"error": "message"}` with the HTTP status ([`OllamaError`]), and an error
//!   after streaming started is a last NDJSON line of that shape;
//! - `stream` defaults to true, and streams are NDJSON (`application/x-ndjson`), not SSE;
//! - sampling settings live in `options`, with Ollama's defaults ([`types::Options`]);
//! - `x` and `x:latest` name the same model, and an empty prompt loads (or, with
//!   `keep_alive: 0`, unloads) a model.
//!
//! - `types`: request bodies and `options`;
//! - `respond`: engine output → one JSON object or NDJSON lines;
//! - `generate`, `chat`: the two generation routes;
//! - `info`: the model list (`tags`), `show` and `ps`.

mod chat;
mod generate;
mod info;
mod respond;
pub mod types;

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{FromRequest, Request},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::de::DeserializeOwned;

use super::{lean::Loose, ApiError, AppState, JsonBody, Served};
use crate::{
    generation::{admission::Cost, Permit},
    registry::{normalize, KeepAlive},
};

/// The Ollama version `/api/version` reports. Clients gate features on it (e.g. structured
/// outputs need >= 0.5), so it is a fixed Ollama release whose API this layer follows rather
/// than flint's own version (`CARGO_PKG_VERSION`, reported by `/v1/models` and `flint --version`).
pub const OLLAMA_VERSION: &str = "0.6.0";

/// The Ollama routes, merged into the main router (which adds auth, body limit and CORS).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        // `get` also answers HEAD (with the body left out), which clients use as a probe.
        .route("/", get(root))
        .route("/api/version", get(version))
        .route("/api/generate", post(generate::handler))
        .route("/api/chat", post(chat::handler))
        .route("/api/tags", get(info::tags))
        .route("/api/show", post(info::show))
        .route("/api/ps", get(info::ps))
}

/// Clients probe `/` to see whether a server is up.
async fn root() -> &'static str {
    "Ollama is running"
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": OLLAMA_VERSION }))
}

/// Any error of an Ollama route: the status of the [`ApiError`] with Ollama's body,
/// `{"error": "message"}`, which the Python client turns into `ResponseError(message, status)`.
#[derive(Debug)]
pub struct OllamaError(pub ApiError);

impl From<ApiError> for OllamaError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<crate::generation::GenError> for OllamaError {
    fn from(e: crate::generation::GenError) -> Self {
        Self(e.into())
    }
}

impl From<flint_engine::EngineError> for OllamaError {
    fn from(e: flint_engine::EngineError) -> Self {
        Self(e.into())
    }
}

impl OllamaError {
    /// The body: also the last line of a stream that fails midway.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.0.message })
    }
}

impl IntoResponse for OllamaError {
    fn into_response(self) -> Response {
        let mut resp = (self.0.status, Json(self.body())).into_response();
        if let Some(s) = self.0.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

/// A JSON body parsed as [`JsonBody`] does (errors name the field), rejected in Ollama's shape.
pub struct OllamaJson<T>(pub T);

impl<T: DeserializeOwned + Send + 'static, S: Send + Sync> FromRequest<S> for OllamaJson<T> {
    type Rejection = OllamaError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OllamaError> {
        let JsonBody(body) = JsonBody::<T>::from_request(req, state).await?;
        Ok(Self(body))
    }
}

/// 400 for a request field, in the words Ollama's clients show to users.
fn invalid(field: impl Into<String>, message: impl Into<String>) -> OllamaError {
    OllamaError(ApiError::invalid(field, message))
}

/// Ollama's 404 wording, which some clients match to offer a pull.
fn not_found(model: &str) -> OllamaError {
    let mut e = ApiError::not_found(format!("model '{model}' not found"));
    e.param = Some("model".into());
    e.code = Some("model_not_found".into());
    OllamaError(e)
}

/// An error resolving `model`, with Ollama's 404 wording when nothing has that name.
fn map_404(model: &str, e: impl Into<ApiError>) -> OllamaError {
    let e = e.into();
    if e.status == StatusCode::NOT_FOUND {
        not_found(model)
    } else {
        OllamaError(e)
    }
}

/// RFC 3339 in UTC with microseconds, the precision every client's date parser accepts.
fn rfc3339(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn now_rfc3339() -> String {
    rfc3339(chrono::Utc::now())
}

/// A model admitted for one request, with the permit that keeps its slot until the response
/// is written.
struct Admitted {
    served: Arc<Served>,
    /// The LoRA adapter the name picked, if any.
    adapter: Option<String>,
    permit: Permit,
    /// Time spent waiting for the model to load (Ollama's `load_duration`).
    load: Duration,
}

/// Resolves `model` (`x` and `x:latest` alike), loading it first when it is known but not
/// loaded, and takes an admission permit for one sequence (Ollama has no `n`).
async fn admit(state: &Arc<AppState>, model: &str) -> Result<Admitted, OllamaError> {
    if model.is_empty() {
        return Err(invalid("model", "model is required"));
    }
    let name = normalize(model);
    // A catalog entry that is not loaded loads now, and one that is loading is waited for, as
    // Ollama loads on first use; a ready model (or a LoRA adapter) costs nothing here.
    let load = state.registry.load_on_demand(name).await.map_err(|e| map_404(model, e))?;
    let (served, adapter) = state.resolve(name).map_err(|e| map_404(model, e))?;
    let permit = state.admit(&served, Cost::one(1))?;
    Ok(Admitted { served, adapter, permit, load })
}

/// `keep_alive` of a request, checked before any work is done.
fn keep_alive(v: Option<&Loose>) -> Result<Option<KeepAlive>, OllamaError> {
    match v {
        None => Ok(None),
        Some(l) if l.is_null() => Ok(None),
        Some(Loose::Scalar(v)) => {
            KeepAlive::from_json(v).map(Some).map_err(|e| invalid("keep_alive", format!("keep_alive: {e}")))
        }
        Some(other) => Err(invalid(
            "keep_alive",
            format!("keep_alive: expected a duration like \"5m\" or a number of seconds, got {other}"),
        )),
    }
}

/// What an empty prompt (or message list) does in Ollama: loads the model, or with
/// `keep_alive: 0` unloads it. Answers the one object Ollama answers, with `done_reason`
/// `load` or `unload`; `shape` adds the route's empty `response` or `message`.
async fn load_or_unload(
    state: &Arc<AppState>,
    model: &str,
    keep: Option<KeepAlive>,
    shape: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<Response, OllamaError> {
    if model.is_empty() {
        return Err(invalid("model", "model is required"));
    }
    let name = normalize(model);
    let reason = if keep == Some(KeepAlive::For(Duration::ZERO)) {
        match state.registry.unload(name).await.map_err(ApiError::from) {
            // A catalog entry that is not loaded is already where unloading would put it.
            Err(e) if e.status == StatusCode::NOT_FOUND && state.registry.catalog().get(name).is_some() => {}
            r => r.map_err(|e| map_404(model, e))?,
        }
        "unload"
    } else {
        state.registry.load_on_demand(name).await.map_err(|e| map_404(model, e))?;
        if let (Some(k), Some(served)) = (keep, state.registry.ready().into_iter().find(|s| s.name == name)) {
            served.set_keep_alive(k);
        }
        "load"
    };
    let mut body = serde_json::Map::new();
    body.insert("model".into(), model.into());
    body.insert("created_at".into(), now_rfc3339().into());
    shape(&mut body);
    body.insert("done".into(), true.into());
    body.insert("done_reason".into(), reason.into());
    Ok(Json(serde_json::Value::Object(body)).into_response())
}
