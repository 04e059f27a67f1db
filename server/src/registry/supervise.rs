//! Engine supervision. Each ready model has a watcher task that asks its engine every
//! [`FAILURE_POLL`] whether it failed (its thread panicked or a step failed; `resolve` asks
//! too, so no request is sent to a dead engine). A failed model becomes
//! [`ModelState::Failed`] with the reason, its engine is stopped and joined (its memory freed),
//! and, when it was loaded from a [`super::LoadRequest`], it is loaded again (with the LoRA
//! adapters it served) after a backoff
//! (`restart_backoff`, doubled each time), at most `max_restarts` times; then it stays failed
//! until it is loaded by hand. A model that served [`RESTART_WINDOW`] since its last start
//! counts its next failure as the first.
//!
//! [`stop_engine`] is also how unloading and shutdown end an engine: `stop` ends its thread
//! whoever still holds the handle, and the join is bounded by [`ENGINE_JOIN_TIMEOUT`].

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{FailedWhile, ModelRegistry, ModelState, RegistryError, Served};

/// `--max-engine-restarts`' default.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// How often a ready model's watcher asks its engine whether it failed.
pub const FAILURE_POLL: Duration = Duration::from_millis(200);
/// Longest a stop waits for the engine thread to exit (a step in progress ends first).
pub const ENGINE_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A model that served this long since its last (re)start counts its next failure as the first.
const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// The doubling backoff stops growing here.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

