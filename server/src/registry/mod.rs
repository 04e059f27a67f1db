//! Runtime model management: several models loaded at once, each with its own engine.
//!
//! - [`ModelRegistry`]: the one owner of which models exist and in what state
//!   ([`ModelState`]: loading, ready, failed, unloading). Loads run on blocking threads and never
//!   hold the registry's lock, so requests to other models go on; a request to a model that is
//!   loading is refused with [`RegistryError::Loading`]. Unloading waits for the model's
//!   requests to finish (up to a drain time), then stops its engine whoever still holds it;
//!   [`ModelRegistry::begin_switch`] loads the new model before unloading the old, so one of them
//!   always answers. A reaper unloads models idle past their [`KeepAlive`].
//! - Supervision (`supervise`): a model whose engine panicked or failed a step becomes `failed`
//!   with the reason and is restarted from the same [`LoadRequest`] a bounded number of times.
//! - [`Served`]: one ready model (engine, name, chat template, idle clock).
//! - [`launch`]: how a [`LoadRequest`] becomes a [`Served`] ([`Launch`], [`Launcher`] over an
//!   engine configuration template and [`LaunchSettings`]); [`catalog`]: the TOML catalog of
//!   friendly names ([`Catalog`]).
//! - [`RegistryError`]: every refusal, mapped to HTTP once, in `api::error`; [`ModelStatus`]:
//!   what the admin routes report.
//!
//! Names `x` and `x:latest` are the same model ([`normalize`]), as in Ollama.

pub mod catalog;
mod error;
mod keep_alive;
pub mod launch;
mod served;
mod status;
mod supervise;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

pub use catalog::{parse_size, Catalog, CatalogEntry};
pub use error::{FailedWhile, RegistryError};
pub use keep_alive::KeepAlive;
pub use launch::{gguf_model_dir, Launch, LaunchSettings, Launcher, LoadOverrides, LoadRequest, Source};
pub use served::Served;
pub use status::{LoadProgress, MemoryUse, ModelStatus};
pub use supervise::{DEFAULT_MAX_RESTARTS, ENGINE_JOIN_TIMEOUT, FAILURE_POLL};
use tokio::sync::watch;

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
    Loading {
        phase: Arc<Mutex<&'static str>>,
        since: Instant,
        source: String,
    },
    Ready(Arc<Served>),
    /// Its load failed, or its engine did while serving; `restarting`: the registry is about
    /// to start it again.
    Failed {
        reason: String,
        source: String,
        during: FailedWhile,
        restarting: bool,
    },
    /// Draining its requests before the engine stops; new requests are refused.
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

    /// Why a request to `name` cannot be served now (`None`: it is ready).
    pub fn refusal(&self, name: &str) -> Option<RegistryError> {
        let name = name.to_owned();
        match self {
            Self::Ready(_) => None,
            Self::Loading { phase, since, .. } => {
                let phase = *phase.lock().unwrap_or_else(|p| p.into_inner());
                Some(RegistryError::Loading { name, phase, elapsed: since.elapsed() })
            }
            Self::Unloading(_) => Some(RegistryError::Unloading { name }),
            Self::Failed { reason, during, restarting, .. } => {
                Some(RegistryError::Failed { name, during: *during, reason: reason.clone(), restarting: *restarting })
            }
        }
    }
}

/// One name's entry: its state and what supervision needs.
struct Entry {
    state: ModelState,
    /// How it was loaded, to restart it the same way; `None` for [`ModelRegistry::install`]ed
    /// models, which cannot be restarted.
    recipe: Option<LoadRequest>,
    /// Engine restarts after failures since it was last loaded by hand.
    restarts: u32,
    /// LoRA adapters (name, directory) a failed engine served, loaded into the restarted one
    /// before it serves.
    adapters: Vec<(String, PathBuf)>,
    /// Which load this entry is: background work (a finishing load, a restart) only touches
    /// the entry of its own load, not one that replaced it meanwhile.
    load_id: u64,
}

