//! Resolving a model reference (`--model`) to a local directory holding `config.json`,
//! `tokenizer.json` and safetensors weights.
//!
//! A reference is either a local directory (`./my-model`, `/data/llama`, `~/models/x`, or any
//! existing path) or a Hugging Face repo id `org/name`, optionally pinned with `@revision`
//! (a branch, tag or commit hash).
//!
//! Hub references are resolved offline first, from the local Hugging Face cache (the layout
//! `huggingface_hub` and `hf-hub` share: `models--org--name/{refs,snapshots,blobs}`); only when
//! the cache lacks a complete snapshot, and downloads are allowed, are the missing files fetched
//! from the Hub into that same cache.
//!
//! - this file: [`ModelRef`] and its parsing, [`ResolveOptions`], [`SourceError`], and
//!   [`Resolver`] / [`resolve`], which try a local directory or the cache, then the Hub;
//! - `cache`: the local Hugging Face cache: where it is ([`default_cache_dir`]), finding a
//!   snapshot for a revision, checking it is complete ([`read_index_shards`] for shards);
//! - `download`: fetching the missing files with `hf-hub`, after a quick reachability probe.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::Repo;

mod cache;
mod download;
#[cfg(test)]
mod tests;

pub use cache::{default_cache_dir, read_index_shards};
use cache::{find_cached_snapshot, hf_home, missing_files};

/// The Hub endpoint used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files every model directory must have (besides weights).
const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Longest repo id the Hub accepts (`huggingface_hub.utils.validate_repo_id`).
const MAX_REPO_ID_LEN: usize = 96;

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelRef {
    /// A local directory (not checked for existence until [`resolve`]).
    LocalDir(PathBuf),
    /// A Hugging Face Hub model repo, `org/name`, at `revision` (default: `main`).
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelRef {
    /// The revision a Hub reference resolves (`main` when none was given).
    pub fn revision_or_main(&self) -> Option<&str> {
        match self {
            ModelRef::LocalDir(_) => None,
            ModelRef::Hub { revision, .. } => Some(revision.as_deref().unwrap_or("main")),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelRef::LocalDir(p) => write!(f, "{}", p.display()),
            ModelRef::Hub {
                repo,
                revision: None,
            } => write!(f, "{repo}"),
            ModelRef::Hub {
                repo,
                revision: Some(rev),
            } => write!(f, "{repo}@{rev}"),
        }
    }
}

impl FromStr for ModelRef {
    type Err = SourceError;

    /// - an existing path, or one starting with `/`, `./`, `../` or `~` → [`ModelRef::LocalDir`]
    ///   (`~` and `~/…` are expanded to the home directory);
    /// - `org/name` or `org/name@revision` with valid Hub name characters → [`ModelRef::Hub`];
    /// - anything else → [`SourceError::InvalidRef`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| SourceError::InvalidRef {
            input: s.to_string(),
            reason,
        };
        if s.trim().is_empty() {
            return Err(invalid("empty model reference".into()));
        }
        if looks_like_path(s) {
            return Ok(ModelRef::LocalDir(expand_tilde(s)));
        }
        if Path::new(s).exists() {
            return Ok(ModelRef::LocalDir(PathBuf::from(s)));
        }
        let (repo, revision) = match s.split_once('@') {
            Some((repo, rev)) => (repo, Some(rev)),
            None => (s, None),
        };
        validate_repo_id(repo).map_err(|reason| {
            invalid(format!(
                "not an existing local path, and not a Hugging Face repo id \
                 (`org/name` or `org/name@revision`): {reason}"
            ))
        })?;
        if let Some(rev) = revision {
            validate_revision(rev).map_err(|reason| invalid(format!("bad revision: {reason}")))?;
        }
        Ok(ModelRef::Hub {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        })
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('/')
        || s.starts_with("./")
        || s.starts_with("../")
        || s.starts_with('~')
        || s == "."
        || s == ".."
        || (cfg!(windows) && (s.contains('\\') || s.as_bytes().get(1) == Some(&b':')))
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Expands a leading `~` or `~/` (not `~user`).
fn expand_tilde(s: &str) -> PathBuf {
    let rest = if s == "~" {
        Some("")
    } else {
        s.strip_prefix("~/")
    };
    match (rest, home_dir()) {
        (Some(""), Some(home)) => home,
        (Some(rest), Some(home)) => home.join(rest),
        _ => PathBuf::from(s),
    }
}

fn valid_name_part(part: &str, what: &str) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("empty {what}"));
    }
    if let Some(c) = part
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "invalid character {c:?} in {what} {part:?} (allowed: letters, digits, '-', '_', '.')"
        ));
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err(format!(
            "{what} {part:?} cannot start or end with '-' or '.'"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("{what} {part:?} cannot contain '--' or '..'"));
    }
    Ok(())
}

