//! [`EngineCore`]: the engine thread. It owns every piece of mutable engine state (scheduler,
//! KV cache, model, samplers) and runs the loop
//! `drain commands → schedule → run → sample → update → emit`.
//! The rest of the process reaches it only through [`EngineCommand`]s and each request's event
//! channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use tokio::sync::mpsc::{error::TryRecvError, UnboundedReceiver, UnboundedSender};

use crate::{
    error::{EngineError, Result},
    ids::{AdapterId, RequestId, SeqId},
    lora::{AdapterLease, AdapterSlots},
    messages::{EngineCommand, FaultKind, RequestEvent, Submission},
    output::TokenLogprob,
    runner::ModelRunner,
    sampling::{SampleContext, Sampler, SamplingDevice},
    scheduler::{NewSeq, Scheduler, SchedulerOutput, SchedulerStats},
    supervise::{panic_message, Supervision},
};

/// A snapshot of the engine's state and counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub scheduler: SchedulerStats,
    /// Requests in flight (each may have several samples).
    pub requests: usize,
    /// Forward passes run so far.
    pub steps: u64,
    /// Tokens run through the model (prompt, recomputed and decode tokens).
    pub computed_tokens: u64,
    /// Output tokens produced.
    pub generated_tokens: u64,
    /// LoRA adapters resident in the model's slots.
    pub adapters_resident: usize,
    /// Time spent in each phase of the steps so far, in microseconds: scheduling, the forward
    /// pass (launch only on a GPU, unless step profiling synchronizes after it), and sampling
    /// (on a GPU this includes waiting for the forward pass). A step profile is the difference
    /// of two snapshots divided by the difference of `steps`.
    pub schedule_micros: u64,
    pub forward_micros: u64,
    pub sample_micros: u64,
}

/// One running sample.
struct Active {
    req: RequestId,
    index: usize,
    sampler: Sampler,
    events: UnboundedSender<RequestEvent>,
    /// Keeps the request's adapter loaded until the sample ends.
    _adapter: Option<AdapterLease>,
}

/// A request's samples: `seqs[index]` is sample `index`'s sequence, kept after it ends (it
/// is then gone from `active`), so ending one sample or all of them is O(1) per sample.
struct RequestSeqs {
    seqs: Vec<SeqId>,
    /// Samples still active.
    live: usize,
}

pub(crate) struct EngineCore {
    scheduler: Scheduler,
    runner: ModelRunner,
    adapters: AdapterSlots,
    eos_ids: Arc<[u32]>,
    active: HashMap<SeqId, Active>,
    requests: HashMap<RequestId, RequestSeqs>,
    next_seq: u64,
    stats: EngineStats,
    opts: CoreOptions,
    /// A fault injected for a test, suffered at the next step.
    fault: Option<FaultKind>,
}

/// How the engine thread runs its steps.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CoreOptions {
    pub sampling: SamplingDevice,
    /// Wait for the device after each forward pass, so the step profile splits forward and
    /// sampling time on a GPU (costs the overlap of the two).
    pub profile_sync: bool,
}

impl EngineCore {
    pub fn new(scheduler: Scheduler, runner: ModelRunner, eos_ids: Vec<u32>, opts: CoreOptions) -> Self {
        let eos_ids: Arc<[u32]> = eos_ids.into();
        let adapters = AdapterSlots::new(runner.model().lora_slots());
        Self {
            scheduler,
            runner,
            adapters,
            eos_ids,
            active: HashMap::new(),
            requests: HashMap::new(),
            next_seq: 0,
            stats: EngineStats::default(),
            opts,
            fault: None,
        }
    }

