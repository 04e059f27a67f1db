//! The HTTP server: an axum [`Router`] over an [`AppState`].
//!
//! - `openai/`: `/v1/chat/completions`, `/v1/completions` (stream or not), `/v1/models`;
//! - `ops`: `/health`, `/ready`, `/openapi.json`, `/docs`;
//! - `metrics`: `/metrics` (Prometheus, vLLM's metric names);
//! - `lora`: `/v1/load_lora_adapter`, `/v1/unload_lora_adapter` (vLLM's), confined to `--lora-dir`;
//! - `ollama`: Ollama's API (`/api/generate`, `/api/chat`, `/api/tags`, …, `GET /`);
//! - `files`, `fine_tuning`: OpenAI's files and fine-tuning routes (`--data-dir`);
//! - `admin`: `/admin/models…` (load, unload, switch, status) and `/admin/logs`, key required;
//! - [`ApiError`]: every error as an OpenAI error body, mapped once from engine errors;
//! - auth (`--api-key`, constant-time), body limit (413), admission limit (429), CORS;
//! - `guard`: `Host` (DNS rebinding) and `Origin` checks (403), JSON content type (415), JSON
//!   nesting depth (400).
//!
//! Request bodies are parsed once, at the edge, into checked engine types
//! ([`flint_engine::SamplingParams`], token ids); the engine never sees JSON.

pub mod admin;
pub mod error;
pub mod files;
pub mod fine_tuning;
pub mod guard;
pub mod lean;
pub mod logs;
pub mod lora;
pub mod metrics;
pub mod ollama;
pub mod openai;
pub mod ops;
pub mod types;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Request, State},
    http::{HeaderMap, HeaderValue, Method},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::{
    finetune::{store::Store, FineTuning},
    generation::{admission::Cost, Admission, Permit, PromptLimits},
    registry::ModelRegistry,
};

pub use crate::registry::Served;

/// Server settings from the command line.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub api_key: Option<String>,
    /// Requests accepted beyond those the engine runs at once, before 429.
    pub max_waiting_requests: usize,
    /// Sequences the engine runs at once (from the engine flags).
    pub max_num_seqs: usize,
    pub max_body_bytes: usize,
    pub cors_origins: Vec<String>,
    /// `--lora-dir`: the only place `POST /v1/load_lora_adapter` loads adapters from; without
    /// it adapters can only be given at startup (`--lora`).
    pub lora_dir: Option<PathBuf>,
    /// `--model-root`: the directories `POST /admin/models/load` may load paths from (catalog
    /// names load from anywhere the catalog says).
    pub model_roots: Vec<PathBuf>,
    /// `--data-dir`: uploaded files, fine-tuning jobs and trained adapters (SQLite + files);
    /// `None` turns the files and fine-tuning routes off.
    pub data_dir: Option<PathBuf>,
    /// Largest file upload (`POST /v1/files`), in bytes.
    pub max_upload_bytes: usize,
    /// Bound to a loopback address: a `Host` header that is not a loopback name, address or
    /// `allowed_hosts` entry is refused (403), so a DNS-rebinding page cannot reach the server.
    pub check_host: bool,
    /// `--allowed-host`: more names the server answers to (behind a proxy): `name`, `.domain`
    /// (it and its subdomains) or `*` (any).
    pub allowed_hosts: Vec<String>,
    /// Messages, prompts and prompt bytes one request may carry.
    pub prompt_limits: PromptLimits,
    /// `--prefix-cache-per-key`: requests presenting different API keys never share
    /// prefix-cache blocks, so cached-token counts and timing say nothing across tenants.
    pub prefix_cache_per_key: bool,
}

