//! [`RegistryError`]: why the registry could not give out, load or unload a model. The HTTP
//! status of each variant is chosen once, in `api::error`; nothing here knows about HTTP.

use std::time::Duration;

/// When a model failed: while loading, or later while serving (its engine panicked or a
/// step failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailedWhile {
    Loading,
    Serving,
}

/// Every error of the model registry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    /// `model` names no served model or adapter; `served` lists the names that are, and
    /// `in_catalog` says the name is a catalog entry that is not loaded.
    #[error("the model `{name}` does not exist (served: {}){}", quoted(served), catalog_hint(name, *in_catalog))]
    UnknownModel { name: String, served: Vec<String>, in_catalog: bool },
    /// An admin operation names a model that is not loaded; `param` is the request field.
    #[error("no model named `{name}` is loaded")]
    NotLoaded { name: String, param: &'static str },
    /// The model is loading: what it is doing and for how long.
    #[error("the model `{name}` is loading ({phase}, {:.0} s so far); retry shortly", elapsed.as_secs_f64())]
    Loading { name: String, phase: &'static str, elapsed: Duration },
    /// The model is draining its requests before its engine stops.
    #[error("the model `{name}` is being unloaded")]
    Unloading { name: String },
    /// The model failed; `restarting`: the registry is about to start it again.
    #[error("the model `{name}` {}: {reason}{}", failed_what(*during), restart_hint(*during, *restarting))]
    Failed { name: String, during: FailedWhile, reason: String, restarting: bool },
    /// A load under a name that a model already has (one that is not `failed`).
    #[error("a model named `{name}` is already {state}")]
    NameTaken { name: String, state: &'static str },
    /// The model is in a state (`loading`, `unloading`) the operation cannot run in;
    /// `param` is the request field that named it.
    #[error("the model `{name}` is {state}; try again later")]
    Busy { name: String, state: &'static str, param: &'static str },
    /// A model name that cannot be served (empty, too long, spaces, the name it replaces).
    #[error("{0}")]
    InvalidName(String),
    /// The registry was built without a launcher (tests that install models directly).
    #[error("this server cannot load models at runtime")]
    LoadingDisabled,
    /// The registry is going away while a caller waited for a model.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl RegistryError {
    /// The model the error is about, when there is one.
    pub fn model(&self) -> Option<&str> {
        match self {
            Self::UnknownModel { name, .. }
            | Self::NotLoaded { name, .. }
            | Self::Loading { name, .. }
            | Self::Unloading { name }
            | Self::Failed { name, .. }
            | Self::NameTaken { name, .. }
            | Self::Busy { name, .. } => Some(name),
            Self::InvalidName(_) | Self::LoadingDisabled | Self::ShuttingDown => None,
        }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

fn catalog_hint(name: &str, in_catalog: bool) -> String {
    if in_catalog {
        format!("; `{name}` is in the catalog but not loaded: load it with POST /admin/models/load")
    } else {
        String::new()
    }
}

fn failed_what(during: FailedWhile) -> &'static str {
    match during {
        FailedWhile::Loading => "failed to load",
        FailedWhile::Serving => "failed",
    }
}

fn restart_hint(during: FailedWhile, restarting: bool) -> &'static str {
    match (during, restarting) {
        (FailedWhile::Serving, true) => " (restarting it)",
        (FailedWhile::Serving, false) => " (not restarted again: reload it with POST /admin/models/load)",
        (FailedWhile::Loading, _) => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_model_and_what_to_do() {
        let e =
            RegistryError::UnknownModel { name: "x".into(), served: vec!["a".into(), "b".into()], in_catalog: false };
        assert_eq!(e.to_string(), "the model `x` does not exist (served: `a`, `b`)");
        let e = RegistryError::UnknownModel { name: "cat".into(), served: vec![], in_catalog: true };
        assert!(e.to_string().contains("in the catalog but not loaded"), "{e}");
        let e = RegistryError::Loading { name: "m".into(), phase: "converting", elapsed: Duration::from_secs(3) };
        assert_eq!(e.to_string(), "the model `m` is loading (converting, 3 s so far); retry shortly");
        let failed = |during, restarting| {
            RegistryError::Failed { name: "m".into(), during, reason: "boom".into(), restarting }.to_string()
        };
        assert_eq!(failed(FailedWhile::Loading, false), "the model `m` failed to load: boom");
        assert_eq!(failed(FailedWhile::Serving, true), "the model `m` failed: boom (restarting it)");
        assert!(failed(FailedWhile::Serving, false).contains("reload it"));
        assert_eq!(e.model(), Some("m"));
        assert_eq!(RegistryError::LoadingDisabled.model(), None);
    }
}
