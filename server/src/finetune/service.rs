//! [`FineTuning`]: the fine-tuning service (see the module docs of [`super`]).

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use flint_engine::finetune::TrainExample;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    dataset, prepare, runner,
    job::{CreateJob, Job, JobError, Plan, Status},
    store::Store,
};
use crate::{
    api::{openai::new_id, ApiError},
    registry::{ModelRegistry, Served},
};

/// A job's data, prepared while validating and kept until it runs.
pub(super) struct Prepared {
    pub(super) train: Vec<TrainExample>,
    pub(super) validation: Option<Vec<TrainExample>>,
}

/// See the module docs.
pub struct FineTuning {
    pub(super) store: Arc<Store>,
    pub(super) registry: Arc<ModelRegistry>,
    /// Adapters are saved under `<data_dir>/adapters/<job>/`.
    pub(super) data_dir: PathBuf,
    /// Per base model: the queue its worker takes job ids from.
    pub(super) queues: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    /// Per live job: set to cancel it.
    pub(super) cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    pub(super) prepared: Mutex<HashMap<String, Prepared>>,
    /// Held while this process uses the data directory: a second server would mark this
    /// one's running jobs as interrupted.
    _lock: std::fs::File,
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("fine-tuning storage: {e}"))
}

impl FineTuning {
    /// Opens the store in `data_dir`. Jobs a previous run left unfinished are marked failed
    /// (their training state was in that process's memory).
    pub fn open(data_dir: PathBuf, registry: Arc<ModelRegistry>) -> anyhow::Result<Arc<Self>> {
        let store = Arc::new(Store::open(&data_dir)?);
        let lock_path = data_dir.join("flint.lock");
        let lock = std::fs::File::create(&lock_path).map_err(|e| anyhow::anyhow!("{}: {e}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            anyhow::bail!("{} is in use by another flint process", data_dir.display());
        }
        let this = Arc::new(Self {
            store,
            registry,
            data_dir,
            queues: Mutex::default(),
            cancels: Mutex::default(),
            prepared: Mutex::default(),
            _lock: lock,
        });
        for body in this.store.jobs_with_status(&["validating_files", "queued", "running"])? {
            let mut job: Job = serde_json::from_value(body)?;
            job.status = Status::Failed;
            job.finished_at = Some(now());
            job.error = Some(JobError {
                code: "server_restarted".into(),
                message: "the job was interrupted by a server restart".into(),
                param: None,
            });
            this.save(&job).map_err(|e| anyhow::anyhow!(e.message))?;
            this.event(&job.id, "error", "The job was interrupted by a server restart.", None);
        }
        Ok(this)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn save(&self, job: &Job) -> Result<(), ApiError> {
        let body = serde_json::to_value(job).map_err(internal)?;
        self.store.update_job(&job.id, job.status.as_str(), &body).map_err(internal)?;
        Ok(())
    }

    /// Records an event (`kind`: `message`, or `metrics` with `data`); storage errors are
    /// logged, not raised, so they never stop a job.
    pub(super) fn event(&self, job_id: &str, level: &str, message: &str, data: Option<Value>) {
        let kind = if data.is_some() { "metrics" } else { "message" };
        let id = new_id("ftevent");
        let body = json!({"object": "fine_tuning.job.event", "id": id, "created_at": now(), "level": level,
            "message": message, "data": data.unwrap_or_else(|| json!({})), "type": kind});
        if let Err(e) = self.store.add_event(job_id, &id, now(), &body) {
            tracing::error!(job = job_id, "cannot record an event: {e}");
        }
    }

    pub fn get(&self, id: &str) -> Result<Job, ApiError> {
        let body = self.store.get_job(id).map_err(internal)?.ok_or_else(|| {
            ApiError::not_found(format!("no fine-tuning job `{id}`")).with_param("fine_tuning_job_id")
        })?;
        serde_json::from_value(body).map_err(internal)
    }

    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Job>, bool), ApiError> {
        let (rows, more) = self.store.list_jobs(after, limit).map_err(internal)?;
        let jobs = rows.into_iter().map(serde_json::from_value).collect::<Result<_, _>>().map_err(internal)?;
        Ok((jobs, more))
    }

    pub fn events(&self, id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool), ApiError> {
        self.get(id)?;
        self.store.list_events(id, after, limit).map_err(internal)
    }

    pub fn checkpoints(&self, id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool), ApiError> {
        self.get(id)?;
        self.store.list_checkpoints(id, after, limit).map_err(internal)
    }

    /// Jobs per status, for `/metrics`.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
            .into_iter()
            .map(|s| (s, self.store.jobs_with_status(&[s]).map_or(0, |v| v.len())))
            .collect()
    }

