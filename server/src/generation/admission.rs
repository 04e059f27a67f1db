//! [`Admission`]: how many sequences the server holds at once, over every model.
//!
//! A request costs one unit per sequence it asks the engine for (prompts × `n`), not one per
//! HTTP request: a single completions call with 5,000 prompts and `n: 16` is 80,000 sequences,
//! and must be refused before anything is queued. The limit is `--max-num-seqs` (what the
//! engine runs at once) + `--max-waiting-requests` (what may wait for it), so the engines'
//! waiting queues are bounded too.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use super::{GenError, Result};
use crate::registry::Served;

/// The server-wide sequence budget.
#[derive(Debug)]
pub struct Admission {
    limit: usize,
    in_flight: AtomicUsize,
}

/// What a request asks for, to name the right field when it alone is too big.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub prompts: usize,
    pub n: usize,
}

impl Cost {
    pub fn one(n: usize) -> Self {
        Self { prompts: 1, n }
    }

    pub fn sequences(self) -> usize {
        self.prompts.saturating_mul(self.n)
    }
}

impl Admission {
    /// `limit`: sequences in flight at once (at least 1).
    pub fn new(limit: usize) -> Self {
        Self { limit: limit.max(1), in_flight: AtomicUsize::new(0) }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Sequences admitted now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes `cost` sequences for a request to `served`: 400 naming `n` or `prompt` when the
    /// request alone could never fit, [`GenError::Busy`] (429) when it does not fit now.
    /// While the permit lives the model counts the request as running (an unload waits for
    /// it, the idle clock stands still).
    pub fn admit(self: &Arc<Self>, served: &Arc<Served>, cost: Cost) -> Result<Permit> {
        let seqs = cost.sequences();
        if seqs > self.limit {
            let param = if cost.prompts <= 1 || cost.n > self.limit { "n" } else { "prompt" };
            return Err(GenError::invalid(
                param,
                format!(
                    "this request asks for {seqs} sequences ({} prompt(s) x n = {}), more than the {} this server \
                     holds at once (--max-num-seqs + --max-waiting-requests)",
                    cost.prompts, cost.n, self.limit
                ),
            ));
        }
        let mut cur = self.in_flight.load(Ordering::Acquire);
        loop {
            if cur + seqs > self.limit {
                return Err(GenError::Busy { limit: self.limit });
            }
            match self.in_flight.compare_exchange_weak(cur, cur + seqs, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        served.begin_request();
        Ok(Permit { admission: self.clone(), served: served.clone(), seqs })
    }
}

/// One admitted request; dropping it (response written, or client gone) frees its sequences.
pub struct Permit {
    admission: Arc<Admission>,
    served: Arc<Served>,
    seqs: usize,
}

impl Permit {
    pub fn served(&self) -> &Arc<Served> {
        &self.served
    }

    pub fn sequences(&self) -> usize {
        self.seqs
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.served.end_request();
        self.admission.in_flight.fetch_sub(self.seqs, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("model", &self.served.name).field("seqs", &self.seqs).finish()
    }
}
