//! [`ModelStatus`]: one model as the admin routes report it, built from its [`ModelState`].

use serde::Serialize;

use super::{FailedWhile, ModelState};

/// One model as the admin routes report it.
#[derive(Serialize, Debug, Clone, utoipa::ToSchema)]
pub struct ModelStatus {
    pub name: String,
    /// `loading`, `ready`, `failed` or `unloading`.
    pub status: &'static str,
    pub source: String,
    /// Why it failed (to load, or its engine while serving).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it failed: `loading` or `serving`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_while: Option<&'static str>,
    /// Whether a failed model is about to be restarted (`false`: restarts are used up, or it
    /// cannot be; it stays failed until it is loaded again by hand).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restarting: Option<bool>,
    /// Engine restarts after failures since the model was last loaded by hand.
    pub restarts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<LoadProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryUse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
    /// Unix time loading finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<i64>,
    /// Seconds an idle model stays loaded; `null`: until unloaded by hand.
    pub keep_alive_s: Option<f64>,
    /// When the idle unload comes (RFC 3339); absent when never or while requests run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    pub active_requests: usize,
    /// Loaded LoRA adapters (served by name).
    pub adapters: Vec<String>,
}

/// What a load is doing.
#[derive(Serialize, Debug, Clone, utoipa::ToSchema)]
pub struct LoadProgress {
    /// `queued`, `resolving`, `converting` (GGUF), `loading weights`.
    pub phase: String,
    pub elapsed_s: f64,
}

/// Device memory a model holds.
#[derive(Serialize, Debug, Clone, utoipa::ToSchema)]
pub struct MemoryUse {
    pub weights_bytes: u64,
    pub kv_cache_bytes: u64,
    pub total_bytes: u64,
}

pub(super) fn status_of(name: &str, state: &ModelState, restarts: u32) -> ModelStatus {
    let mut s = ModelStatus {
        name: name.to_owned(),
        status: state.label(),
        source: String::new(),
        error: None,
        failed_while: None,
        restarting: None,
        restarts,
        progress: None,
        memory: None,
        dtype: None,
        max_model_len: None,
        loaded_at: None,
        keep_alive_s: None,
        expires_at: None,
        active_requests: 0,
        adapters: Vec::new(),
    };
    match state {
        ModelState::Loading { phase, since, source } => {
            s.source = source.clone();
            let phase = *phase.lock().unwrap_or_else(|p| p.into_inner());
            s.progress = Some(LoadProgress { phase: phase.into(), elapsed_s: since.elapsed().as_secs_f64() });
        }
        ModelState::Failed { reason, source, during, restarting } => {
            s.source = source.clone();
            s.error = Some(reason.clone());
            s.failed_while = Some(match during {
                FailedWhile::Loading => "loading",
                FailedWhile::Serving => "serving",
            });
            s.restarting = Some(*restarting);
        }
        ModelState::Ready(m) | ModelState::Unloading(m) => {
            let info = m.engine.info();
            s.source = m.source.clone();
            s.memory = Some(MemoryUse {
                weights_bytes: info.weight_bytes,
                kv_cache_bytes: info.kv_cache_bytes,
                total_bytes: m.memory_bytes(),
            });
            s.dtype = Some(info.dtype.clone());
            s.max_model_len = Some(info.max_model_len);
            s.loaded_at = Some(m.created);
            s.keep_alive_s = m.keep_alive().as_secs();
            s.expires_at = m.expires_at().map(|t| t.to_rfc3339());
            s.active_requests = m.active();
            s.adapters = m.engine.adapters().into_iter().map(|a| a.name).collect();
        }
    }
    s
}
