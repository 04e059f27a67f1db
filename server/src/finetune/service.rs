//! [`FineTuning`]: the fine-tuning service (see the module docs of [`super`]).
//!
//! A job's files are read twice, each time as a stream: once to validate them (every example
//! rendered through the chat template, then dropped) and again when the job starts, to keep
//! its examples for training. So a queued job costs a row, not its dataset in memory.

use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use flint_engine::finetune::TrainExample;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::{
    dataset::{Conversation, DatasetError, JsonlReader},
    error::{FineTuneError, Result},
    job::{CreateJob, Job, JobError, Plan, Status},
    prepare, runner,
    store::{Store, StoreError},
};
use crate::{
    generation::new_id,
    registry::{ModelRegistry, Served},
};

/// The most jobs validating, queued or running at once (one more is refused, to be retried
/// later): each is a queue entry, a validation pass over its files and, once it runs, its
/// examples in memory.
pub const MAX_PENDING_JOBS: usize = 32;

/// The most jobs whose files are validated at once (on blocking threads); others wait in
/// `validating_files`, so many jobs created together do not take every core.
pub const MAX_CONCURRENT_VALIDATIONS: usize = 2;

/// How much of a training file is read at a time while preparing it.
const READ_CHUNK: usize = 64 << 10;

/// A job's examples, prepared from its files.
pub(super) struct Prepared {
    pub(super) train: Vec<TrainExample>,
    pub(super) validation: Option<Vec<TrainExample>>,
}

