//! [`ApiError`]: every HTTP error, OpenAI-shaped, and the one mapping from engine errors to
//! status codes.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use flint_engine::{scheduler::AdmitError, EngineError};

use super::types::{ErrorBody, ErrorDetail};
use crate::registry::RegistryError;
use crate::finetune::{store::StoreError, FineTuneError};
use crate::generation::GenError;

/// An error response: status, OpenAI `type`, message, and the offending field.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<String>,
    /// Seconds for `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    /// 400 for a bad field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        e.param = Some(param.into());
        e
    }

    /// 400 for a body that is not valid JSON or has the wrong shape.
    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn unauthorized() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "missing or invalid API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        );
        e.code = Some("invalid_api_key".into());
        e
    }

    /// 404 for a `model` that is neither the base model nor a loaded adapter; `served` lists
    /// the names that are.
    pub fn model_not_found(name: &str, served: &[String]) -> Self {
        let list = served.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "not_found_error",
            format!("the model `{name}` does not exist (served: {list})"),
        );
        e.param = Some("model".into());
        e.code = Some("model_not_found".into());
        e
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", format!("request body exceeds {limit} bytes"))
    }

    pub fn queue_full(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!("too many sequences in flight (limit {limit}); retry shortly"),
        );
        e.retry_after = Some(1);
        e
    }

    pub fn not_ready() -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "no model is ready yet");
        e.retry_after = Some(5);
        e
    }

    /// 503 for a model that is loading: what it is doing and for how long.
    pub fn model_loading(name: &str, phase: &str, elapsed: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            format!("the model `{name}` is loading ({phase}, {:.0} s so far); retry shortly", elapsed.as_secs_f64()),
        );
        e.param = Some("model".into());
        e.code = Some("model_loading".into());
        e.retry_after = Some(2);
        e
    }

    /// 503 for a model that cannot answer now (`why`: "is being unloaded", "failed to load: …").
    pub fn model_unavailable(name: &str, why: &str) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", format!("the model `{name}` {why}"));
        e.param = Some("model".into());
        e.code = Some("model_unavailable".into());
        e
    }

    /// 409: the request clashes with the current state (a name taken, a model mid-load).
    pub fn conflict(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::CONFLICT, "conflict_error", message);
        e.param = Some(param.into());
        e
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    /// 415: a JSON route got a body that does not say it is JSON (`message` names the header).
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", message);
        e.code = Some("unsupported_media_type".into());
        e
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn shutting_down() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "the server is shutting down")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_server_error", message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param.clone(),
                code: self.code.clone(),
            },
        }
    }
}

impl From<EngineError> for ApiError {
    /// The one mapping from engine errors to HTTP statuses.
    fn from(e: EngineError) -> Self {
        let msg = e.to_string();
        match e {
            EngineError::InvalidParameter { field, .. } => Self::invalid(field, msg),
            EngineError::TokenOutOfVocab { .. } => Self::invalid("prompt", msg),
            // The prompt alone fills the context: no max_tokens could fit.
            EngineError::Admit(AdmitError::ContextTooLong { prompt, context, .. }) if prompt >= context => {
                Self::invalid("prompt", msg)
            }
            EngineError::Admit(AdmitError::ContextTooLong { .. }) => Self::invalid("max_tokens", msg),
            EngineError::Admit(AdmitError::PromptExceedsCache { .. }) | EngineError::Admit(AdmitError::EmptyPrompt) => {
                Self::invalid("prompt", msg)
            }
            EngineError::Tokenize(_) => Self::invalid("prompt", msg),
            EngineError::Shutdown => Self::shutting_down(),
            EngineError::UnknownAdapter(_) => {
                let mut e = Self::not_found(msg);
                e.code = Some("model_not_found".into());
                e
            }
            EngineError::AdapterExists(_) => Self::invalid("lora_name", msg),
            EngineError::InvalidAdapter(_) => Self::invalid("lora_path", msg),
            EngineError::LoraDisabled => Self::bad_body(msg),
            EngineError::Model(_)
            | EngineError::Tokenizer { .. }
            | EngineError::InvalidConfig { .. }
            | EngineError::StepFailed(_)
            | EngineError::EngineFailed(_)
            | EngineError::Forward(_) => Self::internal(msg),
        }
    }
}

impl From<GenError> for ApiError {
    /// The one mapping from the generation layer's errors to HTTP statuses.
    fn from(e: GenError) -> Self {
        match e {
            GenError::Invalid { param, message } => Self::invalid(param, message),
            GenError::Busy { limit } => Self::queue_full(limit),
            GenError::AdapterGone(name) => {
                let mut e = Self::not_found(format!("the model `{name}` does not exist (its adapter was unloaded)"));
                e.param = Some("model".into());
                e.code = Some("model_not_found".into());
                e
            }
            // Nobody reads it: the client has gone.
            GenError::Cancelled => Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", "the request was cancelled"),
            GenError::Engine(e) => (*e).into(),
            GenError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<RegistryError> for ApiError {
    /// The one mapping from registry errors to HTTP statuses.
    fn from(e: RegistryError) -> Self {
        let msg = e.to_string();
        let unavailable = |code: &str, retry_after: Option<u64>| {
            let mut a = Self::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", msg.clone());
            a.param = Some("model".into());
            a.code = Some(code.into());
            a.retry_after = retry_after;
            a
        };
        match e {
            RegistryError::UnknownModel { .. } => {
                let mut a = Self::new(StatusCode::NOT_FOUND, "not_found_error", msg);
                a.param = Some("model".into());
                a.code = Some("model_not_found".into());
                a
            }
            RegistryError::NotLoaded { param, .. } => Self::not_found(msg).with_param(param),
            RegistryError::Loading { .. } => unavailable("model_loading", Some(2)),
            RegistryError::Unloading { .. } => unavailable("model_unavailable", None),
            RegistryError::Failed { restarting, .. } => unavailable("model_failed", restarting.then_some(2)),
            RegistryError::NameTaken { .. } => Self::conflict("name", msg),
            RegistryError::Busy { param, .. } => Self::conflict(param, msg),
            RegistryError::InvalidName(_) => Self::invalid("name", msg),
            RegistryError::LoadingDisabled => Self::internal(msg),
            RegistryError::ShuttingDown => Self::shutting_down(),
        }
    }
}

impl From<FineTuneError> for ApiError {
    /// The one mapping from files and fine-tuning errors to HTTP statuses.
    fn from(e: FineTuneError) -> Self {
        let msg = e.to_string();
        match e {
            FineTuneError::Invalid { field, .. } => Self::invalid(field, msg),
            FineTuneError::Model(e) => Self::from(e).with_param("model"),
            FineTuneError::JobNotFound(_) => Self::not_found(msg).with_param("fine_tuning_job_id"),
            FineTuneError::FileNotFound { field, .. } => Self::not_found(msg).with_param(field),
            FineTuneError::AlreadyFinished(_) => Self::invalid("fine_tuning_job_id", msg),
            FineTuneError::TooManyJobs { .. } => {
                let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", msg);
                e.retry_after = Some(60);
                e
            }
            FineTuneError::Dataset(_) | FineTuneError::EmptyFile => Self::invalid("file", msg),
            FineTuneError::Store(_)
            | FineTuneError::Io { .. }
            | FineTuneError::SaveAdapter(_)
            | FineTuneError::ServeAdapter { .. }
            | FineTuneError::Task(_) => Self::internal(msg),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(format!("file storage: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
