//! One job's run: training on the base model's device beside serving (which keeps priority),
//! events per step, checkpoints per epoch, and the adapter served as soon as it is saved.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use flint_engine::finetune::{CheckpointError, StepMetrics, TrainHooks, TrainableModel};
use serde_json::json;

use super::{
    error::FineTuneError,
    job::{Job, JobError, Status},
    service::{now, FineTuning},
};
use crate::{generation::new_id, registry::Served};

/// `<data_dir>/adapters/<job>/final` or `…/ckpt-step-N`.
pub(super) fn adapter_dir(data_dir: &Path, job: &str, step: Option<usize>) -> PathBuf {
    let leaf = step.map_or_else(|| "final".to_owned(), |s| format!("ckpt-step-{s}"));
    data_dir.join("adapters").join(job).join(leaf)
}

/// Reports progress into the job's events and yields to serving.
struct Hooks {
    ft: Arc<FineTuning>,
    job: Job,
    served: Arc<Served>,
    cancel: Arc<AtomicBool>,
    rt: tokio::runtime::Handle,
    last_step: Instant,
    step_time: Duration,
    last_loss: f64,
    error: Option<String>,
}

impl Hooks {
    /// Saves `model` under `step`'s name and serves it; records the checkpoint.
    fn publish(&mut self, model: &TrainableModel, step: Option<usize>, metrics: serde_json::Value) -> Result<String, FineTuneError> {
        let dir = adapter_dir(self.ft.data_dir(), &self.job.id, step);
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(|source| FineTuneError::Io { path: parent.to_path_buf(), source })?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|source| FineTuneError::Io { path: dir.clone(), source })?;
        }
        model.save_peft(&dir, &self.job.model).map_err(FineTuneError::SaveAdapter)?;
        let name = match step {
            Some(s) => self.job.checkpoint_name(s),
            None => self.job.model_name(),
        };
        self.rt
            .block_on(self.served.engine.load_adapter(&name, dir))
            .map_err(|source| FineTuneError::ServeAdapter { name: name.clone(), source: Box::new(source) })?;
        if let Some(s) = step {
            let id = new_id("ftckpt");
            let body = json!({"object": "fine_tuning.job.checkpoint", "id": id, "created_at": now(),
                "fine_tuned_model_checkpoint": name, "step_number": s, "metrics": metrics,
                "fine_tuning_job_id": self.job.id});
            self.ft.store().add_checkpoint(&self.job.id, &id, now(), s as i64, &body)?;
        }
        Ok(name)
    }
}

impl TrainHooks for Hooks {
    fn before_step(&mut self) {
        // Serving keeps priority: while requests run on this model, train at most half the
        // time (pause as long as the last step took).
        if self.served.active() > 0 && !self.cancel.load(Ordering::Acquire) {
            std::thread::sleep(self.step_time.min(Duration::from_secs(5)));
        }
        self.last_step = Instant::now();
    }

    fn on_step(&mut self, m: &StepMetrics) {
        self.step_time = self.last_step.elapsed();
        self.last_loss = m.loss;
        let data = json!({"step": m.step, "total_steps": m.total_steps, "epoch": m.epoch, "train_loss": m.loss,
            "learning_rate": m.learning_rate, "tokens_per_second": m.tokens_per_s, "trained_tokens": m.tokens});
        self.ft.event(&self.job.id, "info", &format!("Step {}/{}: training loss={:.4}", m.step, m.total_steps, m.loss), Some(data));
        self.job.trained_tokens = Some(m.tokens as u64);
        let per_step = m.elapsed.as_secs_f64() / m.step.max(1) as f64;
        self.job.estimated_finish = Some(now() + (per_step * (m.total_steps - m.step) as f64).ceil() as i64);
        let _ = self.ft.save(&self.job);
    }

    fn on_validation(&mut self, step: usize, loss: f64) {
        let data = json!({"step": step, "valid_loss": loss});
        self.ft.event(&self.job.id, "info", &format!("Step {step}: validation loss={loss:.4}"), Some(data));
    }