impl ModelRegistry {
    /// Watches `served` (the entry of load `load_id`) for an engine failure while it is ready.
    pub(super) fn watch(self: &Arc<Self>, name: &str, load_id: u64, served: &Arc<Served>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (registry, model) = (Arc::downgrade(self), Arc::downgrade(served));
        let name = name.to_owned();
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(FAILURE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(this), Some(served)) = (registry.upgrade(), model.upgrade()) else { return };
                if !this.serves(&name, load_id, &served) || this.check_engine(&name, load_id, &served).is_some() {
                    return;
                }
            }
        });
    }

    /// Whether `name` is still ready with `served` from load `load_id`.
    fn serves(&self, name: &str, load_id: u64, served: &Arc<Served>) -> bool {
        self.lock()
            .get(name)
            .is_some_and(|e| e.load_id == load_id && matches!(&e.state, ModelState::Ready(m) if Arc::ptr_eq(m, served)))
    }

    /// `None` while `served`'s engine runs; once it failed, marks the model failed (starting
    /// its recovery) and returns what a request to it gets.
    pub(super) fn check_engine(
        self: &Arc<Self>,
        name: &str,
        load_id: u64,
        served: &Arc<Served>,
    ) -> Option<RegistryError> {
        let reason = served.engine.failure()?;
        self.engine_failed(name, load_id, served, reason.clone());
        let refusal = self.lock().get(name).and_then(|e| e.state.refusal(name));
        Some(refusal.unwrap_or(RegistryError::Failed {
            name: name.to_owned(),
            during: FailedWhile::Serving,
            reason,
            restarting: false,
        }))
    }

    fn engine_failed(self: &Arc<Self>, name: &str, load_id: u64, served: &Arc<Served>, reason: String) {
        let (restarting, restarts) = {
            let mut models = self.lock();
            let Some(entry) = models.get_mut(name).filter(|e| e.load_id == load_id) else { return };
            if !matches!(&entry.state, ModelState::Ready(m) if Arc::ptr_eq(m, served)) {
                // Someone else noticed first.
                return;
            }
            if served.up_for() >= RESTART_WINDOW {
                entry.restarts = 0;
            }
            let restarting = entry.recipe.is_some() && entry.restarts < self.max_restarts && !self.closing();
            if restarting {
                entry.adapters = served.engine.adapters().into_iter().map(|a| (a.name, a.path)).collect();
            }
            let source = served.source.clone();
            entry.state =
                ModelState::Failed { reason: reason.clone(), source, during: FailedWhile::Serving, restarting };
            (restarting, entry.restarts)
        };
        self.notify();
        tracing::error!(model = %name, restarting, restarts, "engine failed: {reason}");
        let (this, name, served) = (self.clone(), name.to_owned(), served.clone());
        spawn(async move {
            // Freed before the new engine loads, so a restart does not hold two copies.
            stop_engine(&name, served).await;
            if restarting {
                this.restart_after_backoff(name, load_id).await;
            }
        });
    }

    /// A load of entry `load_id` failed; a restart's load is tried again while restarts last.
    pub(super) fn load_failed(self: &Arc<Self>, name: &str, load_id: u64, reason: String, source: String) {
        let max = self.max_restarts;
        let closing = self.closing();
        let restarting = self.update(name, load_id, |e| {
            // Only restarts are retried: a first load that fails waits for someone to fix it.
            let restarting = e.restarts > 0 && e.restarts < max && !closing;
            e.state = ModelState::Failed { reason, source, during: FailedWhile::Loading, restarting };
            restarting
        });
        if restarting == Some(true) {
            let (this, name) = (self.clone(), name.to_owned());
            spawn(async move { this.restart_after_backoff(name, load_id).await });
        }
    }

    /// Waits out the backoff, then loads entry `load_id` again from its recipe, unless it was
    /// replaced, unloaded or the server is closing meanwhile.
    async fn restart_after_backoff(self: Arc<Self>, name: String, load_id: u64) {
        let done = self.lock().get(&name).filter(|e| e.load_id == load_id).map_or(0, |e| e.restarts);
        let backoff = self.restart_backoff.saturating_mul(1 << done.min(16)).min(MAX_BACKOFF);
        tokio::time::sleep(backoff).await;
        let max = self.max_restarts;
        let closing = self.closing();
        let started = self.update(&name, load_id, |e| {
            if closing || !matches!(e.state, ModelState::Failed { restarting: true, .. }) {
                return None;
            }
            let req = e.recipe.clone()?;
            e.restarts += 1;
            let phase = Arc::new(Mutex::new("restarting"));
            e.state =
                ModelState::Loading { phase: phase.clone(), since: Instant::now(), source: req.source.to_string() };
            Some((req, phase, e.restarts))
        });
        if let Some(Some((req, phase, n))) = started {
            tracing::warn!(model = %name, restart = n, max, "restarting the model after an engine failure");
            self.launch_in_background(req, load_id, phase);
        }
    }

    /// The models that failed while serving and are not back yet (failed, or restarting):
    /// what each request to them gets. `/ready` is not ready while there is one.
    pub fn unhealthy(&self) -> Vec<RegistryError> {
        self.lock()
            .iter()
            .filter(|(_, e)| match &e.state {
                ModelState::Ready(_) | ModelState::Unloading(_) => false,
                ModelState::Failed { during: FailedWhile::Serving, .. } => true,
                ModelState::Failed { .. } | ModelState::Loading { .. } => e.restarts > 0,
            })
            .filter_map(|(n, e)| e.state.refusal(n))
            .collect()
    }

    /// Shutdown: no more loads or restarts; every engine is stopped (requests still running
    /// end with a shutdown error) and joined, all within `wait`. Whether every engine thread
    /// exited in time.
    pub async fn stop_all(&self, wait: Duration) -> bool {
        self.closing.store(true, std::sync::atomic::Ordering::Release);
        let engines: Vec<(String, Arc<Served>)> = self
            .lock()
            .iter()
            .filter_map(|(n, e)| match &e.state {
                ModelState::Ready(m) | ModelState::Unloading(m) => Some((n.clone(), m.clone())),
                _ => None,
            })
            .collect();
        let stops = engines.into_iter().map(|(name, served)| async move {
            served.engine.stop();
            let joined = tokio::task::spawn_blocking(move || served.engine.join_timeout(wait));
            let joined = tokio::time::timeout(wait, joined).await.is_ok_and(|r| r.unwrap_or(false));
            if !joined {
                tracing::warn!(model = %name, "the engine thread did not stop in {:.1} s", wait.as_secs_f64());
            }
            joined
        });
        futures_util::future::join_all(stops).await.into_iter().all(|ok| ok)
    }

    pub(super) fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Ends `served`'s engine now, whoever else still holds it (their requests end with a
/// shutdown error), and waits up to [`ENGINE_JOIN_TIMEOUT`] for its thread, off the async
/// threads. Whether the thread exited.
pub(super) async fn stop_engine(name: &str, served: Arc<Served>) -> bool {
    served.engine.stop();
    let joined =
        tokio::task::spawn_blocking(move || served.engine.join_timeout(ENGINE_JOIN_TIMEOUT)).await.unwrap_or(false);
    if !joined {
        tracing::warn!(model = %name, "the engine thread did not stop within {} s", ENGINE_JOIN_TIMEOUT.as_secs());
    }
    joined
}

/// Spawns on the current runtime; without one (a synchronous caller outside tokio) the work
/// is skipped, as there is nothing to supervise with.
fn spawn(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(fut);
    }
}
