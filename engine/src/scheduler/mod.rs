//! [`Scheduler`]: decides, each step, which tokens of which sequences run.
//!
//! Tokens, not phases: every sequence has `num_computed` tokens with K/V in the cache catching up
//! with its known tokens (prompt + output). A step spends a token budget
//! (`max_num_batched_tokens`) first on running sequences (decodes, and prompt chunks already
//! under way), then admits waiting sequences first come, first served, chunking long prompts.
//! When KV blocks run out, the most recently admitted running sequence is preempted: its blocks
//! are freed and it goes back to the front of the queue, to be recomputed from its tokens (which
//! the prefix cache often still holds). Pure bookkeeping: no tensors, unit-tested without a model.
//! The queue and the running set are [`lane::Lane`]s, so a sequence leaves either in O(1).

mod admit;
mod lane;
mod request;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

pub use admit::{check_admission, AdmitError, AdmitLimits};
pub use request::{Finish, FinishReason, NewSeq, StopReason};
use lane::Lane;
use request::Seq;

use crate::{
    ids::{AdapterId, SeqId},
    kv::{KvManager, PrefixCacheStats},
};

/// The scheduler's limits.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Tokens per step, over all sequences.
    pub max_num_batched_tokens: usize,
    /// Prompt + output tokens of one sequence.
    pub max_model_len: usize,
    pub block_size: usize,
    /// KV blocks in the cache, the null block included.
    pub num_blocks: usize,
    pub prefix_caching: bool,
    /// Distinct LoRA adapters among running sequences (the model's LoRA slots).
    pub max_loras: usize,
}

/// One sequence's share of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub id: SeqId,
    /// Tokens already in the cache; the new tokens follow them.
    pub num_computed: usize,
    pub new_tokens: Vec<u32>,
    /// Block ids covering `num_computed + new_tokens.len()` tokens.
    pub block_table: Vec<u32>,
    /// The step reaches this sequence's last known token, so its logits are sampled.
    pub samples: bool,
    pub adapter: Option<AdapterId>,
}

/// The plan of one step.
#[derive(Clone, Debug, Default)]
pub struct SchedulerOutput {
    pub seqs: Vec<ScheduledSeq>,
    pub total_tokens: usize,
    /// Sequences that lost their KV blocks this step (they will be recomputed).
    pub preempted: Vec<SeqId>,
    /// Sequences started for the first time, with the prompt tokens found in the prefix cache.
    pub started: Vec<(SeqId, usize)>,
    /// Sequences ended by the scheduler itself (alone, they outgrew the whole cache).
    pub finished: Vec<(SeqId, Finish)>,
}

/// What happened to a sequence that sampled a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeqStep {
    pub id: SeqId,
    pub token: u32,
    /// The token is part of the output (false for a stop token or end-of-sequence).
    pub emitted: bool,
    pub finish: Option<Finish>,
}

/// Counters for `EngineHandle::stats` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub usable_blocks: usize,
    pub free_blocks: usize,
    pub cached_blocks: usize,
    pub prefix_cache: PrefixCacheStats,
    pub preemptions: u64,
}

pub struct Scheduler {
    cfg: SchedulerConfig,
    kv: KvManager,
    seqs: HashMap<SeqId, Seq>,
    waiting: Lane,
    /// Admission order: the last one is preempted first.
    running: Lane,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        assert!(cfg.max_num_seqs > 0 && cfg.max_num_batched_tokens > 0, "scheduler limits must be > 0");
        let kv = KvManager::new(cfg.num_blocks, cfg.block_size, cfg.prefix_caching);
        Self { cfg, kv, seqs: HashMap::new(), waiting: Lane::default(), running: Lane::default(), preemptions: 0 }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The limits every sequence is admitted against ([`check_admission`]).
    pub fn admit_limits(&self) -> AdmitLimits {
        AdmitLimits {
            max_model_len: self.cfg.max_model_len,
            block_size: self.cfg.block_size,
            usable_blocks: self.kv.pool().num_usable(),
        }
    }

