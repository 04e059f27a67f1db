//! A fine-tuning job as OpenAI's API shows it ([`Job`]), the create request ([`CreateJob`])
//! and its hyper-parameters, resolved from numbers or `"auto"` into a [`Plan`].
//!
//! The learning rate is [`BASE_LEARNING_RATE`] × `learning_rate_multiplier`. `"auto"` picks
//! values that teach small datasets (tens of examples) within a few minutes on a CPU:
//! see [`Plan::resolve`].

use std::collections::BTreeSet;

use flint_engine::{
    finetune::{LoraSpec, LrSchedule, TrainConfig},
    models::TargetModule,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{FineTuneError, Result};

/// The LoRA learning rate a multiplier of 1 means (AdamW, after warmup).
pub const BASE_LEARNING_RATE: f64 = 2e-4;

/// `metadata` limits, OpenAI's: at most 16 pairs, keys up to 64 characters, string values up
/// to 512. The metadata is stored with the job and sent back with every listing of it.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

/// A number or `"auto"`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Auto<T> {
    Value(T),
    Word(String),
}

impl<T: Copy> Auto<T> {
    /// `None` for `"auto"`; any other word is a bad `field`.
    fn get(&self, field: &str) -> Result<Option<T>> {
        match self {
            Self::Value(v) => Ok(Some(*v)),
            Self::Word(w) if w == "auto" => Ok(None),
            Self::Word(w) => Err(FineTuneError::invalid(field, format!("`{field}` must be a number or \"auto\", got {w:?}"))),
        }
    }
}

/// OpenAI's hyper-parameters plus flint's LoRA extensions (all optional).
#[derive(Deserialize, Serialize, Clone, Debug, Default)]
pub struct Hyperparameters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_epochs: Option<Auto<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<Auto<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_multiplier: Option<Auto<f64>>,
    /// flint: LoRA rank (default 8; at most the server's `--max-lora-rank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_rank: Option<i64>,
    /// flint: LoRA alpha (default 2 × rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// flint: projections to adapt (default all seven: q/k/v/o/gate/up/down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_target_modules: Option<Vec<String>>,
    /// flint: longer examples are truncated (default 1024, at most the model's context).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq_len: Option<i64>,
    /// flint: `linear` (default) or `cosine` decay after warmup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_scheduler: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Supervised {
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub supervised: Option<Supervised>,
}

/// `POST /v1/fine_tuning/jobs`.
#[derive(Deserialize, Clone, Debug, utoipa::ToSchema)]
pub struct CreateJob {
    /// The served base model to train an adapter for.
    pub model: String,
    pub training_file: String,
    #[serde(default)]
    pub validation_file: Option<String>,
    /// Up to 64 characters, in the fine-tuned model's name.
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub hyperparameters: Option<Hyperparameters>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub method: Option<Method>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

impl CreateJob {
    /// `metadata` is null or an object of at most [`MAX_METADATA_PAIRS`] short strings.
    pub fn check_metadata(&self) -> Result<()> {
        let bad = |msg: String| Err(FineTuneError::invalid("metadata", msg));
        let pairs = match &self.metadata {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(m)) => m,
            Some(_) => return bad("`metadata` must be an object of strings".into()),
        };
        if pairs.len() > MAX_METADATA_PAIRS {
            return bad(format!("`metadata` has {} pairs; at most {MAX_METADATA_PAIRS} are allowed", pairs.len()));
        }
        for (k, v) in pairs {
            if k.chars().count() > MAX_METADATA_KEY_CHARS {
                return bad(format!("`metadata` keys are at most {MAX_METADATA_KEY_CHARS} characters"));
            }
            match v {
                Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
                Value::String(_) => return bad(format!("`metadata.{k}` is longer than {MAX_METADATA_VALUE_CHARS} characters")),
                _ => return bad(format!("`metadata.{k}` must be a string")),
            }
        }
        Ok(())
    }