/// Every model the server knows, by name; see the module docs.
pub struct ModelRegistry {
    models: Mutex<BTreeMap<String, Entry>>,
    /// Bumped on every state change; waiters watch it.
    changed: watch::Sender<u64>,
    launcher: Option<Arc<dyn Launch>>,
    catalog: Catalog,
    next_load: AtomicU64,
    /// Set by [`Self::stop_all`]: nothing is loaded or restarted any more.
    closing: AtomicBool,
    /// Longest an unload waits for the model's requests before stopping its engine
    /// (`--unload-drain-timeout`).
    pub drain_timeout: Duration,
    /// Restarts of a failed engine before the model stays failed (`--max-engine-restarts`).
    pub max_restarts: u32,
    /// Wait before the first restart; doubled for each further one.
    pub restart_backoff: Duration,
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
            next_load: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            drain_timeout: Duration::from_secs(60),
            max_restarts: DEFAULT_MAX_RESTARTS,
            restart_backoff: Duration::from_secs(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Applies `f` to `name`'s entry if it is still the entry of load `load_id`; tells the
    /// waiters when it did.
    fn update<T>(&self, name: &str, load_id: u64, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let out = {
            let mut models = self.lock();
            let entry = models.get_mut(name).filter(|e| e.load_id == load_id)?;
            f(entry)
        };
        self.notify();
        Some(out)
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Serves an already loaded model (startup in tests; replaces any entry of that name). It is
    /// supervised, but cannot be restarted: there is no load to repeat.
    pub fn install(self: &Arc<Self>, served: Served) -> Arc<Served> {
        let name = served.name.clone();
        let served = Arc::new(served);
        let load_id = self.next_load.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            state: ModelState::Ready(served.clone()),
            recipe: None,
            restarts: 0,
            adapters: Vec::new(),
            load_id,
        };
        self.lock().insert(name.clone(), entry);
        self.notify();
        self.watch(&name, load_id, &served);
        served
    }

    /// The ready models, by name.
    pub fn ready(&self) -> Vec<Arc<Served>> {
        self.lock()
            .values()
            .filter_map(|e| match &e.state {
                ModelState::Ready(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.lock().iter().map(|(n, e)| status::status_of(n, &e.state, e.restarts)).collect()
    }

    pub fn status(&self, name: &str) -> Option<ModelStatus> {
        let name = normalize(name);
        self.lock().get(name).map(|e| status::status_of(name, &e.state, e.restarts))
    }

    pub fn state(&self, name: &str) -> Option<ModelState> {
        self.lock().get(normalize(name)).map(|e| e.state.clone())
    }

    /// The model a request's `model` names: a served model (`None` adapter) or a LoRA adapter
    /// of one (`Some(name)`). Refused while it loads or unloads and when it failed;
    /// [`RegistryError::UnknownModel`] naming what is served otherwise.
    pub fn resolve(self: &Arc<Self>, model: &str) -> Result<(Arc<Served>, Option<String>), RegistryError> {
        let name = normalize(model);
        let found = {
            let models = self.lock();
            match models.get(name) {
                Some(e) => match &e.state {
                    ModelState::Ready(m) => Some((m.clone(), None, e.load_id)),
                    other => return Err(other.refusal(name).expect("only a ready model is served")),
                },
                None => models.values().find_map(|e| match &e.state {
                    ModelState::Ready(m) if m.has_adapter(model) => {
                        Some((m.clone(), Some(model.to_owned()), e.load_id))
                    }
                    _ => None,
                }),
            }
        };
        if let Some((served, adapter, load_id)) = found {
            // An engine that died since the last look is noticed here too, not only by its
            // watcher: no request is sent to it.
            if let Some(e) = self.check_engine(&served.name, load_id, &served) {
                return Err(e);
            }
            return Ok((served, adapter));
        }
        let models = self.lock();
        let mut served: Vec<String> = Vec::new();
        for (n, e) in models.iter() {
            if let ModelState::Ready(m) = &e.state {
                served.push(n.clone());
                served.extend(m.engine.adapters().into_iter().map(|a| a.name));
            }
        }
        Err(RegistryError::UnknownModel {
            name: model.to_owned(),
            served,
            in_catalog: self.catalog.get(name).is_some(),
        })
    }

    /// Starts loading `req` in the background and returns its status at once. Refused when
    /// the name is taken by a model that is not `failed` (a failed one is replaced, and its
    /// restart count starts again).
    pub fn start_load(self: &Arc<Self>, req: LoadRequest) -> Result<ModelStatus, RegistryError> {
        if self.launcher.is_none() {
            return Err(RegistryError::LoadingDisabled);
        }
        if self.closing() {
            return Err(RegistryError::ShuttingDown);
        }
        check_model_name(&req.name).map_err(RegistryError::InvalidName)?;
        let name = req.name.clone();
        let load_id = self.next_load.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(Mutex::new("queued"));
        let status = {
            let mut models = self.lock();
            if let Some(e) = models.get(&name) {
                if !matches!(e.state, ModelState::Failed { .. }) {
                    return Err(RegistryError::NameTaken { name, state: e.state.label() });
                }
            }
            let state =
                ModelState::Loading { phase: phase.clone(), since: Instant::now(), source: req.source.to_string() };
            let status = status::status_of(&name, &state, 0);
            models.insert(
                name.clone(),
                Entry { state, recipe: Some(req.clone()), restarts: 0, adapters: Vec::new(), load_id },
            );
            status
        };
        self.notify();
        tracing::info!(model = %name, source = %req.source, "loading model");
        self.launch_in_background(req, load_id, phase);
        Ok(status)
    }

    /// Runs `req`'s load on a blocking thread; its entry (load `load_id`) becomes ready or
    /// failed when it ends.
    fn launch_in_background(self: &Arc<Self>, req: LoadRequest, load_id: u64, phase: Arc<Mutex<&'static str>>) {
        let launcher = self.launcher.clone().expect("loads are started only with a launcher");
        let this = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let name = req.name.clone();
            let source = req.source.to_string();
            let report = phase.clone();
            let result = tokio::task::spawn_blocking(move || {
                let progress = |p: &'static str| *report.lock().unwrap_or_else(|e| e.into_inner()) = p;
                launcher.launch(&req, &progress)
            })
            .await;
            let reason = match result {
                Ok(Ok(served)) => {
                    let restore = this.update(&name, load_id, |e| std::mem::take(&mut e.adapters)).unwrap_or_default();
                    for (adapter, dir) in restore {
                        if let Err(e) = served.engine.load_adapter(&adapter, dir).await {
                            tracing::warn!(model = %name, adapter = %adapter, "the restarted engine cannot load the adapter again: {e}");
                        }
                    }
                    tracing::info!(model = %name, secs = started.elapsed().as_secs_f64(), "model ready");
                    let served = Arc::new(served);
                    let landed = this.update(&name, load_id, |e| e.state = ModelState::Ready(served.clone()));
                    if landed.is_some() {
                        this.watch(&name, load_id, &served);
                    } else {
                        // Its entry went meanwhile: nobody serves it, so it is not kept loaded.
                        supervise::stop_engine(&name, served).await;
                    }
                    return;
                }
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => format!("the loading task failed: {e}"),
            };
            tracing::error!(model = %name, "loading failed: {reason}");
            this.load_failed(&name, load_id, reason, source);
        });
    }

    /// Waits until `name` is ready; fails when its load failed (or its engine failed and it
    /// will not be restarted) and when it is unknown.
    pub async fn wait_ready(self: &Arc<Self>, name: &str) -> Result<Arc<Served>, RegistryError> {
        let name = normalize(name);
        let mut rx = self.changed.subscribe();
        loop {
            match self.state(name) {
                Some(ModelState::Ready(m)) => return Ok(m),
                Some(ModelState::Loading { .. } | ModelState::Failed { restarting: true, .. }) => {}
                Some(s) => return Err(s.refusal(name).expect("a model that is not ready is refused")),
                None => return Err(self.resolve(name).err().unwrap_or_else(|| self.not_loaded(name, "model"))),
            }
            if rx.changed().await.is_err() {
                return Err(RegistryError::ShuttingDown);
            }
        }
    }

    fn not_loaded(&self, name: &str, param: &'static str) -> RegistryError {
        RegistryError::NotLoaded { name: name.to_owned(), param }
    }

    /// Ollama's way: waits until `name` answers, loading it first when it is a catalog entry
    /// that is not loaded (or whose load failed). A model whose engine failed is not loaded
    /// again here: it is restarted by supervision, or stays failed until loaded by hand.
    /// Returns how long it waited (Ollama's `load_duration`).
    pub async fn load_on_demand(self: &Arc<Self>, name: &str) -> Result<Duration, RegistryError> {
        let started = Instant::now();
        let key = normalize(name);
        let (state, supervised) = match self.lock().get(key) {
            Some(e) => (Some(e.state.clone()), e.restarts > 0),
            None => (None, false),
        };
        match state {
            Some(ModelState::Ready(_)) => return Ok(Duration::ZERO),
            Some(ModelState::Loading { .. } | ModelState::Failed { restarting: true, .. }) => {}
            Some(s @ ModelState::Failed { during: FailedWhile::Serving, .. }) => {
                return Err(s.refusal(key).expect("failed"))
            }
            Some(s @ ModelState::Failed { .. }) if supervised => return Err(s.refusal(key).expect("failed")),
            Some(ModelState::Failed { .. }) | None => match self.catalog.get(key) {
                Some(entry) => match self.start_load(entry.request.clone()) {
                    // Someone else started it meanwhile: wait for theirs.
                    Ok(_) | Err(RegistryError::NameTaken { .. }) => {}
                    Err(e) => return Err(e),
                },
                None => {
                    self.resolve(name)?;
                    return Ok(Duration::ZERO);
                }
            },
            Some(ModelState::Unloading(_)) => return Err(RegistryError::Unloading { name: key.to_owned() }),
        }
        self.wait_ready(key).await?;
        Ok(started.elapsed())
    }

    /// Stops serving `name`: new requests are refused at once, running ones may finish (up to
    /// [`Self::drain_timeout`]), then the engine is stopped, even under requests still running,
    /// and its thread joined, so its memory is free when this returns. A failed entry is just
    /// forgotten. Refused for unknown names and while loading.
    pub async fn unload(&self, name: &str) -> Result<(), RegistryError> {
        let name = normalize(name).to_owned();
        let served = {
            let mut models = self.lock();
            let Some(entry) = models.get_mut(&name) else { return Err(self.not_loaded(&name, "model")) };
            match &entry.state {
                ModelState::Ready(m) => {
                    let m = m.clone();
                    entry.state = ModelState::Unloading(m.clone());
                    m
                }
                ModelState::Failed { .. } => {
                    models.remove(&name);
                    drop(models);
                    self.notify();
                    return Ok(());
                }
                s => return Err(RegistryError::Busy { name: name.clone(), state: s.label(), param: "model" }),
            }
        };
        self.notify();
        tracing::info!(model = %name, active = served.active(), "unloading model");
        let deadline = Instant::now() + self.drain_timeout;
        while served.active() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if served.active() > 0 {
            tracing::warn!(model = %name, active = served.active(), "drain time over: stopping the engine under running requests");
        }
        {
            let mut models = self.lock();
            if models
                .get(&name)
                .is_some_and(|e| matches!(&e.state, ModelState::Unloading(m) if Arc::ptr_eq(m, &served)))
            {
                models.remove(&name);
            }
        }
        self.notify();
        supervise::stop_engine(&name, served).await;
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Starts a switch from `from` to `req`: checks `from` is ready and starts loading `req`.
    /// [`Self::finish_switch`] then unloads `from` once `req` is ready, so one of the two
    /// answers all along; if the new model fails to load, `from` stays.
    pub fn begin_switch(self: &Arc<Self>, from: &str, req: LoadRequest) -> Result<ModelStatus, RegistryError> {
        let from = normalize(from);
        if from == req.name {
            return Err(RegistryError::InvalidName("the new model needs a name other than the one it replaces".into()));
        }
        match self.state(from) {
            Some(ModelState::Ready(_)) => {}
            Some(s) => return Err(RegistryError::Busy { name: from.to_owned(), state: s.label(), param: "from" }),
            None => return Err(self.not_loaded(from, "from")),
        }
        self.start_load(req)
    }

    /// The second half of a switch: waits for `to`, then unloads `from`.
    pub async fn finish_switch(self: &Arc<Self>, from: &str, to: &str) -> Result<(), RegistryError> {
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
                let idle: Vec<String> = this
                    .ready()
                    .iter()
                    .filter(|m| m.idle_left() == Some(Duration::ZERO))
                    .map(|m| m.name.clone())
                    .collect();
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
