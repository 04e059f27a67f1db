//! [`Served`]: one loaded model, with what idle unloading and the model list need to know.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use flint_engine::EngineHandle;

use super::{KeepAlive, RegistryError};
use crate::chat_template::ChatTemplate;

/// A model that answers requests.
pub struct Served {
    pub engine: EngineHandle,
    /// The name clients use in `model`.
    pub name: String,
    pub template: Option<ChatTemplate>,
    /// Unix time the model finished loading.
    pub created: i64,
    /// When it finished loading, on the monotonic clock.
    started: Instant,
    /// Where it came from, as given (directory, GGUF file or catalog entry), for the lists.
    pub source: String,
    /// Requests holding an admission permit for this model; unloading waits for zero.
    active: AtomicUsize,
    /// When the last request finished (or the model loaded); the idle clock.
    last_used: Mutex<Instant>,
    keep_alive: Mutex<KeepAlive>,
}

impl Served {
    pub fn new(engine: EngineHandle, name: impl Into<String>, template: Option<ChatTemplate>) -> Self {
        let source = engine.info().model_dir.display().to_string();
        Self {
            engine,
            name: name.into(),
            template,
            created: chrono::Utc::now().timestamp(),
            started: Instant::now(),
            source,
            active: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            keep_alive: Mutex::new(KeepAlive::Forever),
        }
    }

    /// What a request's `model` names: the base model (`None`) or the loaded LoRA adapter of
    /// that name (`Some(name)`); [`RegistryError::UnknownModel`] listing the served names
    /// otherwise.
    pub fn resolve(&self, model: &str) -> Result<Option<String>, RegistryError> {
        if super::normalize(model) == self.name {
            return Ok(None);
        }
        if self.has_adapter(model) {
            return Ok(Some(model.to_owned()));
        }
        Err(self.not_found(model))
    }

    pub fn has_adapter(&self, name: &str) -> bool {
        self.engine.adapters().iter().any(|a| a.name == name)
    }

    /// `model` is not this model: the error lists the base model and the loaded adapters.
    pub fn not_found(&self, model: &str) -> RegistryError {
        let mut served = vec![self.name.clone()];
        served.extend(self.engine.adapters().into_iter().map(|a| a.name));
        RegistryError::UnknownModel { name: model.to_owned(), served, in_catalog: false }
    }

    /// How long it has been serving.
    pub fn up_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Weights plus KV cache, in bytes.
    pub fn memory_bytes(&self) -> u64 {
        let info = self.engine.info();
        info.weight_bytes + info.kv_cache_bytes
    }

    pub fn keep_alive(&self) -> KeepAlive {
        *self.keep_alive.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets how long the model stays loaded once idle (Ollama's per-request `keep_alive`).
    pub fn set_keep_alive(&self, k: KeepAlive) {
        *self.keep_alive.lock().unwrap_or_else(|p| p.into_inner()) = k;
        self.touch();
    }

    /// Requests in flight.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub(crate) fn begin_request(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.touch();
    }

    pub(crate) fn end_request(&self) {
        self.touch();
        self.active.fetch_sub(1, Ordering::AcqRel);
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// How long until the idle unload, counted from now; `None` when it never comes or a
    /// request is running (the clock starts when the last one ends).
    pub fn idle_left(&self) -> Option<Duration> {
        let KeepAlive::For(keep) = self.keep_alive() else { return None };
        if self.active() > 0 {
            return None;
        }
        let idle = self.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        Some(keep.saturating_sub(idle))
    }

    /// When the idle unload comes, as a wall-clock time (`None`: never, or a request runs).
    pub fn expires_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let left = self.idle_left()?;
        let now = chrono::Utc::now();
        chrono::Duration::from_std(left).ok().and_then(|d| now.checked_add_signed(d))
    }
}