    /// The engine loop; returns on `Shutdown`, a stop request, when every handle is gone, or
    /// when the engine fails. A panic or a failed step is fatal: the state may be
    /// inconsistent, so the reason is recorded in `sup` first (new requests are refused from
    /// then on), every request in flight ends with [`EngineError::EngineFailed`], and the
    /// model and KV cache are dropped with `self` on return.
    pub fn run(mut self, mut rx: UnboundedReceiver<EngineCommand>, sup: &Supervision) {
        let failure = loop {
            match catch_unwind(AssertUnwindSafe(|| self.turn(&mut rx, sup))) {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => break None,
                Ok(Err(e)) => break Some(format!("a step failed: {e}")),
                Err(payload) => break Some(format!("the engine thread panicked: {}", panic_message(&*payload))),
            }
        };
        if let Some(reason) = &failure {
            tracing::error!("engine failed, stopping it: {reason}");
            sup.fail(reason.clone());
        }
        let err = || failure.as_ref().map_or(EngineError::Shutdown, |r| EngineError::EngineFailed(r.clone()));
        // After a panic the bookkeeping may itself be broken: the streams then see their
        // channels close, and report `sup`'s reason.
        let _ = catch_unwind(AssertUnwindSafe(|| self.fail_all(err)));
    }