/// Checks `org/name` the way the Hub does (`huggingface_hub.utils.validate_repo_id`), except that
/// an organisation is required.
fn validate_repo_id(repo: &str) -> Result<(), String> {
    let Some((org, name)) = repo.split_once('/') else {
        return Err(format!("{repo:?} has no '/' (expected `org/name`)"));
    };
    if name.contains('/') {
        return Err(format!(
            "{repo:?} has more than one '/' (expected `org/name`)"
        ));
    }
    valid_name_part(org, "organisation")?;
    valid_name_part(name, "model name")?;
    if repo.len() > MAX_REPO_ID_LEN {
        return Err(format!(
            "repo id is longer than {MAX_REPO_ID_LEN} characters"
        ));
    }
    Ok(())
}

/// A branch, tag or commit hash. Branches may contain `/` (`refs/pr/1`); the revision becomes a
/// path under the cache (`refs/<revision>`), so `..`, empty segments and odd characters are
/// rejected.
fn validate_revision(rev: &str) -> Result<(), String> {
    if rev.is_empty() {
        return Err("empty revision after '@'".into());
    }
    if let Some(c) = rev
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '+')))
    {
        return Err(format!("invalid character {c:?} in revision {rev:?}"));
    }
    if rev
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "revision {rev:?} has an empty, '.' or '..' path segment"
        ));
    }
    Ok(())
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// How [`resolve`] may reach a model.
#[derive(Clone, Debug)]
pub struct ResolveOptions {
    /// Download missing files from the Hub (otherwise only the local cache is used).
    /// `HF_HUB_OFFLINE=1` in the environment also disables downloads.
    pub allow_download: bool,
    /// Show a progress bar per downloaded file.
    pub progress: bool,
}

impl Default for ResolveOptions {
    /// Downloads allowed, with progress bars.
    fn default() -> Self {
        Self {
            allow_download: true,
            progress: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid model reference {input:?}: {reason}")]
    InvalidRef { input: String, reason: String },

    #[error("model directory {} does not exist", .0.display())]
    LocalNotFound(PathBuf),

    #[error("model path {} is not a directory", .0.display())]
    NotADirectory(PathBuf),

    #[error("model directory {} has no config.json", .0.display())]
    MissingConfig(PathBuf),

    /// Neither the local cache nor the Hub could provide a complete model.
    #[error(
        "model {model} is not available: local Hugging Face cache ({}): {cache}; \
         Hugging Face Hub ({url}): {hub}",
        cache_dir.display()
    )]
    Unavailable {
        /// `org/name@revision`
        model: String,
        /// The repo folder looked at in the cache.
        cache_dir: PathBuf,
        /// Why the cache could not serve the model.
        cache: String,
        /// The repo's page on the Hub.
        url: String,
        /// Why the Hub could not (or was not allowed to) serve the model.
        hub: String,
    },