    /// The hyper-parameters: `method.supervised.hyperparameters` over the top-level ones.
    pub fn hyperparameters(&self) -> Result<Hyperparameters> {
        let mut h = self.hyperparameters.clone().unwrap_or_default();
        if let Some(m) = &self.method {
            if m.kind != "supervised" {
                return Err(FineTuneError::invalid(
                    "method.type",
                    format!("only \"supervised\" fine-tuning is supported, got {:?}", m.kind),
                ));
            }
            if let Some(mh) = m.supervised.as_ref().and_then(|s| s.hyperparameters.clone()) {
                h.n_epochs = mh.n_epochs.or(h.n_epochs);
                h.batch_size = mh.batch_size.or(h.batch_size);
                h.learning_rate_multiplier = mh.learning_rate_multiplier.or(h.learning_rate_multiplier);
                h.lora_rank = mh.lora_rank.or(h.lora_rank);
                h.lora_alpha = mh.lora_alpha.or(h.lora_alpha);
                h.lora_target_modules = mh.lora_target_modules.or(h.lora_target_modules);
                h.max_seq_len = mh.max_seq_len.or(h.max_seq_len);
                h.lr_scheduler = mh.lr_scheduler.or(h.lr_scheduler);
            }
        }
        Ok(h)
    }
}

/// What a job will do, every value chosen.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    pub n_epochs: usize,
    pub batch_size: usize,
    pub learning_rate_multiplier: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_target_modules: Vec<String>,
    pub max_seq_len: usize,
    pub lr_scheduler: String,
    pub seed: u64,
}