    /// The error's text is also kept for the job.
    fn on_checkpoint(&mut self, step: usize, model: &TrainableModel) -> Result<(), CheckpointError> {
        let metrics = json!({"step": step, "train_loss": self.last_loss});
        match self.publish(model, Some(step), metrics) {
            Ok(name) => {
                self.ft.event(&self.job.id, "info", &format!("Checkpoint saved at step {step}: {name}"), None);
                Ok(())
            }
            Err(e) => {
                self.error = Some(e.to_string());
                Err(Box::new(e))
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Acquire)
    }
}

/// Runs job `id` to its end (succeeded, failed or cancelled).
pub(super) async fn run(ft: Arc<FineTuning>, id: String) {
    let Ok(mut job) = ft.get(&id) else {
        ft.forget(&id);
        return;
    };
    let Some(cancel) = ft.cancel_flag(&id) else { return };
    let fail = |code: &str, message: String| JobError { code: code.into(), message, param: None };
    let served = match ft.registry().resolve(&job.model) {
        Ok((served, None)) => served,
        _ => {
            let err = fail("model_unavailable", format!("the base model `{}` is no longer served", job.model));
            ft.event(&id, "error", &err.message, None);
            ft.finish(&mut job, Status::Failed, Some(err));
            return;
        }
    };
    // The examples are prepared again (validation only counted them), so only running jobs
    // hold theirs in memory.
    let prepared = {
        let (ft, job, served) = (ft.clone(), job.clone(), served.clone());
        tokio::task::spawn_blocking(move || ft.prepare(&job, &served, true)).await
    };
    let prepared = match prepared {
        Ok(Ok((_, p))) => p,
        // Cancelled while it was prepared: the cancel has ended the job.
        _ if cancel.load(Ordering::Acquire) => return,
        Ok(Err(err)) => {
            ft.event(&id, "error", &format!("Preparing the files failed: {}", err.message), None);
            ft.finish(&mut job, Status::Failed, Some(err));
            return;
        }
        Err(e) => {
            ft.finish(&mut job, Status::Failed, Some(fail("internal", format!("preparing the files failed: {e}"))));
            return;
        }
    };
    let plan = job.plan.clone().expect("a queued job has a resolved plan");
    let micro = plan.batch_size;
    let steps_per_epoch = prepared.train.len().div_ceil(micro.max(1));
    let tc = plan.train_config(steps_per_epoch);
    if !ft.start_running(&mut job) {
        return;
    }
    ft.event(&id, "info", &format!("Fine-tuning started: {} epochs of {} steps.", plan.n_epochs, steps_per_epoch), None);
    tracing::info!(job = %id, model = %job.model, "fine-tuning started");

    let info = served.engine.info().clone();
    let hooks = Hooks {
        ft: ft.clone(),
        job: job.clone(),
        served: served.clone(),
        cancel,
        rt: tokio::runtime::Handle::current(),
        last_step: Instant::now(),
        step_time: Duration::ZERO,
        last_loss: f64::NAN,
        error: None,
    };
    let result = tokio::task::spawn_blocking(move || {
        let mut hooks = hooks;
        let out = flint_engine::finetune::train(
            &info.model_dir,
            &info.model,
            &info.device,
            &tc,
            &prepared.train,
            prepared.validation.as_deref(),
            &mut hooks,
        );
        let published = match &out {
            Ok(o) if !o.cancelled => Some(hooks.publish(&o.model, None, json!({}))),
            _ => None,
        };
        (out.map(|o| (o.cancelled, o.trained_tokens, o.final_loss)), published, hooks.job, hooks.error)
    })
    .await;
    let Ok((out, published, trained, hook_error)) = result else {
        ft.finish(&mut job, Status::Failed, Some(fail("internal", "the training task failed".into())));
        return;
    };
    job.trained_tokens = trained.trained_tokens;
    match (out, published) {
        (Ok((true, ..)), _) => {
            ft.event(&id, "info", "The job was cancelled.", None);
            ft.finish(&mut job, Status::Cancelled, None);
        }
        (Ok((false, tokens, loss)), Some(Ok(name))) => {
            job.trained_tokens = Some(tokens as u64);
            job.fine_tuned_model = Some(name.clone());
            ft.event(&id, "info", &format!("New fine-tuned model created: {name} (final training loss {loss:.4})."), None);
            ft.event(&id, "info", "The job has successfully completed.", None);
            tracing::info!(job = %id, model = %name, "fine-tuning succeeded");
            ft.finish(&mut job, Status::Succeeded, None);
        }
        (Ok(_), published) => {
            let msg = hook_error
                .or_else(|| published.and_then(Result::err).map(|e| e.to_string()))
                .unwrap_or_else(|| "the adapter was not saved".into());
            let err = fail("publish_failed", msg);
            ft.event(&id, "error", &err.message, None);
            ft.finish(&mut job, Status::Failed, Some(err));
        }
        (Err(e), _) => {
            let err = fail("training_failed", hook_error.unwrap_or_else(|| e.to_string()));
            ft.event(&id, "error", &format!("Training failed: {}", err.message), None);
            tracing::error!(job = %id, "fine-tuning failed: {}", err.message);
            ft.finish(&mut job, Status::Failed, Some(err));
        }
    }
}