/// See the module docs.
pub struct FineTuning {
    store: Arc<Store>,
    registry: Arc<ModelRegistry>,
    /// Adapters are saved under `<data_dir>/adapters/<job>/`.
    data_dir: PathBuf,
    /// Per base model: the queue its worker takes job ids from.
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<String>>>,
    /// Per live job (validating, queued, running): set to cancel it. Its size is the number
    /// of pending jobs, capped by [`MAX_PENDING_JOBS`].
    cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    validations: Semaphore,
    /// Held while this process uses the data directory: a second server would mark this
    /// one's running jobs as interrupted.
    _lock: std::fs::File,
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
            validations: Semaphore::new(MAX_CONCURRENT_VALIDATIONS),
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
            this.save(&job)?;
            this.event(&job.id, "error", "The job was interrupted by a server restart.", None);
        }
        Ok(this)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(super) fn registry(&self) -> &Arc<ModelRegistry> {
        &self.registry
    }

    pub(super) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(super) fn save(&self, job: &Job) -> Result<()> {
        let body = serde_json::to_value(job).map_err(StoreError::from)?;
        self.store.update_job(&job.id, job.status.as_str(), &body)?;
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

    pub fn get(&self, id: &str) -> Result<Job> {
        let body = self.store.get_job(id)?.ok_or_else(|| FineTuneError::JobNotFound(id.to_owned()))?;
        Ok(serde_json::from_value(body).map_err(StoreError::from)?)
    }

    /// A page of jobs, newest first (`limit`: the caller's cap), and whether more follow.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Job>, bool)> {
        let (rows, more) = self.store.list_jobs(after, limit)?;
        let jobs = rows.into_iter().map(serde_json::from_value).collect::<Result<_, _>>().map_err(StoreError::from)?;
        Ok((jobs, more))
    }

    pub fn events(&self, id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool)> {
        self.get(id)?;
        Ok(self.store.list_events(id, after, limit)?)
    }

    pub fn checkpoints(&self, id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool)> {
        self.get(id)?;
        Ok(self.store.list_checkpoints(id, after, limit)?)
    }

    /// Jobs per status, for `/metrics` (one query, whatever the number of jobs).
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let counts = self.store.job_counts().unwrap_or_default();
        ["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
            .into_iter()
            .map(|s| (s, counts.get(s).copied().unwrap_or(0)))
            .collect()
    }

    /// Checks a create request, records the job (`validating_files`) and validates its files
    /// in the background; the job is then queued on its base model.
    pub fn create(self: &Arc<Self>, req: CreateJob) -> Result<Job> {
        let served = match self.registry.resolve(&req.model) {
            Ok((served, None)) => served,
            Ok((_, Some(_))) => {
                return Err(FineTuneError::invalid("model", format!("`{}` is an adapter; fine-tune a base model", req.model)))
            }
            Err(e) => return Err(FineTuneError::Model(e)),
        };
        let info = served.engine.info();
        let lora = info.lora.ok_or_else(|| {
            FineTuneError::invalid("model", format!("`{}` was loaded without LoRA, which fine-tuning needs", served.name))
        })?;
        self.check_file(&req.training_file, "training_file")?;
        if let Some(v) = &req.validation_file {
            self.check_file(v, "validation_file")?;
        }
        if let Some(s) = &req.suffix {
            let ok = !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(FineTuneError::invalid("suffix", "`suffix` must be 1 to 64 characters of letters, digits, `-`, `_` or `.`"));
            }
        }
        req.check_metadata()?;
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
        {
            // The slot is taken before the row exists, so concurrent creates cannot pass the cap.
            let mut cancels = lock(&self.cancels);
            if cancels.len() >= MAX_PENDING_JOBS {
                return Err(FineTuneError::TooManyJobs { limit: MAX_PENDING_JOBS });
            }
            cancels.insert(job.id.clone(), Arc::new(AtomicBool::new(false)));
        }
        let inserted = serde_json::to_value(&job)
            .map_err(StoreError::from)
            .and_then(|body| self.store.insert_job(&job.id, job.created_at, job.status.as_str(), &job.model, &body));
        if let Err(e) = inserted {
            self.forget(&job.id);
            return Err(e.into());
        }
        self.event(&job.id, "info", &format!("Validating training file: {}", job.training_file), None);
        let this = self.clone();
        let id = job.id.clone();
        tokio::spawn(async move { this.validate(id, served).await });
        Ok(job)
    }

    /// Refuses an unknown file, and one not uploaded for fine-tuning.
    fn check_file(&self, id: &str, field: &'static str) -> Result<()> {
        let f = self.store.get_file(id)?.ok_or_else(|| FineTuneError::FileNotFound { id: id.to_owned(), field })?;
        if f.purpose != super::upload::FINE_TUNE {
            return Err(FineTuneError::invalid(field, format!("`{id}` was uploaded with purpose `{}`, not `fine-tune`", f.purpose)));
        }
        Ok(())
    }

    /// Reads and prepares the files (examples counted, not kept), then queues the job (or
    /// fails it with the reason).
    async fn validate(self: Arc<Self>, id: String, served: Arc<Served>) {
        let _permit = self.validations.acquire().await;
        if self.cancelled(&id) {
            return;
        }
        let Ok(mut job) = self.get(&id) else {
            self.forget(&id);
            return;
        };
        let this = self.clone();
        let j = job.clone();
        let counted = tokio::task::spawn_blocking(move || this.prepare(&j, &served, false))
            .await
            .unwrap_or_else(|e| Err(JobError { code: "internal".into(), message: e.to_string(), param: None }));
        match counted {
            Err(err) => {
                if self.cancelled(&id) {
                    return;
                }
                self.event(&id, "error", &format!("Validation failed: {}", err.message), None);
                self.finish(&mut job, Status::Failed, Some(err));
            }
            Ok((n, _)) => {
                let mut plan = job.plan.clone().expect("a new job has a plan");
                plan.resolve(n);
                job.hyperparameters = plan.to_json();
                job.method = json!({"type": "supervised", "supervised": {"hyperparameters": plan.to_json()}});
                job.plan = Some(plan);
                job.status = Status::Queued;
                {
                    // Under the cancel lock, so a cancel either comes first (and this stops)
                    // or sees the job queued.
                    let cancels = lock(&self.cancels);
                    if cancels.get(&id).is_none_or(|c| c.load(Ordering::Acquire)) {
                        return;
                    }
                    let _ = self.save(&job);
                }
                self.event(&id, "info", &format!("Files validated: {n} training examples. Job queued."), None);
                self.queue(&job.model).send(id).ok();
            }
        }
    }

    /// Reads `job`'s files through the chat template, a line at a time (blocking): the number
    /// of training examples and, with `keep`, the examples (training and validation).
    pub(super) fn prepare(&self, job: &Job, served: &Served, keep: bool) -> Result<(usize, Prepared), JobError> {
        let fail = |param: &str, message: String| JobError { code: "invalid_file".into(), message, param: Some(param.into()) };
        let template = served
            .template
            .as_ref()
            .ok_or_else(|| fail("model", format!("`{}` has no chat template to render the conversations", job.model)))?;
        let max_seq_len = job.plan.as_ref().map_or(usize::MAX, |p| p.max_seq_len);
        let cancel = self.cancel_flag(&job.id).unwrap_or_default();
        let tok = served.engine.tokenizer();
        let read = |id: &str, param: &str| -> Result<(usize, Vec<TrainExample>), JobError> {
            let (_, mut file) = self
                .store
                .open_file(id)
                .map_err(|e| fail(param, e.to_string()))?
                .ok_or_else(|| fail(param, format!("the file `{id}` was deleted")))?;
            let mut kept = Vec::new();
            let mut each = |line: usize, conv: Conversation| {
                if cancel.load(Ordering::Acquire) {
                    return Err(DatasetError::new(line, "the job was cancelled"));
                }
                let ex = prepare::example(tok, template, &conv, line, max_seq_len)?;
                if keep {
                    kept.push(ex);
                }
                Ok(())
            };
            let mut reader = JsonlReader::new();
            let mut buf = vec![0u8; READ_CHUNK];
            let bad = |e: DatasetError| fail(param, format!("{id}: {e}"));
            loop {
                let n = file.read(&mut buf).map_err(|e| fail(param, format!("{id}: {e}")))?;
                if n == 0 {
                    break;
                }
                reader.feed(&buf[..n], &mut each).map_err(bad)?;
            }
            let n = reader.finish(&mut each).map_err(bad)?;
            Ok((n, kept))
        };
        let (n, train) = read(&job.training_file, "training_file")?;
        let validation = job.validation_file.as_deref().map(|v| read(v, "validation_file")).transpose()?;
        Ok((n, Prepared { train, validation: validation.map(|(_, v)| v) }))
    }

    /// The queue of `model`'s worker, started on first use.
    fn queue(self: &Arc<Self>, model: &str) -> mpsc::UnboundedSender<String> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get(model).filter(|q| !q.is_closed()) {
            return q.clone();
        }
        // Unbounded, but it never holds more than `MAX_PENDING_JOBS` ids.
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

    /// Job `id`'s cancel flag, while it is live.
    pub(super) fn cancel_flag(&self, id: &str) -> Option<Arc<AtomicBool>> {
        lock(&self.cancels).get(id).cloned()
    }

    fn cancelled(&self, id: &str) -> bool {
        lock(&self.cancels).get(id).is_none_or(|c| c.load(Ordering::Acquire))
    }

    /// Marks `job` running, unless it was cancelled first (false); under the cancel lock, so
    /// a cancel either comes first or sees the job running.
    pub(super) fn start_running(&self, job: &mut Job) -> bool {
        let cancels = lock(&self.cancels);
        if cancels.get(&job.id).is_none_or(|c| c.load(Ordering::Acquire)) {
            return false;
        }
        job.status = Status::Running;
        let _ = self.save(job);
        true
    }

    /// Cancels a job: at once if it has not started, within one training step if it runs.
    pub fn cancel(&self, id: &str) -> Result<Job> {
        let job = self.get(id)?;
        if job.status.is_final() {
            return Err(FineTuneError::AlreadyFinished(job.status.as_str()));
        }
        let mut job = {
            let cancels = lock(&self.cancels);
            if let Some(flag) = cancels.get(id) {
                flag.store(true, Ordering::Release);
            }
            self.get(id)?
        };
        if !job.status.is_final() && job.status != Status::Running {
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
            tracing::error!(job = %job.id, "cannot save the job: {e}");
        }
        self.forget(&job.id);
    }

    /// Frees job `id`'s pending slot.
    pub(super) fn forget(&self, id: &str) {
        lock(&self.cancels).remove(id);
    }

    /// Serves the adapters of finished jobs (and their checkpoints) whose base model is ready
    /// and lacks them: after a restart, and after a base model is loaded again.
    pub async fn restore_adapters(&self) {
        let Ok(done) = self.store.jobs_with_status(&["succeeded"]) else { return };
        for body in done {
            let Ok(job) = serde_json::from_value::<Job>(body) else { continue };
            let Ok((served, None)) = self.registry.resolve(&job.model) else { continue };
            let mut adapters = vec![(job.model_name(), runner::adapter_dir(&self.data_dir, &job.id, None))];
            // A job has at most one checkpoint an epoch (`n_epochs` <= 50).
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