impl Plan {
    /// Checks `h` (a bad value is an error naming its field) and fills in `"auto"` and absent values.
    /// `max_rank`: the server's `--max-lora-rank`; `context`: the model's length.
    pub fn check(h: &Hyperparameters, seed: Option<i64>, max_rank: usize, context: usize) -> Result<Self> {
        let bad = |field: &str, msg: String| FineTuneError::invalid(field, msg);
        let n_epochs = match h.n_epochs.as_ref().map(|a| a.get("hyperparameters.n_epochs")).transpose()?.flatten() {
            Some(n) if !(1..=50).contains(&n) => return Err(bad("hyperparameters.n_epochs", format!("`n_epochs` must be in 1..=50, got {n}"))),
            n => n.map(|n| n as usize),
        };
        let batch_size = match h.batch_size.as_ref().map(|a| a.get("hyperparameters.batch_size")).transpose()?.flatten() {
            Some(b) if !(1..=256).contains(&b) => return Err(bad("hyperparameters.batch_size", format!("`batch_size` must be in 1..=256, got {b}"))),
            b => b.map(|b| b as usize),
        };
        let lrm = match h.learning_rate_multiplier.as_ref().map(|a| a.get("hyperparameters.learning_rate_multiplier")).transpose()?.flatten() {
            Some(m) if !(m > 0.0 && m <= 100.0) => {
                return Err(bad("hyperparameters.learning_rate_multiplier", format!("`learning_rate_multiplier` must be in (0, 100], got {m}")))
            }
            m => m,
        };
        let rank = h.lora_rank.unwrap_or(8.min(max_rank as i64));
        if rank < 1 || rank as usize > max_rank {
            return Err(bad("hyperparameters.lora_rank", format!("`lora_rank` must be in 1..={max_rank} (--max-lora-rank), got {rank}")));
        }
        let alpha = h.lora_alpha.unwrap_or(2.0 * rank as f64);
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(bad("hyperparameters.lora_alpha", format!("`lora_alpha` must be > 0, got {alpha}")));
        }
        let targets = match &h.lora_target_modules {
            None => TargetModule::ALL.iter().map(|m| m.name().to_owned()).collect(),
            Some(list) if list.is_empty() => return Err(bad("hyperparameters.lora_target_modules", "`lora_target_modules` must not be empty".into())),
            Some(list) => {
                let mut out = BTreeSet::new();
                for name in list {
                    let m = TargetModule::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                        bad("hyperparameters.lora_target_modules", format!("unknown module {name:?} (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"))
                    })?;
                    out.insert(m);
                }
                out.into_iter().map(|m| m.name().to_owned()).collect()
            }
        };
        let max_seq_len = h.max_seq_len.unwrap_or(1024.min(context as i64));
        if max_seq_len < 2 || max_seq_len as usize > context {
            return Err(bad("hyperparameters.max_seq_len", format!("`max_seq_len` must be in 2..={context}, got {max_seq_len}")));
        }
        let lr_scheduler = h.lr_scheduler.clone().unwrap_or_else(|| "linear".into());
        if !matches!(lr_scheduler.as_str(), "linear" | "cosine") {
            return Err(bad("hyperparameters.lr_scheduler", format!("`lr_scheduler` must be \"linear\" or \"cosine\", got {lr_scheduler:?}")));
        }
        let seed = match seed {
            Some(s) if s < 0 => return Err(bad("seed", format!("`seed` must be >= 0, got {s}"))),
            Some(s) => s as u64,
            None => rand::random::<u32>() as u64,
        };
        Ok(Self {
            // Zero marks "auto" until the dataset's size is known (see `resolve`).
            n_epochs: n_epochs.unwrap_or(0),
            batch_size: batch_size.unwrap_or(0),
            learning_rate_multiplier: lrm.unwrap_or(0.0),
            lora_rank: rank as usize,
            lora_alpha: alpha,
            lora_target_modules: targets,
            max_seq_len: max_seq_len as usize,
            lr_scheduler,
            seed,
        })
    }

    /// Fills the `"auto"` values for a dataset of `n` examples: batches of about a tenth of
    /// the data (1..=8), enough epochs for about 100 examples seen (3..=25), and a multiplier
    /// of 10 (learning rate 2e-3) for small datasets, 5 beyond 1000 examples.
    pub fn resolve(&mut self, n: usize) {
        if self.batch_size == 0 {
            self.batch_size = (n / 10).clamp(1, 8);
        }
        if self.n_epochs == 0 {
            self.n_epochs = 100usize.div_ceil(n.max(1)).clamp(3, 25);
        }
        if self.learning_rate_multiplier == 0.0 {
            self.learning_rate_multiplier = if n > 1000 { 5.0 } else { 10.0 };
        }
    }

    /// The engine's training configuration (after [`Self::resolve`]).
    pub fn train_config(&self, steps_per_epoch: usize) -> TrainConfig {
        let targets = self
            .lora_target_modules
            .iter()
            .filter_map(|n| TargetModule::ALL.into_iter().find(|m| m.name() == n))
            .collect();
        let total = steps_per_epoch * self.n_epochs;
        TrainConfig {
            epochs: self.n_epochs,
            batch_size: self.batch_size,
            micro_batch_size: self.batch_size.min(4),
            learning_rate: BASE_LEARNING_RATE * self.learning_rate_multiplier,
            warmup_steps: (total / 20).min(10),
            schedule: if self.lr_scheduler == "cosine" { LrSchedule::Cosine } else { LrSchedule::Linear },
            weight_decay: 0.0,
            max_seq_len: self.max_seq_len,
            seed: self.seed,
            lora: LoraSpec { rank: self.lora_rank, alpha: self.lora_alpha, targets },
        }
    }

    /// OpenAI's `hyperparameters` object, with flint's extensions.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "n_epochs": self.n_epochs, "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha,
            "lora_target_modules": self.lora_target_modules, "max_seq_len": self.max_seq_len,
            "lr_scheduler": self.lr_scheduler,
        })
    }
}

/// A job's status, as OpenAI names them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidatingFiles => "validating_files",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// `error` of a failed job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

