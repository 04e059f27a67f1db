//! Runtime model management: several models loaded at once, each with its own engine.
//!
//! - [`ModelRegistry`]: the one owner of which models exist and in what state
//!   ([`ModelState`]: loading, ready, failed, unloading). Loads run on blocking threads and never
//!   hold the registry's lock, so requests to other models go on; a request to a model that is
//!   loading gets 503. Unloading waits for the model's requests to finish (up to a drain time);
//!   [`ModelRegistry::switch`] loads the new model before unloading the old, so one of them
//!   always answers. A reaper unloads models idle past their [`KeepAlive`].
//! - [`Served`]: one ready model (engine, name, chat template, idle clock).
//! - [`launch`]: how a [`LoadRequest`] becomes a [`Served`] ([`Launch`], [`Launcher`]);
//!   [`catalog`]: the TOML catalog of friendly names ([`Catalog`]).
//!
//! Names `x` and `x:latest` are the same model ([`normalize`]), as in Ollama.

pub mod catalog;
mod keep_alive;
pub mod launch;
mod served;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

pub use catalog::{Catalog, CatalogEntry};
pub use keep_alive::KeepAlive;
pub use launch::{Launch, Launcher, LoadOverrides, LoadRequest, Source};
pub use served::Served;
use serde::Serialize;
use tokio::sync::watch;

use crate::api::ApiError;

/// `x:latest` → `x` (Ollama's default tag); other names unchanged.
pub fn normalize(name: &str) -> &str {
    name.strip_suffix(":latest").unwrap_or(name)
}

/// A served model's name: non-empty, at most 128 characters, no whitespace or `/`-free
/// restriction beyond what URLs and Prometheus labels can carry.
pub fn check_model_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!("model name `{name}` must be 1 to 128 characters"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\') {
        return Err(format!("model name {name:?} must not contain spaces, quotes or backslashes"));
    }
    Ok(())
}

/// Where a model is in its life.
#[derive(Clone)]
pub enum ModelState {
    Loading { phase: Arc<Mutex<&'static str>>, since: Instant, source: String },
    Ready(Arc<Served>),
    Failed { reason: String, source: String },
    /// Draining its requests before the engine stops; new requests get 503.
    Unloading(Arc<Served>),
}

impl ModelState {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Loading { .. } => "loading",
            Self::Ready(_) => "ready",
            Self::Failed { .. } => "failed",
            Self::Unloading(_) => "unloading",
        }
    }
}

