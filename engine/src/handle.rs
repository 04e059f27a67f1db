//! [`EngineHandle`]: the clonable, async face of the engine thread, and [`EngineConfig`].

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use flint_models::{load, load_dummy, GenerationConfig, KvCache, LoadOptions, LoraAdapter, ModelConfig};
use tokio::sync::{mpsc, oneshot};

use crate::{
    core::{CoreOptions, EngineCore, EngineStats},
    error::{EngineError, Result},
    ids::RequestId,
    lora::{AdapterCatalog, AdapterInfo, LoraSettings},
    messages::{EngineCommand, FaultKind, Submission},
    output::OutputStream,
    runner::ModelRunner,
    sampling::{SamplingDevice, SamplingParams},
    scheduler::{check_admission, AdmitLimits, Scheduler, SchedulerConfig},
    supervise::{ExitGuard, Supervision},
    tokenizer::Tokenizer,
};

/// How much memory the KV cache may take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KvCacheBudget {
    /// A fixed size in bytes (`--kv-cache-memory`).
    Bytes(u64),
    /// A fraction of the GPU's memory for weights + cache together, vLLM's
    /// `--gpu-memory-utilization`; on the CPU it means that fraction of 4 GiB.
    GpuFraction(f32),
    /// Exactly this many blocks (tests, benchmarks).
    Blocks(usize),
}

/// Everything the engine needs to start.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub model_dir: PathBuf,
    pub load: LoadOptions,
    /// Tokens per KV block.
    pub block_size: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    /// Prompt + output limit; the model's `max_position_embeddings` when `None`.
    pub max_model_len: Option<usize>,
    pub kv_cache: KvCacheBudget,
    pub prefix_caching: bool,
    /// Random weights made on the device instead of reading weight files (`--load-format
    /// dummy`): benchmarks at real sizes from a config.json alone.
    pub dummy_weights: bool,
    /// LoRA slots and rank limit; `None`: no adapters.
    pub lora: Option<LoraSettings>,
    /// Where tokens are picked (`--sampling-device`): on a GPU by default.
    pub sampling: SamplingDevice,
    /// Synchronize after each forward pass so the step profile (engine stats, `/metrics`)
    /// separates forward and sampling time on a GPU (`FLINT_PROFILE_SYNC=1`).
    pub profile_sync: bool,
}

impl EngineConfig {
    /// Defaults close to vLLM's for the model in `dir`.
    pub fn new(model_dir: impl Into<PathBuf>, load: LoadOptions) -> Self {
        let cpu = load.device.is_cpu();
        let kv_cache = if cpu { KvCacheBudget::Bytes(1 << 30) } else { KvCacheBudget::GpuFraction(0.9) };
        Self {
            model_dir: model_dir.into(),
            load,
            block_size: 16,
            max_num_seqs: 256,
            // On the CPU a step of 2048 prompt tokens takes seconds and stalls every stream.
            max_num_batched_tokens: if cpu { 512 } else { 2048 },
            max_model_len: None,
            kv_cache,
            prefix_caching: true,
            dummy_weights: false,
            lora: None,
            sampling: SamplingDevice::Auto,
            profile_sync: false,
        }
    }
}

/// Longest `cache_salt`, in bytes (it is hashed with each request's first block).
pub const MAX_CACHE_SALT_BYTES: usize = 1024;

/// How a request is served besides its prompt and sampling parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubmitOptions {
    /// The LoRA adapter loaded under this name; `None`: the base model.
    pub adapter: Option<String>,
    /// Prefix-cache namespace (vLLM's name): only requests with the same salt share cached
    /// blocks, so cached-token counts and timing tell nothing across salts (one per tenant,
    /// say). Non-empty, at most [`MAX_CACHE_SALT_BYTES`].
    pub cache_salt: Option<String>,
}

fn checked_salt(salt: String) -> Result<Arc<str>> {
    let invalid = |reason: String| EngineError::InvalidParameter { field: "cache_salt", reason };
    if salt.is_empty() {
        return Err(invalid("must be a non-empty string when given".into()));
    }
    if salt.len() > MAX_CACHE_SALT_BYTES {
        return Err(invalid(format!("must be at most {MAX_CACHE_SALT_BYTES} bytes, got {}", salt.len())));
    }
    Ok(salt.into())
}

/// Facts about the running engine that never change.
#[derive(Clone, Debug)]
pub struct EngineInfo {
    pub model_dir: PathBuf,
    pub model: ModelConfig,
    pub generation: GenerationConfig,
    pub max_model_len: usize,
    pub block_size: usize,
    /// Usable KV blocks (the null block excluded).
    pub num_blocks: usize,
    pub kv_cache_bytes: u64,
    /// The weights' dtype (`f32`, `bf16`, `f16`).
    pub dtype: String,
    /// Bytes the weights take on the device (parameters × dtype size; LoRA slots excluded).
    pub weight_bytes: u64,
    /// Where the model runs (fine-tuning trains there too).
    pub device: flint_models::Device,
    pub eos_ids: Vec<u32>,
    pub lora: Option<LoraSettings>,
}

