//! LoRA supervised fine-tuning: [`train`] fits a [`TrainableModel`]'s adapters to
//! token-level examples with AdamW and hands back the model, which the caller saves with
//! [`TrainableModel::save_peft`] and serves like any PEFT adapter.
//!
//! The data is plain: the server turns chat transcripts into [`TrainExample`]s (token ids
//! plus a loss weight per token, 1 on the assistant's tokens) and follows progress through
//! [`TrainHooks`]. Everything here is deterministic for a given [`TrainConfig::seed`] on the
//! CPU: the adapter initialisation, the per-epoch shuffles and therefore every loss.

mod run;

use std::time::Duration;

pub use flint_models::train::{LoraSpec, SplitMix64, TrainableModel};
use flint_models::{ModelError, TargetModule};
pub use run::train;

/// One training sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainExample {
    pub ids: Vec<u32>,
    /// `weights[t]` is the loss weight of predicting `ids[t]` from `ids[..t]`: 0 for prompt,
    /// system and user tokens, 1 for the assistant's. `weights[0]` is ignored (nothing
    /// predicts the first token). Same length as `ids`.
    pub weights: Vec<f32>,
}

/// How the learning rate decays after the warmup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LrSchedule {
    /// Linearly towards 0 at the end of training.
    #[default]
    Linear,
    /// Half a cosine towards 0 at the end of training.
    Cosine,
}

/// The settings of one fine-tuning run. [`TrainConfig::validate`] checks them.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Passes over the training set (1..=100).
    pub epochs: usize,
    /// Examples per optimizer step (1..=256); the last step of an epoch may have fewer.
    pub batch_size: usize,
    /// Peak learning rate, reached after the warmup ((0, 1]).
    pub learning_rate: f64,
    /// Steps of linear warmup from ~0 to `learning_rate`.
    pub warmup_steps: usize,
    pub schedule: LrSchedule,
    /// AdamW's decoupled weight decay ([0, 1]).
    pub weight_decay: f64,
    /// Longer examples are truncated to this many tokens (>= 2; the model's
    /// max_position_embeddings caps it too).
    pub max_seq_len: usize,
    /// Seeds the adapter initialisation and the epoch shuffles.
    pub seed: u64,
    pub lora: LoraSpec,
    /// Examples per forward pass (1..=batch_size). `batch_size` is reached by accumulating
    /// gradients over micro-batches, so this bounds activation memory without changing the
    /// math.
    pub micro_batch_size: usize,
}

impl Default for TrainConfig {
    /// Common LoRA SFT settings: rank 8, alpha 16 on every projection, lr 2e-4.
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 8,
            learning_rate: 2e-4,
            warmup_steps: 0,
            schedule: LrSchedule::Linear,
            weight_decay: 0.0,
            max_seq_len: 2048,
            seed: 0,
            lora: LoraSpec { rank: 8, alpha: 16.0, targets: TargetModule::ALL.into_iter().collect() },
            micro_batch_size: 4,
        }
    }
}