impl Default for ServerConfig {
    /// The `flint serve` defaults, without a key, adapters, model roots or data dir (tests start
    /// from here; `flint serve` fills every field from its flags).
    fn default() -> Self {
        Self {
            api_key: None,
            max_waiting_requests: 1024,
            max_num_seqs: 256,
            max_body_bytes: 8 << 20,
            cors_origins: Vec::new(),
            lora_dir: None,
            model_roots: Vec::new(),
            data_dir: None,
            max_upload_bytes: 512 << 20,
            check_host: true,
            allowed_hosts: Vec::new(),
            prompt_limits: PromptLimits::default(),
            prefix_cache_per_key: false,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub config: ServerConfig,
    /// The models, by name (the one owner of their state).
    pub registry: Arc<ModelRegistry>,
    /// Sequences in flight over every model (prompts x `n`).
    pub admission: Arc<Admission>,
    /// Set once the models given at startup are loaded: `/ready` waits for it.
    started: AtomicBool,
    /// Files and fine-tuning records (`--data-dir`).
    pub store: Option<Arc<Store>>,
    /// The fine-tuning service (`--data-dir`).
    pub finetune: Option<Arc<FineTuning>>,
    shutting_down: AtomicBool,
    /// What `/metrics` reports beyond the engine's own counters.
    pub metrics: metrics::Metrics,
}

impl AppState {
    /// A server without runtime loading (tests): models come through [`Self::set_model`].
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Self::with_registry(config, Arc::new(ModelRegistry::new(None, Default::default())))
    }

    /// The server's state; opens the store under `config.data_dir` (a failure is logged and
    /// leaves the files routes off; [`Self::build`] returns it instead).
    pub fn with_registry(config: ServerConfig, registry: Arc<ModelRegistry>) -> Arc<Self> {
        Self::build(config, registry).unwrap_or_else(|(e, state)| {
            tracing::error!("fine-tuning storage is off: {e:#}");
            state
        })
    }

    /// Like [`Self::with_registry`], but a store that cannot be opened is an error (with the
    /// state without it).
    #[allow(clippy::result_large_err)]
    pub fn build(config: ServerConfig, registry: Arc<ModelRegistry>) -> Result<Arc<Self>, (anyhow::Error, Arc<Self>)> {
        let finetune = match &config.data_dir {
            Some(dir) => match FineTuning::open(dir.clone(), registry.clone()) {
                Ok(f) => Some(f),
                Err(e) => {
                    let err = anyhow::anyhow!("--data-dir {}: {e:#}", dir.display());
                    return Err((err, Self::assemble(config, registry, None)));
                }
            },
            None => None,
        };
        Ok(Self::assemble(config, registry, finetune))
    }

    fn assemble(config: ServerConfig, registry: Arc<ModelRegistry>, finetune: Option<Arc<FineTuning>>) -> Arc<Self> {
        let admission = Arc::new(Admission::new(config.max_num_seqs.saturating_add(config.max_waiting_requests)));
        Arc::new(Self {
            store: finetune.as_ref().map(|f| f.store().clone()),
            finetune,
            config,
            registry,
            admission,
            started: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            metrics: metrics::Metrics::default(),
        })
    }

    /// Serves an already loaded model, and marks startup done (tests, single-model startup).
    pub fn set_model(&self, served: Served) -> Arc<Served> {
        let served = self.registry.install(served);
        self.set_started();
        served
    }

    /// The models given at startup are loaded: `/ready` may answer 200.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The model (and LoRA adapter) a request's `model` names; 503 while shutting down or
    /// while it loads, 404 when nothing has that name.
    pub fn resolve(&self, model: &str) -> Result<(Arc<Served>, Option<String>), ApiError> {
        if self.shutting_down() {
            return Err(ApiError::shutting_down());
        }
        Ok(self.registry.resolve(model)?)
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Takes `cost` sequences of the server's budget for a request to `served` (429 when they
    /// are not free now, 400 naming `n` or `prompt` when they never could be); released when
    /// the permit drops.
    pub fn admit(&self, served: &Arc<Served>, cost: Cost) -> Result<Permit, ApiError> {
        Ok(self.admission.admit(served, cost)?)
    }

    /// The prefix-cache salt of a request: its own `cache_salt` (vLLM's field), mixed with the
    /// API key it presents under `--prefix-cache-per-key`.
    pub fn cache_salt(&self, headers: &HeaderMap, requested: Option<&str>) -> Option<String> {
        let key = if self.config.prefix_cache_per_key { presented_key(headers) } else { None };
        crate::generation::cache_salt(key, requested)
    }
}

/// A JSON body parsed into `T`, with errors naming the field (`messages[0].content`) and
/// OpenAI-shaped 400/413/415 responses instead of axum's plain-text rejections. The body must
/// be declared JSON ([`guard::require_json`]) and nest at most [`guard::MAX_JSON_DEPTH`]
/// levels; one over [`INLINE_PARSE_BYTES`] is parsed on a blocking thread, a few at a time
/// ([`guard::large_parse_slot`]).
pub struct JsonBody<T>(pub T);

/// Bodies up to this size are parsed on the async worker (well under a millisecond); larger
/// ones on a blocking thread, so a body near `--max-body-bytes` never stalls other requests.
pub const INLINE_PARSE_BYTES: usize = 64 << 10;

impl<T: DeserializeOwned + Send + 'static, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        guard::require_json(req.headers())?;
        let limit = body_limit(&req);
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_body(format!("cannot read the request body: {e}"))
            }
        })?;
        if bytes.len() <= INLINE_PARSE_BYTES {
            return parse_json(&bytes).map(JsonBody);
        }
        let _slot = guard::large_parse_slot().await;
        tokio::task::spawn_blocking(move || parse_json(&bytes))
            .await
            .map_err(|e| ApiError::internal(format!("parsing the request body failed: {e}")))?
            .map(JsonBody)
    }
}

