//! [`FineTuneError`]: why a files or fine-tuning operation failed. The API layer maps it to
//! HTTP (`api/error.rs`, the one place that knows statuses); jobs that fail while they run
//! record its text as their `error.message`.

use std::path::PathBuf;

use flint_engine::{models::ModelError, EngineError};

use super::{dataset::DatasetError, store::StoreError};
use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum FineTuneError {
    /// A request field is malformed or out of range; `field` is its JSON path
    /// (`hyperparameters.n_epochs`, `suffix`, `training_file`, ...).
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// The `model` of a create request cannot be used now (unknown, loading, failed).
    #[error(transparent)]
    Model(RegistryError),
    /// No job has this id.
    #[error("no fine-tuning job `{0}`")]
    JobNotFound(String),
    /// A file a job names does not exist; `field` is the request field that names it.
    #[error("no file `{id}`")]
    FileNotFound { id: String, field: &'static str },
    /// Cancelling a job that has already ended (`status`: how).
    #[error("the job is already {0}")]
    AlreadyFinished(&'static str),
    /// [`super::MAX_PENDING_JOBS`] jobs are validating, queued or running.
    #[error("{limit} fine-tuning jobs are already validating, queued or running; retry when one has finished")]
    TooManyJobs { limit: usize },
    /// An uploaded training file is not valid (the message names the line).
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// An uploaded file has no bytes.
    #[error("the file is empty")]
    EmptyFile,
    /// The database or the files directory failed.
    #[error("fine-tuning storage: {0}")]
    Store(#[from] StoreError),
    /// Writing a trained adapter's directory failed.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot save the adapter: {0}")]
    SaveAdapter(#[source] ModelError),
    #[error("cannot serve the adapter `{name}`: {source}")]
    ServeAdapter { name: String, source: Box<EngineError> },
    /// A blocking task (an upload's writer, a job's preparation) panicked or was cancelled.
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl FineTuneError {
    /// A bad request field, named by its JSON path.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}

pub type Result<T, E = FineTuneError> = std::result::Result<T, E>;