    /// One turn of the loop: wait for commands while idle, apply every pending one, run a
    /// step. `Ok(false)` stops the loop.
    fn turn(&mut self, rx: &mut UnboundedReceiver<EngineCommand>, sup: &Supervision) -> Result<bool> {
        if sup.stop_requested() {
            return Ok(false);
        }
        if !self.scheduler.has_work() && self.fault.is_none() {
            // Idle: sleep until someone asks for something.
            let Some(cmd) = rx.blocking_recv() else { return Ok(false) };
            if !self.handle(cmd) {
                return Ok(false);
            }
        }
        loop {
            // A stop request overtakes a backlog of commands.
            if sup.stop_requested() {
                return Ok(false);
            }
            match rx.try_recv() {
                Ok(cmd) => {
                    if !self.handle(cmd) {
                        return Ok(false);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(false),
            }
        }
        match self.fault.take() {
            Some(FaultKind::Panic) => panic!("injected fault (FaultKind::Panic)"),
            Some(FaultKind::StepError) => {
                return Err(EngineError::StepFailed("injected fault (FaultKind::StepError)".into()))
            }
            None => {}
        }
        if self.scheduler.has_work() {
            self.step()?;
        }
        Ok(true)
    }

    /// Applies one command; false means stop the loop.
    fn handle(&mut self, cmd: EngineCommand) -> bool {
        match cmd {
            EngineCommand::Submit(s) => self.submit(s),
            EngineCommand::Abort { id, index } => self.abort(id, index),
            EngineCommand::Stats(reply) => {
                let _ = reply.send(self.snapshot());
            }
            EngineCommand::AddAdapter { id, adapter } => self.adapters.add(id, adapter),
            EngineCommand::RemoveAdapter { id } => self.adapters.remove(id),
            EngineCommand::Fault(kind) => self.fault = Some(kind),
            EngineCommand::Shutdown => return false,
        }
        true
    }

    fn snapshot(&self) -> EngineStats {
        EngineStats {
            scheduler: self.scheduler.stats(),
            requests: self.requests.len(),
            adapters_resident: self.adapters.resident(),
            ..self.stats
        }
    }

    fn submit(&mut self, s: Submission) {
        let lease = match s.adapter.map(|a| self.adapters.lease(a)).transpose() {
            Ok(l) => l,
            Err(e) => {
                let _ = s.events.send(RequestEvent::Failed(e));
                return;
            }
        };
        // Shared by every sample: n copies of nothing but the token vectors that grow.
        let eos: Arc<[u32]> = if s.params.ignore_eos() { Arc::new([]) } else { self.eos_ids.clone() };
        let prompt: Arc<[u32]> = s.prompt.into();
        let stop_token_ids = s.params.shared_stop_token_ids();
        let n = s.params.n();
        let mut seqs = Vec::with_capacity(n);
        for index in 0..n {
            let id = SeqId(self.next_seq);
            self.next_seq += 1;
            let spec = NewSeq {
                id,
                prompt: prompt.clone(),
                max_tokens: s.params.max_tokens(),
                min_tokens: s.params.min_tokens(),
                eos_ids: eos.clone(),
                stop_token_ids: stop_token_ids.clone(),
                adapter: s.adapter,
                cache_salt: s.cache_salt.clone(),
                after: seqs.first().copied(),
            };
            if let Err(e) = self.scheduler.add(spec) {
                for &seq in &seqs {
                    self.scheduler.abort(seq);
                    self.active.remove(&seq);
                }
                let _ = s.events.send(RequestEvent::Failed(e.into()));
                return;
            }
            let sampler = Sampler::for_sample(s.params.clone(), index);
            let active = Active { req: s.id, index, sampler, events: s.events.clone(), _adapter: lease.clone() };
            self.active.insert(id, active);
            seqs.push(id);
        }
        self.requests.insert(s.id, RequestSeqs { live: seqs.len(), seqs });
    }

    fn abort(&mut self, id: RequestId, index: Option<usize>) {
        let Some(req) = self.requests.get(&id) else { return };
        match index {
            Some(i) => {
                if let Some(&seq) = req.seqs.get(i) {
                    self.finish_seq(seq);
                }
            }
            None => {
                for seq in req.seqs.clone() {
                    self.finish_seq(seq);
                }
            }
        }
    }

    /// Forgets a sample (its blocks are freed by the scheduler); nothing if it already ended.
    fn finish_seq(&mut self, seq: SeqId) {
        self.scheduler.abort(seq);
        if let Some(a) = self.active.remove(&seq) {
            if let Some(req) = self.requests.get_mut(&a.req) {
                req.live -= 1;
                if req.live == 0 {
                    self.requests.remove(&a.req);
                }
            }
        }
    }

    fn fail_all(&mut self, err: impl Fn() -> EngineError) {
        for (_, req) in std::mem::take(&mut self.requests) {
            if let Some(a) = req.seqs.iter().find_map(|s| self.active.get(s)) {
                let _ = a.events.send(RequestEvent::Failed(err()));
            }
            for seq in req.seqs {
                self.scheduler.abort(seq);
                self.active.remove(&seq);
            }
        }
    }

    /// Sends an event; a closed channel means the client is gone, so the sample is dropped.
    fn emit(&mut self, seq: SeqId, event: impl FnOnce(usize) -> RequestEvent) {
        let Some(a) = self.active.get(&seq) else { return };
        if a.events.send(event(a.index)).is_err() {
            self.finish_seq(seq);
        }
    }

    /// One iteration: schedule, one forward pass, sample, update, emit.
    fn step(&mut self) -> Result<()> {
        let t0 = Instant::now();
        let out = self.scheduler.schedule();
        self.stats.schedule_micros += t0.elapsed().as_micros() as u64;
        for &(seq, cached_tokens) in &out.started {
            self.emit(seq, |index| RequestEvent::Started { index, cached_tokens });
        }
        for (seq, finish) in &out.finished {
            let finish = finish.clone();
            self.emit(seq.to_owned(), |index| RequestEvent::Finished { index, finish });
            self.finish_seq(*seq);
        }
        if out.seqs.is_empty() {
            // Nothing could run this step (e.g. only preemptions happened): try again soon
            // rather than spinning.
            std::thread::sleep(std::time::Duration::from_millis(1));
            return Ok(());
        }
        let sampled = self.run_and_sample(&out)?;
        self.apply(&out, sampled);
        Ok(())
    }

    /// Runs the model and samples one token per sampling row: rows whose sampler can run on
    /// the device go through one `sample_rows` call there (only ids come back); the others
    /// (logprobs, or host sampling) are copied to the host and use their [`Sampler`].
    fn run_and_sample(&mut self, out: &SchedulerOutput) -> Result<Vec<(SeqId, u32, Option<TokenLogprob>)>> {
        let t0 = Instant::now();
        // Unloaded adapters whose last request ended leave their slots first.
        self.adapters.collect();
        let mut needed: Vec<AdapterId> = out.seqs.iter().filter_map(|s| s.adapter).collect();
        needed.dedup();
        let slots = if needed.is_empty() { HashMap::new() } else { self.adapters.prepare(&needed, self.runner.model())? };
        let logits = self.runner.execute(out, &slots)?;
        if self.opts.profile_sync {
            self.runner.synchronize()?;
        }
        let t1 = Instant::now();
        self.stats.steps += 1;
        self.stats.computed_tokens += out.total_tokens as u64;
        self.stats.forward_micros += (t1 - t0).as_micros() as u64;

        let vocab = self.runner.config().vocab_size;
        let on_device = self.opts.sampling.on_device(self.runner.on_gpu());
        // Each sampling sequence still active goes to the device call (its row, its sequence,
        // and its parameters pushed in the same order) or to the host.
        let mut dev_rows: Vec<(usize, SeqId)> = Vec::new();
        let (mut params, mut adjust) = (Vec::new(), Vec::new());
        let mut host_rows: Vec<(usize, SeqId)> = Vec::new();
        for (row, s) in out.seqs.iter().filter(|s| s.samples).enumerate() {
            let (Some(active), Some((prompt, output))) = (self.active.get_mut(&s.id), self.scheduler.tokens(s.id))
            else {
                continue;
            };
            if on_device && active.sampler.device_capable() {
                let ctx = SampleContext { prompt, output, eos_ids: &self.eos_ids };
                params.push(active.sampler.device_row(&ctx, dev_rows.len() as u32, vocab, &mut adjust));
                dev_rows.push((row, s.id));
            } else {
                host_rows.push((row, s.id));
            }
        }
        // (row, sequence, token, logprob), put back in row order below so the scheduler sees
        // the same order whichever path each row took.
        let mut sampled = Vec::with_capacity(dev_rows.len() + host_rows.len());
        if !dev_rows.is_empty() {
            let rows: Vec<usize> = dev_rows.iter().map(|&(r, _)| r).collect();
            let ids = logits.sample_on_device(&rows, &params, &adjust)?;
            sampled.extend(dev_rows.iter().zip(ids).map(|(&(row, seq), id)| (row, seq, id, None)));
        }
        if !host_rows.is_empty() {
            let rows: Vec<usize> = host_rows.iter().map(|&(r, _)| r).collect();
            let mut host = logits.to_host(&rows)?;
            for (i, &(row, seq)) in host_rows.iter().enumerate() {
                let (Some(active), Some((prompt, output))) = (self.active.get_mut(&seq), self.scheduler.tokens(seq))
                else {
                    continue;
                };
                let ctx = SampleContext { prompt, output, eos_ids: &self.eos_ids };
                let tok = active.sampler.sample(host.row_mut(i), &ctx);
                let wants_logprobs = active.sampler.params().logprobs().is_some();
                let lp = wants_logprobs.then_some(TokenLogprob { token: tok.id, logprob: tok.logprob, top: tok.top_logprobs });
                sampled.push((row, seq, tok.id, lp));
            }
        }
        self.stats.sample_micros += t1.elapsed().as_micros() as u64;
        sampled.sort_unstable_by_key(|&(row, ..)| row);
        Ok(sampled.into_iter().map(|(_, seq, id, lp)| (seq, id, lp)).collect())
    }

    fn apply(&mut self, out: &SchedulerOutput, sampled: Vec<(SeqId, u32, Option<TokenLogprob>)>) {
        let ids: Vec<(SeqId, u32)> = sampled.iter().map(|&(s, t, _)| (s, t)).collect();
        let steps = self.scheduler.update(out, &ids);
        let mut lps: HashMap<SeqId, TokenLogprob> =
            sampled.into_iter().filter_map(|(s, _, lp)| lp.map(|lp| (s, lp))).collect();
        for st in steps {
            if st.emitted {
                self.stats.generated_tokens += 1;
                let logprob = lps.remove(&st.id);
                self.emit(st.id, |index| RequestEvent::Token { index, token: st.token, logprob });
            }
            if let Some(finish) = st.finish {
                self.emit(st.id, |index| RequestEvent::Finished { index, finish });
                self.finish_seq(st.id);
            }
        }
    }
}