impl TrainConfig {
    /// Checks every range; the error names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &'static str, reason: String| Err(TrainError::InvalidConfig { field, reason });
        if !(1..=100).contains(&self.epochs) {
            return bad("epochs", format!("{} must be between 1 and 100", self.epochs));
        }
        if !(1..=256).contains(&self.batch_size) {
            return bad("batch_size", format!("{} must be between 1 and 256", self.batch_size));
        }
        if self.micro_batch_size == 0 || self.micro_batch_size > self.batch_size {
            return bad("micro_batch_size", format!("{} must be between 1 and batch_size ({})", self.micro_batch_size, self.batch_size));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning_rate", format!("{} must be in (0, 1]", self.learning_rate));
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return bad("weight_decay", format!("{} must be in [0, 1]", self.weight_decay));
        }
        if self.max_seq_len < 2 {
            return bad("max_seq_len", format!("{} must be at least 2 (a token and its successor)", self.max_seq_len));
        }
        self.lora.check().or_else(|(field, reason)| bad(field, reason))
    }

    /// The learning rate of optimizer step `step` (0-based) of `total`: linear warmup over
    /// `warmup_steps` (step k uses (k+1)/warmup of the peak, so no step is wasted at 0), then
    /// the schedule's decay from the peak towards 0, reached just after the last step.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let peak = self.learning_rate;
        if step < self.warmup_steps {
            return peak * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        match self.schedule {
            LrSchedule::Linear => peak * (1.0 - progress),
            LrSchedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Progress after one optimizer step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepMetrics {
    /// Steps done, from 1.
    pub step: usize,
    pub total_steps: usize,
    /// The epoch this step belongs to, from 1.
    pub epoch: usize,
    /// Σ weight·cross-entropy / Σ weight over this step's batch.
    pub loss: f64,
    /// The learning rate this step used.
    pub learning_rate: f64,
    /// Trained tokens so far: the non-padding input tokens of every example stepped on
    /// (after truncation), counted again each epoch.
    pub tokens: usize,
    /// `tokens` over the time spent in training steps (not in `before_step`, validation or
    /// checkpoints).
    pub tokens_per_s: f64,
    /// Wall time since training started.
    pub elapsed: Duration,
}

/// Why the caller's checkpoint hook failed (its own error type, kept as the source).
pub type CheckpointError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How the caller follows and steers a run. Called on the training thread.
pub trait TrainHooks {
    fn on_step(&mut self, m: &StepMetrics);
    /// Mean weighted loss over the validation set after `step`.
    fn on_validation(&mut self, step: usize, loss: f64);
    /// At the end of every epoch but the last, with the adapters as they are; an error stops
    /// the run with [`TrainError::Checkpoint`].
    fn on_checkpoint(&mut self, step: usize, model: &TrainableModel) -> Result<(), CheckpointError> {
        let _ = (step, model);
        Ok(())
    }
    /// Polled before every optimizer step and between micro-batches; `true` ends the run
    /// with `cancelled` set and the adapters of the last completed step.
    fn cancelled(&self) -> bool;
    /// Before every optimizer step: the server uses it to yield the device to serving.
    fn before_step(&mut self) {}
}

/// Hooks that ignore everything and never cancel.
pub struct NoHooks;

impl TrainHooks for NoHooks {
    fn on_step(&mut self, _: &StepMetrics) {}
    fn on_validation(&mut self, _: usize, _: f64) {}
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a run produced.
pub struct TrainOutcome {
    /// The trained adapters (on their base model); save with [`TrainableModel::save_peft`].
    pub model: TrainableModel,
    /// Optimizer steps taken.
    pub steps: usize,
    /// The loss of the last step (NaN when no step was taken).
    pub final_loss: f64,
    /// The last validation loss, when a validation set was given and evaluated.
    pub validation_loss: Option<f64>,
    pub trained_tokens: usize,
    pub cancelled: bool,
}

/// Everything that can stop a fine-tuning run; messages name the field or example at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid fine-tuning setting `{field}`: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("the {split} dataset is empty")]
    EmptyDataset { split: &'static str },
    #[error("{split} example {index}: {reason}")]
    InvalidExample { split: &'static str, index: usize, reason: String },
    #[error("training diverged at step {step}: the loss is {loss}")]
    Diverged { step: usize, loss: f64 },
    #[error("checkpoint after step {step} failed: {source}")]
    Checkpoint {
        step: usize,
        #[source]
        source: CheckpointError,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("training step failed: {0}")]
    Candle(#[from] candle_core::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let field = |f: &dyn Fn(&mut TrainConfig)| {
            let mut c = TrainConfig::default();
            f(&mut c);
            match c.validate() {
                Err(TrainError::InvalidConfig { field, .. }) => field,
                other => panic!("expected InvalidConfig, got {other:?}"),
            }
        };
        assert!(TrainConfig::default().validate().is_ok());
        assert_eq!(field(&|c| c.epochs = 0), "epochs");
        assert_eq!(field(&|c| c.epochs = 101), "epochs");
        assert_eq!(field(&|c| c.batch_size = 257), "batch_size");
        assert_eq!(field(&|c| c.micro_batch_size = 9), "micro_batch_size");
        assert_eq!(field(&|c| c.learning_rate = 0.0), "learning_rate");
        assert_eq!(field(&|c| c.learning_rate = f64::NAN), "learning_rate");
        assert_eq!(field(&|c| c.weight_decay = -0.1), "weight_decay");
        assert_eq!(field(&|c| c.max_seq_len = 1), "max_seq_len");
        assert_eq!(field(&|c| c.lora.rank = 0), "lora.rank");
        assert_eq!(field(&|c| c.lora.rank = 257), "lora.rank");
        assert_eq!(field(&|c| c.lora.alpha = 0.0), "lora.alpha");
        assert_eq!(field(&|c| c.lora.targets.clear()), "lora.targets");
    }

    /// The server runs training on a worker thread and hands the result back.
    #[test]
    fn results_cross_threads() {
        fn send<T: Send>() {}
        send::<TrainOutcome>();
        send::<TrainError>();
        send::<TrainConfig>();
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let c = TrainConfig { learning_rate: 1.0, warmup_steps: 2, ..TrainConfig::default() };
        let lrs: Vec<f64> = (0..6).map(|s| c.learning_rate_at(s, 6)).collect();
        assert_eq!(lrs, [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]);
        let c = TrainConfig { schedule: LrSchedule::Cosine, ..c };
        let lrs: Vec<f64> = (0..6).map(|s| c.learning_rate_at(s, 6)).collect();
        assert_eq!(&lrs[..3], [0.5, 1.0, 1.0]);
        assert!((lrs[4] - 0.5).abs() < 1e-12 && lrs[5] > 0.0 && lrs[5] < lrs[4]);
        // Warmup longer than the run: never reaches the peak, never panics.
        let c = TrainConfig { learning_rate: 1.0, warmup_steps: 10, ..TrainConfig::default() };
        assert_eq!(c.learning_rate_at(2, 3), 0.3);
    }
}
