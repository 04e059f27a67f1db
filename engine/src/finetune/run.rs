//! The training loop: data checks, seeded shuffles, micro-batches with gradient
//! accumulation, AdamW with the scheduled learning rate, validation and hooks.

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::{backprop::GradStore, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use flint_models::ModelConfig;

use super::{SplitMix64, StepMetrics, TrainConfig, TrainError, TrainExample, TrainHooks, TrainOutcome, TrainableModel};

/// Mixed into the seed for the shuffles, so they do not replay the stream that initialised
/// the adapters.
const SHUFFLE_SALT: u64 = 0x5348_5546_464C_4521;

/// An example after truncation: how many of its tokens are used, and their total weight.
struct Prepared<'a> {
    ex: &'a TrainExample,
    len: usize,
    weight: f64,
}

/// Checks `examples` against the model and truncates them to `max_len`. Errors name the
/// example: every one must have matching ids/weights, in-vocabulary ids, finite
/// non-negative weights, and at least one weighted token left after truncation (an example
/// that teaches nothing is almost always a formatting mistake upstream).
fn prepare<'a>(split: &'static str, examples: &'a [TrainExample], max_len: usize, vocab: usize) -> Result<Vec<Prepared<'a>>, TrainError> {
    if examples.is_empty() {
        return Err(TrainError::EmptyDataset { split });
    }
    examples
        .iter()
        .enumerate()
        .map(|(index, ex)| {
            let bad = |reason: String| TrainError::InvalidExample { split, index, reason };
            if ex.ids.len() != ex.weights.len() {
                return Err(bad(format!("{} token ids but {} weights", ex.ids.len(), ex.weights.len())));
            }
            if ex.ids.len() < 2 {
                return Err(bad(format!("{} tokens; at least 2 are needed to predict one", ex.ids.len())));
            }
            if let Some(&id) = ex.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(bad(format!("token id {id} is outside the vocabulary ({vocab} tokens)")));
            }
            if let Some(w) = ex.weights.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
                return Err(bad(format!("loss weight {w} must be finite and >= 0")));
            }
            let len = ex.ids.len().min(max_len);
            let weight: f64 = ex.weights[1..len].iter().map(|&w| w as f64).sum();
            if weight <= 0.0 {
                return Err(bad(format!("no token has a positive loss weight within the first {len} tokens (max_seq_len)")));
            }
            Ok(Prepared { ex, len, weight })
        })
        .collect()
}

/// One right-padded micro-batch as the model takes it.
struct MicroBatch {
    ids: Tensor,
    mask: Tensor,
    /// Flattened `b·T + t` positions whose next token carries weight, the token, the weight.
    rows: Tensor,
    targets: Tensor,
    weights: Tensor,
    tokens: usize,
}

