//! [`Supervision`]: what the engine thread and its handles share about the thread's life: a
//! stop request, the reason it failed (a panic or a failed step), and whether it has exited
//! (its model and KV cache freed).

use std::{
    any::Any,
    sync::{
        atomic::{AtomicBool, Ordering},
        Condvar, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use crate::error::EngineError;

#[derive(Debug, Default)]
pub(crate) struct Supervision {
    stop: AtomicBool,
    failure: OnceLock<String>,
    exited: Mutex<bool>,
    exited_cv: Condvar,
}

impl Supervision {
    /// Asks the engine thread to stop at its next step boundary.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Records why the engine failed; the first reason wins.
    pub fn fail(&self, reason: String) {
        let _ = self.failure.set(reason);
    }

    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// The error for a request that cannot reach the engine: why it failed, or that it stopped.
    pub fn gone(&self) -> EngineError {
        match self.failure() {
            Some(reason) => EngineError::EngineFailed(reason.to_owned()),
            None => EngineError::Shutdown,
        }
    }

    /// The error for a request the engine will not take: [`Self::gone`] once it has failed or
    /// was asked to stop, `None` while it runs.
    pub fn refusal(&self) -> Option<EngineError> {
        (self.failure().is_some() || self.stop_requested()).then(|| self.gone())
    }

    /// Called once the engine thread's state (model, KV cache) has been dropped.
    pub fn mark_exited(&self) {
        let mut exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        *exited = true;
        self.exited_cv.notify_all();
    }

    /// Waits up to `timeout` for the engine thread to exit; true once it has.
    pub fn wait_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        while !*exited {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            exited = match self.exited_cv.wait_timeout(exited, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// Marks the thread exited when dropped, so a panic that escapes everything still says so.
pub(crate) struct ExitGuard(pub std::sync::Arc<Supervision>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.mark_exited();
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{EngineError, EngineHandle, FaultKind, SamplingParams};

    fn engine() -> (tempfile::TempDir, EngineHandle) {
        crate::engine_tests::tiny_engine(|_| {})
    }

    fn long() -> SamplingParams {
        SamplingParams::new(8000).expect("valid").with_ignore_eos(true)
    }

    const WAIT: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_panic_fails_the_requests_in_flight_and_every_later_one() {
        let (_dir, h) = engine();
        assert_eq!(h.failure(), None);
        let mut stream = h.generate(vec![5, 6, 7], long()).expect("accepted");
        stream.next().await.expect("a delta").expect("runs");
        h.inject_fault(FaultKind::Panic);
        let err = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the request finished despite the panic"),
            }
        };
        assert!(matches!(&err, EngineError::EngineFailed(r) if r.contains("panicked")), "{err}");
        assert!(h.failure().expect("a reason").contains("injected fault"));
        assert!(matches!(h.generate(vec![5], long()), Err(EngineError::EngineFailed(_))));
        assert!(matches!(h.stats().await, Err(EngineError::EngineFailed(_))));
        assert!(h.join_timeout(WAIT), "the thread exits");
    }

    #[tokio::test]
    async fn a_failed_step_stops_an_idle_engine_and_says_why() {
        let (_dir, h) = engine();
        h.inject_fault(FaultKind::StepError);
        assert!(h.join_timeout(WAIT), "the thread exits");
        assert!(h.failure().expect("a reason").contains("a step failed"));
        let err = h.generate(vec![5], long()).err().expect("refused");
        assert!(matches!(err, EngineError::EngineFailed(_)), "{err}");
    }

    #[tokio::test]
    async fn stop_ends_a_long_request_while_clones_and_streams_live() {
        let (_dir, h) = engine();
        let clone = h.clone();
        let mut stream = h.generate(vec![5, 6, 7], long()).expect("accepted");
        stream.next().await.expect("a delta").expect("runs");
        h.stop();
        h.stop(); // idempotent
        let mut tokens = 0;
        let err = loop {
            match stream.next().await {
                Some(Ok(d)) => tokens += d.token_ids.len(),
                Some(Err(e)) => break e,
                None => panic!("the request finished despite the stop"),
            }
        };
        assert!(matches!(err, EngineError::Shutdown), "{err}");
        assert!(tokens < 7000, "stopped early, not after {tokens} tokens");
        assert!(clone.join_timeout(WAIT), "the thread exits with a clone and a stream alive");
        assert_eq!(clone.failure(), None, "a stop is not a failure");
        assert!(matches!(clone.generate(vec![5], long()), Err(EngineError::Shutdown)));
    }
}