/// One model as the admin routes report it.
#[derive(Serialize, Debug, Clone, utoipa::ToSchema)]
pub struct ModelStatus {
    pub name: String,
    /// `loading`, `ready`, `failed` or `unloading`.
    pub status: &'static str,
    pub source: String,
    /// Why loading failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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

fn status_of(name: &str, state: &ModelState) -> ModelStatus {
    let mut s = ModelStatus {
        name: name.to_owned(),
        status: state.label(),
        source: String::new(),
        error: None,
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
        ModelState::Failed { reason, source } => {
            s.source = source.clone();
            s.error = Some(reason.clone());
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

/// Every model the server knows, by name; see the module docs.
pub struct ModelRegistry {
    models: Mutex<BTreeMap<String, ModelState>>,
    /// Bumped on every state change; waiters watch it.
    changed: watch::Sender<u64>,
    launcher: Option<Arc<dyn Launch>>,
    catalog: Catalog,
    /// Longest an unload waits for the model's requests before stopping its engine.
    pub drain_timeout: Duration,
}

impl ModelRegistry {
    /// A registry that loads through `launcher` (`None`: only [`Self::install`]ed models,
    /// for tests) and knows `catalog`'s names.
    pub fn new(launcher: Option<Arc<dyn Launch>>, catalog: Catalog) -> Self {
        Self {
            models: Mutex::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            launcher,
            catalog,
            drain_timeout: Duration::from_secs(60),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ModelState>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, name: &str, state: Option<ModelState>) {
        {
            let mut m = self.lock();
            match state {
                Some(s) => m.insert(name.to_owned(), s),
                None => m.remove(name),
            };
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Serves an already loaded model (startup in tests; replaces any entry of that name).
    pub fn install(&self, served: Served) -> Arc<Served> {
        let name = served.name.clone();
        let served = Arc::new(served);
        self.set(&name, Some(ModelState::Ready(served.clone())));
        served
    }

    /// The ready models, by name.
    pub fn ready(&self) -> Vec<Arc<Served>> {
        self.lock()
            .values()
            .filter_map(|s| match s {
                ModelState::Ready(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.lock().iter().map(|(n, s)| status_of(n, s)).collect()
    }

    pub fn status(&self, name: &str) -> Option<ModelStatus> {
        let name = normalize(name);
        self.lock().get(name).map(|s| status_of(name, s))
    }

    pub fn state(&self, name: &str) -> Option<ModelState> {
        self.lock().get(normalize(name)).cloned()
    }

    /// The model a request's `model` names: a served model (`None` adapter) or a LoRA adapter
    /// of one (`Some(name)`). 503 while it loads or unloads, or when its load failed; 404
    /// naming what is served otherwise.
    pub fn resolve(&self, model: &str) -> Result<(Arc<Served>, Option<String>), ApiError> {
        let name = normalize(model);
        let models = self.lock();
        if let Some(state) = models.get(name) {
            return match state {
                ModelState::Ready(m) => Ok((m.clone(), None)),
                ModelState::Loading { phase, since, .. } => {
                    let phase = *phase.lock().unwrap_or_else(|p| p.into_inner());
                    Err(ApiError::model_loading(name, phase, since.elapsed()))
                }
                ModelState::Unloading(_) => Err(ApiError::model_unavailable(name, "is being unloaded")),
                ModelState::Failed { reason, .. } => {
                    Err(ApiError::model_unavailable(name, &format!("failed to load: {reason}")))
                }
            };
        }
        for state in models.values() {
            if let ModelState::Ready(m) = state {
                if m.has_adapter(model) {
                    return Ok((m.clone(), Some(model.to_owned())));
                }
            }
        }
        let mut names: Vec<String> = Vec::new();
        for (n, state) in models.iter() {
            if let ModelState::Ready(m) = state {
                names.push(n.clone());
                names.extend(m.engine.adapters().into_iter().map(|a| a.name));
            }
        }
        let mut e = ApiError::model_not_found(model, &names);
        if self.catalog.get(name).is_some() {
            e.message.push_str(&format!("; `{name}` is in the catalog but not loaded: load it with POST /admin/models/load"));
        }
        Err(e)
    }

    /// Starts loading `req` in the background and returns its status at once. 409 when the
    /// name is taken by a model that is not in `failed` (a failed one is replaced).
    pub fn start_load(self: &Arc<Self>, req: LoadRequest) -> Result<ModelStatus, ApiError> {
        let launcher = self
            .launcher
            .clone()
            .ok_or_else(|| ApiError::internal("this server cannot load models at runtime"))?;
        check_model_name(&req.name).map_err(|m| ApiError::invalid("name", m))?;
        let phase = Arc::new(Mutex::new("queued"));
        let name = req.name.clone();
        let status = {
            let mut models = self.lock();
            if let Some(s) = models.get(&name) {
                if !matches!(s, ModelState::Failed { .. }) {
                    return Err(ApiError::conflict("name", format!("a model named `{name}` is already {}", s.label())));
                }
            }
            let state = ModelState::Loading { phase: phase.clone(), since: Instant::now(), source: req.source.to_string() };
            let status = status_of(&name, &state);
            models.insert(name.clone(), state);
            status
        };
        self.changed.send_modify(|n| *n += 1);
        tracing::info!(model = %name, source = %req.source, "loading model");
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let report = phase.clone();
            let result = tokio::task::spawn_blocking(move || {
                let progress = |p: &'static str| *report.lock().unwrap_or_else(|e| e.into_inner()) = p;
                launcher.launch(&req, &progress)
            })
            .await;
            let state = match result {
                Ok(Ok(served)) => {
                    tracing::info!(model = %name, secs = started.elapsed().as_secs_f64(), "model ready");
                    ModelState::Ready(Arc::new(served))
                }
                Ok(Err(e)) => {
                    tracing::error!(model = %name, "loading failed: {e:#}");
                    ModelState::Failed { reason: format!("{e:#}"), source: String::new() }
                }
                Err(e) => ModelState::Failed { reason: format!("the loading task failed: {e}"), source: String::new() },
            };
            let state = match state {
                ModelState::Failed { reason, .. } => {
                    let source = this.status(&name).map(|s| s.source).unwrap_or_default();
                    ModelState::Failed { reason, source }
                }
                s => s,
            };
            this.set(&name, Some(state));
        });
        Ok(status)
    }

    /// Waits until `name` is ready (or its load failed: 503 with the reason; gone: 404).
    pub async fn wait_ready(&self, name: &str) -> Result<Arc<Served>, ApiError> {
        let name = normalize(name);
        let mut rx = self.changed.subscribe();
        loop {
            match self.state(name) {
                Some(ModelState::Ready(m)) => return Ok(m),
                Some(ModelState::Loading { .. }) => {}
                Some(ModelState::Failed { reason, .. }) => {
                    return Err(ApiError::model_unavailable(name, &format!("failed to load: {reason}")))
                }
                Some(ModelState::Unloading(_)) => return Err(ApiError::model_unavailable(name, "is being unloaded")),
                None => return Err(self.resolve(name).err().unwrap_or_else(|| ApiError::not_found(name.to_owned()))),
            }
            if rx.changed().await.is_err() {
                return Err(ApiError::shutting_down());
            }
        }
    }

    /// Ollama's way: waits until `name` answers, loading it first when it is a catalog entry
    /// that is not loaded. Returns how long it waited (Ollama's `load_duration`).
    pub async fn load_on_demand(self: &Arc<Self>, name: &str) -> Result<Duration, ApiError> {
        let started = Instant::now();
        let key = normalize(name);
        match self.state(key) {
            Some(ModelState::Ready(_)) => return Ok(Duration::ZERO),
            Some(ModelState::Loading { .. }) => {}
            Some(ModelState::Failed { .. }) | None => match self.catalog.get(key) {
                Some(entry) => match self.start_load(entry.request.clone()) {
                    Ok(_) => {}
                    // Someone else started it meanwhile: wait for theirs.
                    Err(e) if e.status == axum::http::StatusCode::CONFLICT => {}
                    Err(e) => return Err(e),
                },
                None => {
                    self.resolve(name)?;
                    return Ok(Duration::ZERO);
                }
            },
            Some(ModelState::Unloading(_)) => return Err(ApiError::model_unavailable(key, "is being unloaded")),
        }
        self.wait_ready(key).await?;
        Ok(started.elapsed())
    }

    /// Stops serving `name`: new requests get 503 at once, running ones may finish (up to
    /// [`Self::drain_timeout`]), then the engine stops and its memory is freed. A failed entry
    /// is just forgotten. 404 for unknown names, 409 while loading.
    pub async fn unload(&self, name: &str) -> Result<(), ApiError> {
        let name = normalize(name).to_owned();
        let served = {
            let mut models = self.lock();
            match models.get(&name) {
                Some(ModelState::Ready(m)) => {
                    let m = m.clone();
                    models.insert(name.clone(), ModelState::Unloading(m.clone()));
                    m
                }
                Some(ModelState::Failed { .. }) => {
                    models.remove(&name);
                    drop(models);
                    self.changed.send_modify(|n| *n += 1);
                    return Ok(());
                }
                Some(s) => {
                    return Err(ApiError::conflict("model", format!("the model `{name}` is {}; try again later", s.label())))
                }
                None => return Err(ApiError::not_found(format!("no model named `{name}` is loaded")).with_param("model")),
            }
        };
        self.changed.send_modify(|n| *n += 1);
        tracing::info!(model = %name, active = served.active(), "unloading model");
        let deadline = Instant::now() + self.drain_timeout;
        while served.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if served.active() > 0 {
            tracing::warn!(model = %name, active = served.active(), "drain time over: stopping the engine under running requests");
        }
        self.set(&name, None);
        // The engine thread stops (and is joined) when the last handle goes; not on an async thread.
        let _ = tokio::task::spawn_blocking(move || drop(served)).await;
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Starts a switch from `from` to `req`: checks `from` is ready and starts loading `req`.
    /// [`Self::finish_switch`] then unloads `from` once `req` is ready, so one of the two
    /// answers all along; if the new model fails to load, `from` stays.
    pub fn begin_switch(self: &Arc<Self>, from: &str, req: LoadRequest) -> Result<ModelStatus, ApiError> {
        let from = normalize(from);
        if from == req.name {
            return Err(ApiError::invalid("name", "the new model needs a name other than the one it replaces"));
        }
        match self.state(from) {
            Some(ModelState::Ready(_)) => {}
            Some(s) => return Err(ApiError::conflict("from", format!("the model `{from}` is {}", s.label()))),
            None => return Err(ApiError::not_found(format!("no model named `{from}` is loaded")).with_param("from")),
        }
        self.start_load(req)
    }

    /// The second half of a switch: waits for `to`, then unloads `from`.
    pub async fn finish_switch(&self, from: &str, to: &str) -> Result<(), ApiError> {
        self.wait_ready(to).await?;
        tracing::info!(from, to, "switch: new model ready, unloading the old one");
        self.unload(from).await
    }

    /// Unloads models idle past their keep-alive, checking every `every`, until `self` goes.
    pub fn spawn_reaper(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                let idle: Vec<String> =
                    this.ready().iter().filter(|m| m.idle_left() == Some(Duration::ZERO)).map(|m| m.name.clone()).collect();
                for name in idle {
                    tracing::info!(model = %name, "keep-alive over: unloading idle model");
                    let this = this.clone();
                    tokio::spawn(async move {
                        let _ = this.unload(&name).await;
                    });
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize("x:latest"), "x");
        assert_eq!(normalize("x:v2"), "x:v2");
        assert!(check_model_name("smollm2:135m").is_ok());
        assert!(check_model_name("").is_err());
        assert!(check_model_name("a b").is_err());
        assert!(check_model_name(&"x".repeat(129)).is_err());
    }
}