impl EngineInfo {
    /// The limits every request is admitted against.
    pub fn admit_limits(&self) -> AdmitLimits {
        AdmitLimits { max_model_len: self.max_model_len, block_size: self.block_size, usable_blocks: self.num_blocks }
    }
}

struct Inner {
    cmd: mpsc::UnboundedSender<EngineCommand>,
    tokenizer: Arc<Tokenizer>,
    info: EngineInfo,
    /// Adapter names; locked while a request resolves its adapter and is sent, so a
    /// request and an unload reach the engine thread in the order they happened here.
    adapters: Mutex<AdapterCatalog>,
    next_id: AtomicU64,
    /// Stop requests, the failure reason and the thread's exit, shared with the thread.
    sup: Arc<Supervision>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.sup.request_stop();
        let _ = self.cmd.send(EngineCommand::Shutdown);
        if let Some(t) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join();
        }
    }
}

/// A cheap, clonable handle to the engine thread; the thread stops when the last one is
/// dropped, or at once on [`EngineHandle::stop`]. A panic or a failed step on the thread is
/// fatal to it: [`EngineHandle::failure`] then says why, and every request fails fast.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl EngineHandle {
    /// Loads the model on a new engine thread and waits until it is ready; load failures
    /// (missing files, corrupt weights, no memory for the cache) come back here.
    pub fn start(cfg: EngineConfig) -> Result<Self> {
        for (field, v) in
            [("block_size", cfg.block_size), ("max_num_seqs", cfg.max_num_seqs), ("max_num_batched_tokens", cfg.max_num_batched_tokens)]
        {
            if v == 0 {
                return Err(EngineError::InvalidConfig { field, reason: "must be >= 1".into() });
            }
        }
        let has_tokenizer = cfg.model_dir.join("tokenizer.json").is_file();
        let tokenizer = Arc::new(if cfg.dummy_weights && !has_tokenizer {
            // Throughput runs at real sizes need only config.json; prompts come as token ids.
            Tokenizer::byte_level()?
        } else {
            Tokenizer::from_dir(&cfg.model_dir)?
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<EngineInfo>>(1);
        let sup = Arc::new(Supervision::default());
        let thread_sup = sup.clone();
        let thread = std::thread::Builder::new()
            .name("flint-engine".into())
            .spawn(move || {
                // Dropped last, after the core (model, KV cache), even if a panic escapes.
                let _exit = ExitGuard(thread_sup.clone());
                match build_core(&cfg) {
                    Ok((core, info)) => {
                        let _ = ready_tx.send(Ok(info));
                        core.run(cmd_rx, &thread_sup);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(|e| EngineError::StepFailed(format!("cannot start the engine thread: {e}")))?;
        let info = match ready_rx.recv() {
            Ok(Ok(info)) => info,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(EngineError::StepFailed("the engine thread died while loading".into()));
            }
        };
        let inner = Inner {
            cmd: cmd_tx,
            tokenizer,
            info,
            adapters: Mutex::new(AdapterCatalog::default()),
            next_id: AtomicU64::new(1),
            sup,
            thread: Mutex::new(Some(thread)),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.inner.info
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.inner.tokenizer
    }

    /// Queues a request; its output arrives on the returned stream. Requests that could never
    /// run (too long, ids outside the vocabulary, bad parameters) are refused here.
    pub fn generate(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<OutputStream> {
        self.submit(prompt, params, SubmitOptions::default())
    }

    /// [`Self::generate`] with the LoRA adapter loaded under the name `adapter`
    /// ([`EngineError::UnknownAdapter`] if there is none).
    pub fn generate_with(&self, prompt: Vec<u32>, params: SamplingParams, adapter: Option<&str>) -> Result<OutputStream> {
        self.submit(prompt, params, SubmitOptions { adapter: adapter.map(str::to_owned), ..Default::default() })
    }

    /// Queues a request with its [`SubmitOptions`] (adapter, cache salt); its output arrives
    /// on the returned stream. Requests that could never run (too long, ids outside the
    /// vocabulary, bad parameters, an unknown adapter) are refused here.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams, opts: SubmitOptions) -> Result<OutputStream> {
        if let Some(e) = self.inner.sup.refusal() {
            return Err(e);
        }
        let vocab_size = self.inner.info.model.vocab_size;
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::TokenOutOfVocab { id, vocab_size });
        }
        self.check(prompt.len(), &params)?;
        let cache_salt = opts.cache_salt.map(checked_salt).transpose()?;
        let catalog = self.catalog()?;
        let adapter = match opts.adapter.as_deref() {
            Some(name) => Some(catalog.get(name)?.id),
            None => None,
        };
        let id = RequestId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = OutputStream::new(
            id,
            rx,
            self.inner.cmd.clone(),
            self.inner.sup.clone(),
            self.inner.tokenizer.clone(),
            &params,
            prompt.len(),
        );
        let sub = Submission { id, prompt, params, adapter, cache_salt, events: tx };
        self.inner.cmd.send(EngineCommand::Submit(sub)).map_err(|_| self.inner.sup.gone())?;
        drop(catalog);
        Ok(stream)
    }

    /// Whether a request of `prompt_len` tokens with `params` could run here (the engine's
    /// one admission check, plus `params`' token ids against the vocabulary), without
    /// submitting it: a caller with several prompts checks them all before submitting any.
    pub fn check(&self, prompt_len: usize, params: &SamplingParams) -> Result<()> {
        if let Some(e) = self.inner.sup.refusal() {
            return Err(e);
        }
        params.check_vocab(self.inner.info.model.vocab_size)?;
        check_admission(self.inner.info.admit_limits(), prompt_len, params.max_tokens())?;
        Ok(())
    }

    fn catalog(&self) -> Result<std::sync::MutexGuard<'_, AdapterCatalog>> {
        self.inner.adapters.lock().map_err(|_| EngineError::StepFailed("adapter catalog poisoned".into()))
    }

    /// Reads and checks the PEFT adapter in `dir` (off the async runtime's threads), then
    /// serves it as `name`. Nothing is registered if anything is wrong.
    pub async fn load_adapter(&self, name: &str, dir: PathBuf) -> Result<AdapterInfo> {
        let settings = self.inner.info.lora.ok_or(EngineError::LoraDisabled)?;
        if self.catalog()?.contains(name) {
            return Err(EngineError::AdapterExists(name.to_owned()));
        }
        let cfg = self.inner.info.model.clone();
        let path = dir.clone();
        let adapter = tokio::task::spawn_blocking(move || LoraAdapter::load(&path, &cfg, settings.max_lora_rank))
            .await
            .map_err(|e| EngineError::StepFailed(format!("adapter loading task failed: {e}")))?
            .map_err(EngineError::InvalidAdapter)?;
        let mut catalog = self.catalog()?;
        let info = catalog.insert(name, dir, adapter.rank)?;
        tracing::info!("LoRA adapter `{name}` loaded from {} (r={}, {} KiB)", info.path.display(), adapter.rank, adapter.size_bytes() / 1024);
        if self.inner.cmd.send(EngineCommand::AddAdapter { id: info.id, adapter: Arc::new(adapter) }).is_err() {
            let _ = catalog.remove(name);
            return Err(self.inner.sup.gone());
        }
        Ok(info)
    }

    /// Stops serving adapter `name`: new requests for it are refused at once; requests
    /// already using it finish first.
    pub fn unload_adapter(&self, name: &str) -> Result<AdapterInfo> {
        if self.inner.info.lora.is_none() {
            return Err(EngineError::LoraDisabled);
        }
        let mut catalog = self.catalog()?;
        let info = catalog.remove(name)?;
        let _ = self.inner.cmd.send(EngineCommand::RemoveAdapter { id: info.id });
        tracing::info!("LoRA adapter `{name}` unloaded");
        Ok(info)
    }

    /// The loaded adapters, by name.
    pub fn adapters(&self) -> Vec<AdapterInfo> {
        self.catalog().map(|c| c.list()).unwrap_or_default()
    }

    /// Ends a request now (dropping its stream does the same).
    pub fn abort(&self, id: RequestId) {
        let _ = self.inner.cmd.send(EngineCommand::Abort { id, index: None });
    }

    /// Counters and occupancy, read on the engine thread between steps.
    pub async fn stats(&self) -> Result<EngineStats> {
        let (tx, rx) = oneshot::channel();
        self.inner.cmd.send(EngineCommand::Stats(tx)).map_err(|_| self.inner.sup.gone())?;
        rx.await.map_err(|_| self.inner.sup.gone())
    }

    /// Why the engine thread failed (it panicked, or a step failed), once it has: the engine
    /// is then gone for good, and a new one must be started to serve again.
    pub fn failure(&self) -> Option<String> {
        self.inner.sup.failure().map(str::to_owned)
    }

    /// Ends the engine thread at its next step boundary, whatever is running or queued:
    /// requests in flight end with [`EngineError::Shutdown`], new ones are refused, and the
    /// model and KV cache are freed when the thread exits, even while other clones of this
    /// handle or [`OutputStream`]s are still alive. Idempotent; does not wait (see
    /// [`Self::join_timeout`]).
    pub fn stop(&self) {
        self.inner.sup.request_stop();
        // Wakes the thread if it sleeps waiting for work.
        let _ = self.inner.cmd.send(EngineCommand::Shutdown);
    }

    /// Waits (blocking) up to `timeout` for the engine thread to exit; true once it has, its
    /// model and KV cache freed. Call it off the async runtime's worker threads.
    pub fn join_timeout(&self, timeout: Duration) -> bool {
        if !self.inner.sup.wait_exited(timeout) {
            return false;
        }
        if let Some(t) = self.inner.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = t.join(); // it has exited: this only reaps it
        }
        true
    }

    /// Test-only: makes the engine thread suffer `kind` at its next step (at once when idle),
    /// so failure handling can be exercised without a broken device.
    #[doc(hidden)]
    pub fn inject_fault(&self, kind: FaultKind) {
        let _ = self.inner.cmd.send(EngineCommand::Fault(kind));
    }
}

/// Loads the model, sizes and allocates the KV cache, and builds the engine thread's state.
fn build_core(cfg: &EngineConfig) -> Result<(EngineCore, EngineInfo)> {
    let mut loaded =
        if cfg.dummy_weights { load_dummy(&cfg.model_dir, &cfg.load)? } else { load(&cfg.model_dir, &cfg.load)? };
    if let Some(l) = cfg.lora {
        if l.max_loras == 0 || l.max_lora_rank == 0 {
            return Err(EngineError::InvalidConfig { field: "max_loras", reason: "max_loras and max_lora_rank must be >= 1".into() });
        }
        // Before the cache is sized, so the slots' memory is not counted twice on a GPU.
        loaded.model.enable_lora(l.max_loras, l.max_lora_rank)?;
    }
    let model_max = loaded.config.max_position_embeddings;
    let max_model_len = cfg.max_model_len.map_or(model_max, |m| m.min(model_max));
    let spec = loaded.model.kv_cache_spec();
    let per_block = spec.bytes_per_block(cfg.block_size) as u64;
    let budget_blocks = match cfg.kv_cache {
        KvCacheBudget::Blocks(n) => n,
        KvCacheBudget::Bytes(b) => (b / per_block) as usize,
        KvCacheBudget::GpuFraction(f) => {
            if !(f > 0.0 && f <= 1.0) {
                return Err(EngineError::InvalidConfig { field: "gpu_memory_utilization", reason: format!("{f} must be in (0, 1]") });
            }
            (crate::memory::cache_budget_bytes(&loaded.device, f)? / per_block) as usize
        }
    };
    // More blocks than every sequence at full length could use is wasted memory.
    let useful = cfg.max_num_seqs.saturating_mul(max_model_len.div_ceil(cfg.block_size)).saturating_add(1);
    let num_blocks = budget_blocks.min(useful);
    if num_blocks < 2 {
        return Err(EngineError::InvalidConfig {
            field: "kv_cache_memory",
            reason: format!("the budget holds {num_blocks} KV blocks of {per_block} bytes; at least 2 are needed"),
        });
    }
    let kv = KvCache::new(&spec, num_blocks, cfg.block_size, &loaded.device)?;
    let kv_cache_bytes = per_block * num_blocks as u64;
    tracing::info!(
        "KV cache: {} blocks x {} tokens = {} tokens, {:.1} MiB ({:?})",
        num_blocks - 1,
        cfg.block_size,
        (num_blocks - 1) * cfg.block_size,
        kv_cache_bytes as f64 / (1 << 20) as f64,
        spec.dtype
    );
    let mut eos_ids = loaded.generation.eos_token_id.clone();
    if eos_ids.is_empty() {
        eos_ids = loaded.config.eos_token_ids.clone();
    }
    let info = EngineInfo {
        model_dir: cfg.model_dir.clone(),
        model: loaded.config.clone(),
        generation: loaded.generation.clone(),
        max_model_len,
        block_size: cfg.block_size,
        num_blocks: num_blocks - 1,
        kv_cache_bytes,
        dtype: loaded.dtype.as_str().to_owned(),
        weight_bytes: loaded.config.num_parameters() * loaded.dtype.size_in_bytes() as u64,
        device: loaded.device.clone(),
        eos_ids: eos_ids.clone(),
        lora: cfg.lora,
    };
    let scheduler = Scheduler::new(SchedulerConfig {
        max_num_seqs: cfg.max_num_seqs,
        max_num_batched_tokens: cfg.max_num_batched_tokens,
        max_model_len,
        block_size: cfg.block_size,
        num_blocks,
        prefix_caching: cfg.prefix_caching,
        max_loras: cfg.lora.map_or(0, |l| l.max_loras),
    });
    let runner = ModelRunner::new(loaded.model, kv, loaded.device);
    let opts = CoreOptions { sampling: cfg.sampling, profile_sync: cfg.profile_sync };
    Ok((EngineCore::new(scheduler, runner, eos_ids, opts), info))
}