    /// Checks that a sequence could ever run, without queueing it.
    pub fn check(&self, prompt_len: usize, max_tokens: usize) -> Result<(), AdmitError> {
        check_admission(self.admit_limits(), prompt_len, max_tokens)
    }

    /// Queues a sequence (refused, changing nothing, if it could never run).
    pub fn add(&mut self, spec: NewSeq) -> Result<(), AdmitError> {
        self.check(spec.prompt.len(), spec.max_tokens)?;
        let id = spec.id;
        let seq = Seq::new(spec);
        self.waiting.push_back((id, seq.epoch));
        self.seqs.insert(id, seq);
        Ok(())
    }

    /// Removes a sequence wherever it is, in O(1) amortized; its blocks are free on return.
    pub fn abort(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else { return false };
        if seq.running {
            self.running.forget();
            self.running.tidy(&self.seqs);
        } else {
            self.waiting.forget();
            self.waiting.tidy(&self.seqs);
        }
        self.kv.free(id);
        true
    }

    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// A sequence's prompt followed by its output so far.
    pub fn tokens(&self, id: SeqId) -> Option<(&[u32], &[u32])> {
        self.seqs.get(&id).map(|s| s.tokens.split_at(s.prompt_len))
    }

    pub fn stats(&self) -> SchedulerStats {
        let pool = self.kv.pool();
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            usable_blocks: pool.num_usable(),
            free_blocks: pool.num_free(),
            cached_blocks: pool.num_cached(),
            prefix_cache: self.kv.stats(),
            preemptions: self.preemptions,
        }
    }

    /// Plans one step.
    pub fn schedule(&mut self) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = self.cfg.max_num_batched_tokens;

        // Running sequences first, oldest first.
        let mut i = 0;
        while i < self.running.raw_len() && budget > 0 {
            let entry = self.running.raw(i);
            if !lane::is_live(&self.seqs, entry) {
                i += 1;
                continue;
            }
            let id = entry.0;
            let seq = &self.seqs[&id];
            let n = (seq.tokens.len() - seq.num_computed).min(budget);
            let target = seq.num_computed + n;
            let mut fits = true;
            while !self.kv.allocate(id, None, target) {
                if self.running.len() == 1 {
                    // Alone and still short: this sequence has outgrown the whole cache.
                    // (The scan stops here, so `abort` may tidy the lane under it.)
                    self.abort(id);
                    out.finished.push((id, Finish::length()));
                    fits = false;
                    break;
                }
                let victim = self.running.last_live(&self.seqs).expect("running is not empty");
                self.preempt(victim);
                out.preempted.push(victim);
                if victim == id {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            out.seqs.push(self.scheduled(id, n));
            budget -= n;
            i += 1;
        }

        // Then waiting sequences, first come first served; none while memory is short.
        if out.preempted.is_empty() && out.finished.is_empty() {
            // Adapters already running; a sequence needing one more than the slots hold waits
            // (later sequences with resident adapters may go first).
            let mut adapters: Vec<AdapterId> = Vec::new();
            for id in self.running.iter_live(&self.seqs) {
                if let Some(a) = self.seqs[&id].spec.adapter.filter(|a| !adapters.contains(a)) {
                    adapters.push(a);
                }
            }
            let mut w = 0;
            while w < self.waiting.raw_len() && budget > 0 && self.running.len() < self.cfg.max_num_seqs {
                let entry = self.waiting.raw(w);
                if !lane::is_live(&self.seqs, entry) {
                    w += 1;
                    continue;
                }
                let id = entry.0;
                if self.blocked_on_sibling(id) {
                    w += 1;
                    continue;
                }
                let seq = &self.seqs[&id];
                let new_adapter = seq.spec.adapter.filter(|a| !adapters.contains(a));
                if new_adapter.is_some() && adapters.len() >= self.cfg.max_loras {
                    w += 1;
                    continue;
                }
                let prefix = self.kv.find_cached_prefix(&seq.tokens, seq.spec.adapter, seq.spec.cache_salt.as_deref());
                let cached = prefix.num_tokens();
                let n = (seq.tokens.len() - cached).min(budget);
                let (first_start, prompt_len) = (!seq.started, seq.prompt_len);
                if !self.kv.allocate(id, Some(prefix), cached + n) {
                    break; // FCFS: later requests do not overtake the head of the queue
                }
                if first_start {
                    self.kv.record_lookup(prompt_len, cached);
                    out.started.push((id, cached));
                }
                let seq = self.seqs.get_mut(&id).expect("waiting sequences exist");
                seq.num_computed = cached;
                seq.started = true;
                // Its waiting entry becomes a tombstone.
                seq.running = true;
                seq.epoch += 1;
                self.waiting.forget();
                self.running.push_back((id, seq.epoch));
                w += 1;
                adapters.extend(new_adapter);
                out.seqs.push(self.scheduled(id, n));
                budget -= n;
            }
        }
        self.waiting.tidy(&self.seqs);
        self.running.tidy(&self.seqs);
        out.total_tokens = self.cfg.max_num_batched_tokens - budget;
        out
    }

    /// Applies a step's results: the scheduled tokens are now computed, and each sampling
    /// sequence got `sampled` token. Finished sequences are removed and their blocks freed.
    pub fn update(&mut self, out: &SchedulerOutput, sampled: &[(SeqId, u32)]) -> Vec<SeqStep> {
        for s in &out.seqs {
            if let Some(seq) = self.seqs.get_mut(&s.id) {
                seq.num_computed = (s.num_computed + s.new_tokens.len()).min(seq.tokens.len());
                let (adapter, salt) = (seq.spec.adapter, seq.spec.cache_salt.as_deref());
                self.kv.cache_computed(s.id, &seq.tokens, seq.num_computed, adapter, salt);
            }
        }
        let mut steps = Vec::with_capacity(sampled.len());
        for &(id, token) in sampled {
            let Some(seq) = self.seqs.get_mut(&id) else { continue };
            let (emitted, finish) = seq.accept(token, self.cfg.max_model_len);
            if finish.is_some() {
                self.abort(id);
            }
            steps.push(SeqStep { id, token, emitted, finish });
        }
        steps
    }

    fn scheduled(&self, id: SeqId, n: usize) -> ScheduledSeq {
        let seq = &self.seqs[&id];
        let end = seq.num_computed + n;
        ScheduledSeq {
            id,
            num_computed: seq.num_computed,
            new_tokens: seq.tokens[seq.num_computed..end].to_vec(),
            block_table: self.kv.block_table(id).iter().map(|b| b.0).collect(),
            samples: end == seq.tokens.len(),
            adapter: seq.spec.adapter,
        }
    }

    /// Sends a running sequence back to the front of the queue, its blocks freed.
    fn preempt(&mut self, id: SeqId) {
        self.kv.free(id);
        let Some(seq) = self.seqs.get_mut(&id) else { return };
        seq.num_computed = 0;
        seq.running = false;
        seq.epoch += 1;
        self.running.forget();
        self.waiting.push_front((id, seq.epoch));
        self.preemptions += 1;
        // No tidying here: `schedule` is scanning `running` by index (its tombstone at the
        // tail goes with the next `last_live` or the end of the step).
    }

    /// A parallel sample waits until its first sibling has computed the shared prompt.
    fn blocked_on_sibling(&self, id: SeqId) -> bool {
        let Some(after) = self.seqs[&id].spec.after else { return false };
        if !self.cfg.prefix_caching {
            return false;
        }
        self.seqs.get(&after).is_some_and(|first| first.num_computed < first.prompt_len)
    }
}