/// A JSON object body into `T`: nesting checked first, then serde, errors naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Serde would also read a struct from a JSON array; OpenAI bodies are objects.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::bad_body("the request body must be a JSON object"));
    }
    guard::check_depth(bytes)?;
    // Most bodies are fine: parse them without tracking the path (which costs about half the
    // time on long arrays), and parse again with it only to name the field of an error.
    if let Ok(v) = serde_json::from_slice(bytes) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // A missing field is reported at the parent's path; name the field itself.
        if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            let param = if path.is_empty() || path == "." { field.to_string() } else { format!("{path}.{field}") };
            return ApiError::invalid(param.clone(), format!("`{param}` is required"));
        }
        if path.is_empty() || path == "." || path == "?" {
            ApiError::bad_body(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

/// The body limit for messages (set on the request by [`router`]).
fn body_limit(req: &Request) -> usize {
    req.extensions().get::<BodyLimit>().map_or(usize::MAX, |l| l.0)
}

#[derive(Clone, Copy)]
struct BodyLimit(usize);

/// Constant-time equality, so a wrong key's timing says nothing about the right one.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0
}

/// The API key a request presents (`Authorization: Bearer` or `X-API-Key`), checked or not.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| {
        let v = v.as_bytes();
        v.strip_prefix(b"Bearer ").or_else(|| v.strip_prefix(b"bearer "))
    });
    // X-API-Key counts even when a proxy added some other Authorization scheme.
    bearer.or_else(|| headers.get("x-api-key").map(HeaderValue::as_bytes))
}

/// Ollama's routes answer errors in Ollama's shape (`{"error": "..."}`), which its clients read.
fn is_ollama_path(path: &str) -> bool {
    path == "/" || path.starts_with("/api/")
}

/// An error in the shape the route's clients expect.
pub fn error_response(path: &str, e: ApiError) -> Response {
    if is_ollama_path(path) {
        ollama::OllamaError(e).into_response()
    } else {
        e.into_response()
    }
}

async fn auth(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(BodyLimit(state.config.max_body_bytes));
    let path = req.uri().path().to_owned();
    // Probes: liveness, readiness, and Ollama's `GET /` ("Ollama is running").
    let open = matches!(path.as_str(), "/health" | "/ready" | "/") || req.method() == Method::OPTIONS;
    // Admin routes load and unload models: never without a key.
    if state.config.api_key.is_none() && path.starts_with("/admin") {
        return ApiError::forbidden("the admin routes need the server to be started with --api-key").into_response();
    }
    if let (Some(key), false) = (&state.config.api_key, open) {
        match presented_key(req.headers()) {
            Some(k) if same_key(k, key.as_bytes()) => {}
            _ => return error_response(&path, ApiError::unauthorized()),
        }
    }
    next.run(req).await
}

/// Every route, with the Host/Origin guard, auth, body limit and (if configured) CORS.
pub fn router(state: Arc<AppState>) -> Router {
    let mut app = Router::new()
        .route("/v1/chat/completions", post(openai::chat::handler))
        .route("/v1/completions", post(openai::completions::handler))
        .route("/v1/models", get(ops::list_models))
        .route("/v1/models/{id}", get(ops::get_model))
        .route("/v1/load_lora_adapter", post(lora::load_lora_adapter))
        .route("/v1/unload_lora_adapter", post(lora::unload_lora_adapter))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/admin/models", get(admin::list))
        .route("/admin/models/load", post(admin::load))
        .route("/admin/models/unload", post(admin::unload))
        .route("/admin/models/switch", post(admin::switch))
        .route("/admin/models/{name}", get(admin::get))
        .route("/admin/logs", get(logs::recent_logs))
        .route("/v1/fine_tuning/jobs", post(fine_tuning::create).get(fine_tuning::list_jobs))
        .route("/v1/fine_tuning/jobs/{id}", get(fine_tuning::get_job))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(fine_tuning::cancel))
        .route("/v1/fine_tuning/jobs/{id}/events", get(fine_tuning::events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(fine_tuning::checkpoints))
        .merge(files::routes(state.config.max_upload_bytes))
        .merge(ollama::routes())
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        // Outside auth: a page that may not call the server learns nothing, not even 401.
        .layer(middleware::from_fn_with_state(Arc::new(guard::Guard::new(&state.config)), guard::check))
        .with_state(state.clone());
    if !state.config.cors_origins.is_empty() {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins: Vec<HeaderValue> =
            state.config.cors_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
        let any = state.config.cors_origins.iter().any(|o| o == "*");
        let allow = if any { AllowOrigin::any() } else { AllowOrigin::list(origins) };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::OPTIONS])
                .allow_headers(tower_http::cors::Any),
        );
    }
    app
}

#[cfg(test)]
mod tests {
    use super::same_key;

    #[test]
    fn keys_compare_exactly() {
        assert!(same_key(b"secret", b"secret"));
        assert!(!same_key(b"secret", b"secreT"));
        assert!(!same_key(b"secret", b"secret2"));
        assert!(!same_key(b"", b"x"));
        assert!(!same_key(b"x", b""));
    }
}