fn micro_batch(examples: &[&Prepared], device: &Device) -> candle_core::Result<MicroBatch> {
    let t = examples.iter().map(|p| p.len).max().unwrap_or(1);
    let b = examples.len();
    let (mut ids, mut mask) = (vec![0u32; b * t], vec![0f32; b * t]);
    let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in examples.iter().enumerate() {
        ids[i * t..i * t + p.len].copy_from_slice(&p.ex.ids[..p.len]);
        mask[i * t..i * t + p.len].fill(1.0);
        for pos in 1..p.len {
            let w = p.ex.weights[pos];
            if w > 0.0 {
                rows.push((i * t + pos - 1) as u32);
                targets.push(p.ex.ids[pos]);
                weights.push(w);
            }
        }
    }
    let n = rows.len();
    Ok(MicroBatch {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        mask: Tensor::from_vec(mask, (b, t), device)?,
        rows: Tensor::from_vec(rows, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
        weights: Tensor::from_vec(weights, n, device)?,
        tokens: examples.iter().map(|p| p.len).sum(),
    })
}

/// Fine-tunes fresh LoRA adapters (per `tc.lora`) on the base model in `model_dir` over
/// `train`, on `device`.
///
/// Every epoch visits the examples in a new seeded order, `tc.batch_size` per optimizer step
/// (the last step of an epoch takes the rest), `tc.micro_batch_size` per forward pass, each
/// micro-batch right-padded to its longest example. The loss of a step is
/// Σ weight·cross-entropy / Σ weight over its whole batch: each micro-batch's sum is divided
/// by the batch's total weight before its backward pass, and the gradients are summed. With
/// `validation`, its loss is reported every `max(1, total_steps / 10)` steps and after the
/// last one. Returns early, with `cancelled` set, when `hooks.cancelled()` says so.
pub fn train(
    model_dir: &Path,
    cfg: &ModelConfig,
    device: &Device,
    tc: &TrainConfig,
    train: &[TrainExample],
    validation: Option<&[TrainExample]>,
    hooks: &mut dyn TrainHooks,
) -> Result<TrainOutcome, TrainError> {
    tc.validate()?;
    let max_len = tc.max_seq_len.min(cfg.max_position_embeddings);
    let train_set = prepare("training", train, max_len, cfg.vocab_size)?;
    let validation_set = validation.map(|v| prepare("validation", v, max_len, cfg.vocab_size)).transpose()?;
    let model = TrainableModel::load(model_dir, cfg, device, &tc.lora, tc.seed)?;
    let vars = model.vars();
    let params = ParamsAdamW { lr: tc.learning_rate, weight_decay: tc.weight_decay, ..ParamsAdamW::default() };
    let mut opt = AdamW::new(vars.clone(), params)?;

    let steps_per_epoch = train_set.len().div_ceil(tc.batch_size);
    let total_steps = tc.epochs * steps_per_epoch;
    let eval_every = (total_steps / 10).max(1);
    let mut rng = SplitMix64::new(tc.seed ^ SHUFFLE_SALT);
    let start = Instant::now();
    let mut training_time = Duration::ZERO;
    let mut out = Outcome { steps: 0, final_loss: f64::NAN, validation_loss: None, tokens: 0 };
    let mut order: Vec<usize> = (0..train_set.len()).collect();
    for epoch in 1..=tc.epochs {
        rng.shuffle(&mut order);
        for batch in order.chunks(tc.batch_size) {
            if hooks.cancelled() {
                return Ok(out.finish(model, true));
            }
            hooks.before_step();
            let t0 = Instant::now();
            let batch: Vec<&Prepared> = batch.iter().map(|&i| &train_set[i]).collect();
            let lr = tc.learning_rate_at(out.steps, total_steps);
            let Some((loss, tokens)) = step(&model, &vars, &mut opt, &batch, tc.micro_batch_size, (out.steps + 1, lr), device, &*hooks)? else {
                return Ok(out.finish(model, true));
            };
            training_time += t0.elapsed();
            out.steps += 1;
            out.tokens += tokens;
            out.final_loss = loss;
            hooks.on_step(&StepMetrics {
                step: out.steps,
                total_steps,
                epoch,
                loss,
                learning_rate: lr,
                tokens: out.tokens,
                tokens_per_s: out.tokens as f64 / training_time.as_secs_f64().max(1e-9),
                elapsed: start.elapsed(),
            });
            if let Some(v) = &validation_set {
                if out.steps.is_multiple_of(eval_every) || out.steps == total_steps {
                    let loss = evaluate(&model, v, tc.micro_batch_size, device)?;
                    out.validation_loss = Some(loss);
                    hooks.on_validation(out.steps, loss);
                }
            }
        }
        if epoch < tc.epochs {
            hooks.on_checkpoint(out.steps, &model).map_err(|source| TrainError::Checkpoint { step: out.steps, source })?;
        }
    }
    Ok(out.finish(model, false))
}

/// The running totals of [`train`].
struct Outcome {
    steps: usize,
    final_loss: f64,
    validation_loss: Option<f64>,
    tokens: usize,
}

impl Outcome {
    fn finish(self, model: TrainableModel, cancelled: bool) -> TrainOutcome {
        TrainOutcome { model, steps: self.steps, final_loss: self.final_loss, validation_loss: self.validation_loss, trained_tokens: self.tokens, cancelled }
    }
}

/// Optimizer step `number` (from 1) over `batch`: returns its loss and input tokens, or `None` when
/// cancelled between micro-batches (nothing is updated then). A non-finite loss stops the
/// run before the adapters are touched.
#[allow(clippy::too_many_arguments)]
fn step(
    model: &TrainableModel,
    vars: &[Var],
    opt: &mut AdamW,
    batch: &[&Prepared],
    micro: usize,
    (number, lr): (usize, f64),
    device: &Device,
    hooks: &dyn TrainHooks,
) -> Result<Option<(f64, usize)>, TrainError> {
    let total_weight: f64 = batch.iter().map(|p| p.weight).sum();
    let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
    let (mut loss, mut tokens) = (0.0, 0);
    for (i, chunk) in batch.chunks(micro).enumerate() {
        if i > 0 && hooks.cancelled() {
            return Ok(None);
        }
        let mb = micro_batch(chunk, device)?;
        let sum = model.weighted_nll(&mb.ids, &mb.mask, &mb.rows, &mb.targets, &mb.weights, true)?;
        let scaled = (sum / total_weight)?;
        loss += scaled.to_scalar::<f32>()? as f64;
        tokens += mb.tokens;
        let store = scaled.backward()?;
        for (acc, var) in grads.iter_mut().zip(vars) {
            if let Some(g) = store.get(var.as_tensor()) {
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
    }
    if !loss.is_finite() {
        return Err(TrainError::Diverged { step: number, loss });
    }
    let mut store = GradStore::default();
    for (var, g) in vars.iter().zip(grads) {
        if let Some(g) = g {
            store.insert(var.as_tensor(), g);
        }
    }
    opt.set_learning_rate(lr);
    opt.step(&store)?;
    Ok(Some((loss, tokens)))
}

/// Mean weighted loss over `set`, without building a graph.
fn evaluate(model: &TrainableModel, set: &[Prepared], micro: usize, device: &Device) -> Result<f64, TrainError> {
    let refs: Vec<&Prepared> = set.iter().collect();
    let (mut sum, mut weight) = (0.0, 0.0);
    for chunk in refs.chunks(micro) {
        let mb = micro_batch(chunk, device)?;
        sum += model.weighted_nll(&mb.ids, &mb.mask, &mb.rows, &mb.targets, &mb.weights, false)?.to_scalar::<f32>()? as f64;
        weight += chunk.iter().map(|p| p.weight).sum::<f64>();
    }
    Ok(sum / weight)
}