    #[error("invalid safetensors index {}: {reason}", path.display())]
    InvalidIndex { path: PathBuf, reason: String },

    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves `r` to a directory holding `config.json`, `tokenizer.json` and safetensors weights,
/// using the Hugging Face cache and endpoint from the environment (see [`Resolver::from_env`]).
pub fn resolve(r: &ModelRef, opts: &ResolveOptions) -> Result<PathBuf, SourceError> {
    Resolver::from_env().resolve(r, opts)
}

fn env_truthy(key: &str) -> bool {
    std::env::var(key)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Resolution settings: where the cache lives, which endpoint to download from, which token to
/// send. [`resolve`] uses [`Resolver::from_env`]; tests and embedders can set them explicitly.
#[derive(Clone, Debug)]
pub struct Resolver {
    cache_dir: Option<PathBuf>,
    endpoint: String,
    token: Option<String>,
    offline: bool,
}

impl Resolver {
    /// Cache dir from [`default_cache_dir`], endpoint from `HF_ENDPOINT`, token from `HF_TOKEN`
    /// (or `HUGGING_FACE_HUB_TOKEN`, or the token file `huggingface-cli login` writes), and
    /// `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = var("HF_TOKEN_PATH")
                    .map(PathBuf::from)
                    .or_else(|| hf_home().map(|h| h.join("token")))?;
                let t = std::fs::read_to_string(path).ok()?;
                let t = t.trim();
                (!t.is_empty()).then(|| t.to_string())
            })
            .map(|t| t.trim().to_string());
        Self {
            cache_dir: default_cache_dir(),
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token,
            offline: env_truthy("HF_HUB_OFFLINE"),
        }
    }

    /// A resolver using `cache_dir` as the hub cache, the default endpoint, no token, and
    /// downloads governed by [`ResolveOptions`] alone (the environment is not read).
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: Some(cache_dir.into()),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            token: None,
            offline: false,
        }
    }

    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// See [`resolve`].
    pub fn resolve(&self, r: &ModelRef, opts: &ResolveOptions) -> Result<PathBuf, SourceError> {
        match r {
            ModelRef::LocalDir(dir) => resolve_local(dir),
            ModelRef::Hub { repo, revision } => {
                self.resolve_hub(repo, revision.as_deref().unwrap_or("main"), opts)
            }
        }
    }

    fn resolve_hub(
        &self,
        repo: &str,
        revision: &str,
        opts: &ResolveOptions,
    ) -> Result<PathBuf, SourceError> {
        let model = format!("{repo}@{revision}");
        let url = format!("{}/{repo}", self.endpoint);
        let repo_dir = self
            .cache_dir
            .as_ref()
            .map(|c| c.join(Repo::model(repo.to_string()).folder_name()));

        // 1. The local cache.
        let cache_reason = match &repo_dir {
            None => "no cache directory (no home directory; set HF_HUB_CACHE or HF_HOME)".into(),
            Some(repo_dir) => match find_cached_snapshot(repo_dir, revision) {
                Err(reason) => reason,
                Ok(snapshot) => match missing_files(&snapshot)? {
                    missing if missing.is_empty() => {
                        tracing::debug!(model, snapshot = %snapshot.display(), "model found in HF cache");
                        return Ok(snapshot);
                    }
                    missing => format!(
                        "snapshot {} is incomplete, missing {}",
                        snapshot.display(),
                        missing.join(", ")
                    ),
                },
            },
        };
        let unavailable = |hub: String| SourceError::Unavailable {
            model: model.clone(),
            cache_dir: repo_dir.clone().unwrap_or_default(),
            cache: cache_reason.clone(),
            url: url.clone(),
            hub,
        };

        // 2. The Hub.
        if !opts.allow_download {
            return Err(unavailable("downloads are disabled (offline mode)".into()));
        }
        if self.offline {
            return Err(unavailable(
                "downloads are disabled (HF_HUB_OFFLINE is set)".into(),
            ));
        }
        let Some(cache_dir) = &self.cache_dir else {
            return Err(unavailable(
                "nowhere to download to (no cache directory)".into(),
            ));
        };
        self.download(repo, revision, cache_dir, opts.progress)
            .map_err(unavailable)
    }
}

fn resolve_local(dir: &Path) -> Result<PathBuf, SourceError> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(SourceError::LocalNotFound(dir.to_path_buf()))
        }
        Err(e) => Err(SourceError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
        Ok(m) if !m.is_dir() => Err(SourceError::NotADirectory(dir.to_path_buf())),
        Ok(_) if !dir.join("config.json").is_file() => {
            Err(SourceError::MissingConfig(dir.to_path_buf()))
        }
        Ok(_) => Ok(dir.to_path_buf()),
    }
}