/// A fine-tuning job, stored as this JSON and served as OpenAI's `fine_tuning.job`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Job {
    pub object: String,
    pub id: String,
    pub model: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub fine_tuned_model: Option<String>,
    pub organization_id: String,
    pub result_files: Vec<String>,
    pub status: Status,
    pub validation_file: Option<String>,
    pub training_file: String,
    pub hyperparameters: Value,
    pub trained_tokens: Option<u64>,
    pub error: Option<JobError>,
    pub user_provided_suffix: Option<String>,
    pub seed: u64,
    pub estimated_finish: Option<i64>,
    pub integrations: Vec<Value>,
    pub metadata: Option<Value>,
    pub method: Value,
    /// flint: the resolved plan (`hyperparameters` shows it to clients).
    #[serde(default)]
    pub plan: Option<Plan>,
}

impl Job {
    /// The name the trained adapter is served under: `ft:<base>:<suffix>:<job id>`.
    pub fn model_name(&self) -> String {
        format!("ft:{}:{}:{}", self.model, self.user_provided_suffix.as_deref().unwrap_or(""), self.id)
    }

    pub fn checkpoint_name(&self, step: usize) -> String {
        format!("{}:ckpt-step-{step}", self.model_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_and_numbers() {
        let h: Hyperparameters = serde_json::from_value(serde_json::json!({"n_epochs": "auto", "batch_size": 2,
            "learning_rate_multiplier": 0.5, "lora_target_modules": ["q_proj", "v_proj"]}))
        .unwrap();
        let mut p = Plan::check(&h, Some(7), 16, 2048).unwrap();
        p.resolve(20);
        assert_eq!((p.n_epochs, p.batch_size, p.learning_rate_multiplier, p.seed), (5, 2, 0.5, 7));
        assert_eq!((p.lora_rank, p.lora_alpha, p.max_seq_len), (8, 16.0, 1024));
        assert_eq!(p.lora_target_modules, ["q_proj", "v_proj"]);
        let cfg = p.train_config(10);
        assert!((cfg.learning_rate - 1e-4).abs() < 1e-12);
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let check = |v: Value| {
            let h: Hyperparameters = serde_json::from_value(v).unwrap();
            match Plan::check(&h, None, 16, 256) {
                Err(FineTuneError::Invalid { field, .. }) => field,
                other => panic!("expected a bad field, got {other:?}"),
            }
        };
        assert_eq!(check(serde_json::json!({"n_epochs": 0})), "hyperparameters.n_epochs");
        assert_eq!(check(serde_json::json!({"n_epochs": "many"})), "hyperparameters.n_epochs");
        assert_eq!(check(serde_json::json!({"batch_size": 1000})), "hyperparameters.batch_size");
        assert_eq!(check(serde_json::json!({"learning_rate_multiplier": -1.0})), "hyperparameters.learning_rate_multiplier");
        assert_eq!(check(serde_json::json!({"lora_rank": 64})), "hyperparameters.lora_rank");
        assert_eq!(check(serde_json::json!({"lora_alpha": 0.0})), "hyperparameters.lora_alpha");
        assert_eq!(check(serde_json::json!({"lora_target_modules": ["lm_head"]})), "hyperparameters.lora_target_modules");
        assert_eq!(check(serde_json::json!({"max_seq_len": 4096})), "hyperparameters.max_seq_len");
        assert_eq!(check(serde_json::json!({"lr_scheduler": "step"})), "hyperparameters.lr_scheduler");
    }

    #[test]
    fn metadata_is_short_strings() {
        let req = |metadata: Value| -> CreateJob {
            serde_json::from_value(serde_json::json!({"model": "m", "training_file": "f", "metadata": metadata})).unwrap()
        };
        assert!(req(Value::Null).check_metadata().is_ok());
        assert!(req(serde_json::json!({"team": "a", "run": "7"})).check_metadata().is_ok());
        let many: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), Value::from("v"))).collect();
        for bad in [serde_json::json!([1]), Value::Object(many), serde_json::json!({"k": 1}),
            serde_json::json!({"k": "v".repeat(513)}), serde_json::json!({"k".repeat(65): "v"})] {
            assert!(matches!(req(bad).check_metadata(), Err(FineTuneError::Invalid { field, .. }) if field == "metadata"));
        }
    }
}