    /// Checks a create request, records the job (`validating_files`) and validates its files
    /// in the background; the job is then queued on its base model.
    pub fn create(self: &Arc<Self>, req: CreateJob) -> Result<Job, ApiError> {
        let served = match self.registry.resolve(&req.model) {
            Ok((served, None)) => served,
            Ok((_, Some(_))) => {
                return Err(ApiError::invalid("model", format!("`{}` is an adapter; fine-tune a base model", req.model)))
            }
            Err(e) => return Err(e.with_param("model")),
        };
        let info = served.engine.info();
        let lora = info.lora.ok_or_else(|| {
            ApiError::invalid("model", format!("`{}` was loaded without LoRA, which fine-tuning needs", served.name))
        })?;
        self.check_file(&req.training_file, "training_file")?;
        if let Some(v) = &req.validation_file {
            self.check_file(v, "validation_file")?;
        }
        if let Some(s) = &req.suffix {
            let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(ApiError::invalid("suffix", "`suffix` must be 1 to 64 characters of letters, digits, `-`, `_` or `.`"));
            }
        }
        let plan = Plan::check(&req.hyperparameters()?, req.seed, lora.max_lora_rank, info.max_model_len)?;
        let job = Job {
            object: "fine_tuning.job".into(),
            id: new_id("ftjob"),
            model: served.name.clone(),
            created_at: now(),
            finished_at: None,
            fine_tuned_model: None,
            organization_id: "org-flint".into(),
            result_files: Vec::new(),
            status: Status::ValidatingFiles,
            validation_file: req.validation_file.clone(),
            training_file: req.training_file.clone(),
            hyperparameters: plan.to_json(),
            trained_tokens: None,
            error: None,
            user_provided_suffix: req.suffix.clone(),
            seed: plan.seed,
            estimated_finish: None,
            integrations: Vec::new(),
            metadata: req.metadata.clone(),
            method: json!({"type": "supervised", "supervised": {"hyperparameters": plan.to_json()}}),
            plan: Some(plan),
        };
        let body = serde_json::to_value(&job).map_err(internal)?;
        self.store.insert_job(&job.id, job.created_at, job.status.as_str(), &job.model, &body).map_err(internal)?;
        self.event(&job.id, "info", &format!("Validating training file: {}", job.training_file), None);
        Self::lock(&self.cancels).insert(job.id.clone(), Arc::new(AtomicBool::new(false)));
        let this = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move { this.validate(id, served).await });
        Ok(job)
    }

    /// 404 for an unknown file, 400 for one not uploaded for fine-tuning.
    fn check_file(&self, id: &str, param: &str) -> Result<(), ApiError> {
        let f = self
            .store
            .get_file(id)
            .map_err(internal)?
            .ok_or_else(|| ApiError::not_found(format!("no file `{id}`")).with_param(param))?;
        if f.purpose != "fine-tune" {
            return Err(ApiError::invalid(param, format!("`{id}` was uploaded with purpose `{}`, not `fine-tune`", f.purpose)));
        }
        Ok(())
    }

    /// Reads and prepares the files, then queues the job (or fails it with the reason).
    async fn validate(self: Arc<Self>, id: String, served: Arc<Served>) {
        let Ok(mut job) = self.get(&id) else { return };
        let this = self.clone();
        let j = job.clone();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&j, &served))
            .await
            .unwrap_or_else(|e| Err(JobError { code: "internal".into(), message: e.to_string(), param: None }));
        match prepared {
            Err(err) => {
                if self.cancelled(&id) {
                    return;
                }
                self.event(&id, "error", &format!("Validation failed: {}", err.message), None);
                self.finish(&mut job, Status::Failed, Some(err));
            }
            Ok(p) => {
                let mut plan = job.plan.clone().expect("a new job has a plan");
                plan.resolve(p.train.len());
                job.hyperparameters = plan.to_json();
                job.method = json!({"type": "supervised", "supervised": {"hyperparameters": plan.to_json()}});
                job.plan = Some(plan);
                job.status = Status::Queued;
                {
                    // Under the cancel lock, so a cancel either comes first (and this stops)
                    // or sees the job queued.
                    let cancels = Self::lock(&self.cancels);
                    if cancels.get(&id).is_none_or(|c| c.load(Ordering::Acquire)) {
                        return;
                    }
                    let _ = self.save(&job);
                }
                self.event(&id, "info", &format!("Files validated: {} training examples. Job queued.", p.train.len()), None);
                Self::lock(&self.prepared).insert(id.clone(), p);
                self.queue(&job.model).send(id).ok();
            }
        }
    }

    fn prepare(&self, job: &Job, served: &Served) -> Result<Prepared, JobError> {
        let fail = |param: &str, message: String| JobError { code: "invalid_file".into(), message, param: Some(param.into()) };
        let template = served
            .template
            .as_ref()
            .ok_or_else(|| fail("model", format!("`{}` has no chat template to render the conversations", job.model)))?;
        let tok = served.engine.tokenizer();
        let read = |id: &str, param: &str| -> Result<Vec<TrainExample>, JobError> {
            let data = self
                .store
                .read_file(id)
                .map_err(|e| fail(param, e.to_string()))?
                .ok_or_else(|| fail(param, format!("the file `{id}` was deleted")))?;
            let convs = dataset::parse_jsonl(&data).map_err(|e| fail(param, format!("{id}: {e}")))?;
            convs
                .iter()
                .enumerate()
                .map(|(i, c)| prepare::example(tok, template, c).map_err(|m| fail(param, format!("{id}: line {}: {m}", i + 1))))
                .collect()
        };
        let train = read(&job.training_file, "training_file")?;
        let validation = job.validation_file.as_deref().map(|v| read(v, "validation_file")).transpose()?;
        Ok(Prepared { train, validation })
    }

    /// The queue of `model`'s worker, started on first use.
    fn queue(self: &Arc<Self>, model: &str) -> mpsc::UnboundedSender<String> {
        let mut queues = Self::lock(&self.queues);
        if let Some(q) = queues.get(model).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        queues.insert(model.to_owned(), tx.clone());
        // Weak, so the worker (and its queue) end with the service.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(id) = rx.recv().await {
                let Some(this) = weak.upgrade() else { return };
                if !this.cancelled(&id) {
                    runner::run(this, id).await;
                }
            }
        });
        tx
    }

    fn cancelled(&self, id: &str) -> bool {
        Self::lock(&self.cancels).get(id).is_none_or(|c| c.load(Ordering::Acquire))
    }

    /// Cancels a job: at once if it has not started, within one training step if it runs.
    pub fn cancel(&self, id: &str) -> Result<Job, ApiError> {
        let job = self.get(id)?;
        if job.status.is_final() {
            return Err(ApiError::invalid("fine_tuning_job_id", format!("the job is already {}", job.status.as_str())));
        }
        let job = {
            let cancels = Self::lock(&self.cancels);
            if let Some(flag) = cancels.get(id) {
                flag.store(true, Ordering::Release);
            }
            self.get(id)?
        };
        let mut job = job;
        if !job.status.is_final() && job.status != Status::Running {
            Self::lock(&self.prepared).remove(id);
            self.event(id, "info", "The job was cancelled.", None);
            self.finish(&mut job, Status::Cancelled, None);
        }
        // A running job is marked cancelled by its runner once the current step is done.
        Ok(job)
    }

    /// Ends a job with `status` (and `error`), and forgets its in-memory state.
    pub(super) fn finish(&self, job: &mut Job, status: Status, error: Option<JobError>) {
        job.status = status;
        job.error = error;
        job.finished_at = Some(now());
        job.estimated_finish = None;
        if let Err(e) = self.save(job) {
            tracing::error!(job = %job.id, "cannot save the job: {}", e.message);
        }
        Self::lock(&self.cancels).remove(&job.id);
        Self::lock(&self.prepared).remove(&job.id);
    }

    /// Serves the adapters of finished jobs (and their checkpoints) whose base model is ready
    /// and lacks them: after a restart, and after a base model is loaded again.
    pub async fn restore_adapters(&self) {
        let Ok(done) = self.store.jobs_with_status(&["succeeded"]) else { return };
        for body in done {
            let Ok(job) = serde_json::from_value::<Job>(body) else { continue };
            let Ok((served, None)) = self.registry.resolve(&job.model) else { continue };
            let mut adapters = vec![(job.model_name(), runner::adapter_dir(&self.data_dir, &job.id, None))];
            if let Ok((ckpts, _)) = self.store.list_checkpoints(&job.id, None, 1000) {
                for c in ckpts {
                    if let (Some(name), Some(step)) = (c["fine_tuned_model_checkpoint"].as_str(), c["step_number"].as_u64()) {
                        adapters.push((name.to_owned(), runner::adapter_dir(&self.data_dir, &job.id, Some(step as usize))));
                    }
                }
            }
            for (name, dir) in adapters {
                if served.has_adapter(&name) || !dir.is_dir() {
                    continue;
                }
                if let Err(e) = served.engine.load_adapter(&name, dir).await {
                    tracing::warn!(model = %name, "cannot serve the fine-tuned adapter again: {e}");
                }
            }
        }
    }
}
