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

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

/// The Hub endpoint used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Files every model directory must have (besides weights).
const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];
/// Files fetched when the repo has them.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// Longest repo id the Hub accepts (`huggingface_hub.utils.validate_repo_id`).
const MAX_REPO_ID_LEN: usize = 96;

/// How long the reachability check before a download may take in total.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The Hugging Face hub cache directory from the environment, as `huggingface_hub` picks it:
/// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
/// `~/.cache/huggingface/hub`. `None` only when no home directory is known.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
        .or_else(|| hf_home().map(|h| h.join("hub")))
}

fn hf_home() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("huggingface")))
        .or_else(|| home_dir().map(|h| h.join(".cache").join("huggingface")))
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

    /// Downloads the files of `repo@revision` that the cache lacks into the cache, and returns
    /// the snapshot directory. Errors are plain reasons, to go into [`SourceError::Unavailable`].
    fn download(
        &self,
        repo: &str,
        revision: &str,
        cache_dir: &Path,
        progress: bool,
    ) -> Result<PathBuf, String> {
        probe_endpoint(&self.endpoint)?;
        let api = ApiBuilder::from_cache(Cache::new(cache_dir.to_path_buf()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(progress)
            .with_retries(0)
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;

        // One listing tells which files exist and pins the commit, so that all files come from
        // the same snapshot even if the branch moves meanwhile.
        let info = api
            .repo(Repo::with_revision(
                repo.to_string(),
                RepoType::Model,
                revision.to_string(),
            ))
            .info()
            .map_err(|e| describe_hub_error("cannot list the repository", &e.to_string()))?;
        let sha = info.sha;
        if !is_commit_hash(&sha) {
            return Err(format!("the Hub returned an unexpected commit id {sha:?}"));
        }
        let remote: BTreeSet<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();

        let mut wanted: Vec<String> = Vec::new();
        for f in REQUIRED_FILES {
            if !remote.contains(f) {
                return Err(format!("the repository has no {f}"));
            }
            wanted.push(f.to_string());
        }
        wanted.extend(
            OPTIONAL_FILES
                .iter()
                .filter(|f| remote.contains(**f))
                .map(|f| f.to_string()),
        );
        let sharded = if remote.contains(SINGLE_WEIGHTS) {
            wanted.push(SINGLE_WEIGHTS.to_string());
            false
        } else if remote.contains(WEIGHTS_INDEX) {
            wanted.push(WEIGHTS_INDEX.to_string());
            true
        } else {
            return Err(format!(
                "the repository has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX} \
                 (only safetensors checkpoints are supported)"
            ));
        };

        let cache_repo_dir = cache_dir.join(Repo::model(repo.to_string()).folder_name());
        let snapshot = cache_repo_dir.join("snapshots").join(&sha);
        let pinned_ref = cache_repo_dir.join("refs").join(&sha);
        let pinned_ref_existed = pinned_ref.exists();
        let api_repo = api.repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            sha.clone(),
        ));
        let fetch = |file: &str| -> Result<(), String> {
            if snapshot.join(file).exists() {
                return Ok(());
            }
            tracing::info!("downloading {file} from {repo}@{revision} ({sha})");
            let path = api_repo.download(file).map_err(|e| {
                describe_hub_error(&format!("downloading {file} failed"), &e.to_string())
            })?;
            if path != snapshot.join(file) {
                return Err(format!(
                    "{file} was stored at {} instead of under {}",
                    path.display(),
                    snapshot.display()
                ));
            }
            Ok(())
        };
        let result: Result<(), String> = (|| {
            for file in &wanted {
                fetch(file)?;
            }
            if sharded {
                let shards =
                    read_index_shards(&snapshot.join(WEIGHTS_INDEX)).map_err(|e| e.to_string())?;
                for shard in &shards {
                    fetch(shard)?;
                }
            }
            Ok(())
        })();
        // hf-hub records a ref named after the revision it was given (here: the commit hash);
        // huggingface_hub does not keep such refs, so drop it and record the real one.
        if !pinned_ref_existed && revision != sha {
            let _ = std::fs::remove_file(&pinned_ref);
        }
        result?;
        if revision != sha {
            Cache::new(cache_dir.to_path_buf())
                .repo(Repo::with_revision(
                    repo.to_string(),
                    RepoType::Model,
                    revision.to_string(),
                ))
                .create_ref(&sha)
                .map_err(|e| format!("cannot record refs/{revision} in the cache: {e}"))?;
        }
        match missing_files(&snapshot) {
            Ok(missing) if missing.is_empty() => Ok(snapshot),
            Ok(missing) => Err(format!(
                "after downloading, {} still lacks {}",
                snapshot.display(),
                missing.join(", ")
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Adds a hint to the common HTTP failures.
fn describe_hub_error(what: &str, err: &str) -> String {
    let hint = if err.contains("status code 401") || err.contains("status code 403") {
        " (private or gated repository? set HF_TOKEN to a token with access)"
    } else if err.contains("status code 404") {
        " (no such repository or revision)"
    } else {
        ""
    };
    format!("{what}: {err}{hint}")
}

/// Fails fast when the endpoint is unreachable (no network, DNS failure), so that an offline
/// machine gets a clear error within seconds instead of waiting on the HTTP client's timeouts.
/// Skipped when a proxy is configured, since then the endpoint need not be directly reachable.
fn probe_endpoint(endpoint: &str) -> Result<(), String> {
    let proxied = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if proxied {
        return Ok(());
    }
    let (default_port, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
        (443u16, r)
    } else if let Some(r) = endpoint.strip_prefix("http://") {
        (80u16, r)
    } else {
        return Err(format!("endpoint {endpoint:?} is not an http(s) URL"));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => match p.parse() {
            Ok(port) => (h.to_string(), port),
            Err(_) => (authority.to_string(), default_port),
        },
        _ => (authority.to_string(), default_port),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(format!("endpoint {endpoint:?} has no host"));
    }

    let (tx, rx) = std::sync::mpsc::channel();
    let target = format!("{host}:{port}");
    // DNS lookups cannot be given a timeout; run the probe on a thread and stop waiting for it.
    let spawned = std::thread::Builder::new()
        .name("hf-probe".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let result = match (host.as_str(), port).to_socket_addrs() {
                Err(e) => Err(format!("cannot resolve {host}: {e}")),
                Ok(addrs) => {
                    let mut last = format!("{host} resolved to no address");
                    let mut ok = false;
                    for addr in addrs {
                        match std::net::TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
                            Ok(_) => {
                                ok = true;
                                break;
                            }
                            Err(e) => last = format!("cannot connect to {addr}: {e}"),
                        }
                    }
                    if ok {
                        Ok(())
                    } else {
                        Err(last)
                    }
                }
            };
            let _ = tx.send(result);
        });
    if spawned.is_err() {
        return Ok(()); // no probe; the HTTP client will report the failure
    }
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{target} is unreachable ({e}); no network access?")),
        Err(_) => Err(format!(
            "{target} did not answer within {}s; no network access?",
            PROBE_TIMEOUT.as_secs()
        )),
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

/// Finds `snapshots/<commit>` for `revision` in a cached repo folder: through `refs/<revision>`
/// (branches, tags), or directly when `revision` is a commit hash. `Err` is a reason.
fn find_cached_snapshot(repo_dir: &Path, revision: &str) -> Result<PathBuf, String> {
    if !repo_dir.is_dir() {
        return Err("not in the cache".into());
    }
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_file) {
        Ok(s) => {
            let commit = s.trim().to_string();
            if commit.is_empty() || commit.contains(['/', '\\']) || commit.contains("..") {
                return Err(format!("{} holds no valid commit id", ref_file.display()));
            }
            commit
        }
        Err(_) => revision.to_string(),
    };
    let snapshot = repo_dir.join("snapshots").join(&commit);
    if snapshot.is_dir() {
        Ok(snapshot)
    } else if commit == revision {
        Err(format!("no refs/{revision} and no snapshots/{revision}"))
    } else {
        Err(format!(
            "refs/{revision} points to {commit}, but snapshots/{commit} is missing"
        ))
    }
}

/// The files `dir` still needs to be a complete model: required files, weights and every shard
/// the index names. An unreadable index is an error, an absent one a missing file.
fn missing_files(dir: &Path) -> Result<Vec<String>, SourceError> {
    let mut missing: Vec<String> = REQUIRED_FILES
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if dir.join(SINGLE_WEIGHTS).is_file() {
        return Ok(missing);
    }
    let index = dir.join(WEIGHTS_INDEX);
    if !index.is_file() {
        missing.push(format!("{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX})"));
        return Ok(missing);
    }
    for shard in read_index_shards(&index)? {
        if !dir.join(&shard).is_file() {
            missing.push(shard);
        }
    }
    Ok(missing)
}

/// The distinct shard files a `model.safetensors.index.json` names, in order.
pub fn read_index_shards(index: &Path) -> Result<Vec<String>, SourceError> {
    let invalid = |reason: String| SourceError::InvalidIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| SourceError::Io {
        path: index.to_path_buf(),
        source: e,
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid("no \"weight_map\" object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    let mut seen = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| invalid(format!("weight_map entry {tensor:?} is not a string")))?;
        let p = Path::new(file);
        if file.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(format!(
                "shard path {file:?} is not a plain relative path"
            )));
        }
        if seen.insert(file.to_string()) {
            shards.push(file.to_string());
        }
    }
    if shards.is_empty() {
        return Err(invalid("\"weight_map\" is empty".into()));
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::time::Instant;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
    const OTHER_COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";

    fn offline() -> ResolveOptions {
        ResolveOptions {
            allow_download: false,
            progress: false,
        }
    }

    fn hub(s: &str) -> ModelRef {
        s.parse().unwrap()
    }

    /// Writes a snapshot the way huggingface_hub lays it out: blobs + relative symlinks.
    fn write_snapshot(cache: &Path, repo: &str, commit: &str, files: &[(&str, &str)]) -> PathBuf {
        let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let snap = repo_dir.join("snapshots").join(commit);
        fs::create_dir_all(&snap).unwrap();
        fs::create_dir_all(repo_dir.join("blobs")).unwrap();
        for (i, (name, content)) in files.iter().enumerate() {
            let blob = repo_dir.join("blobs").join(format!("{commit}-{i}"));
            fs::write(&blob, content).unwrap();
            #[cfg(unix)]
            std::os::unix::fs::symlink(
                Path::new("../../blobs").join(blob.file_name().unwrap()),
                snap.join(name),
            )
            .unwrap();
            #[cfg(not(unix))]
            fs::copy(&blob, snap.join(name)).unwrap();
        }
        snap
    }

    fn write_ref(cache: &Path, repo: &str, name: &str, commit: &str) {
        let refs = cache
            .join(format!("models--{}", repo.replace('/', "--")))
            .join("refs");
        let file = refs.join(name);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, commit).unwrap(); // huggingface_hub writes no trailing newline
    }

    const SHARDED_INDEX: &str = r#"{"metadata": {"total_size": 8}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
        "c.weight": "model-00001-of-00002.safetensors"}}"#;

    fn sharded_files() -> Vec<(&'static str, &'static str)> {
        vec![
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("tokenizer_config.json", "{}"),
            ("model.safetensors.index.json", SHARDED_INDEX),
            ("model-00001-of-00002.safetensors", "x"),
            ("model-00002-of-00002.safetensors", "y"),
        ]
    }

    #[test]
    fn parse_local_paths() {
        for s in ["/abs/path", "./rel", "../up", ".", "..", "./org/name@v1"] {
            assert_eq!(
                s.parse::<ModelRef>().unwrap(),
                ModelRef::LocalDir(PathBuf::from(s)),
                "{s}"
            );
        }
        if let Some(home) = home_dir() {
            assert_eq!(
                "~".parse::<ModelRef>().unwrap(),
                ModelRef::LocalDir(home.clone())
            );
            assert_eq!(
                "~/m/x".parse::<ModelRef>().unwrap(),
                ModelRef::LocalDir(home.join("m/x"))
            );
        }
        // An existing relative path wins over the repo-id reading (tests run in the crate root).
        assert!(Path::new("src/gguf").is_dir());
        assert_eq!(
            "src/gguf".parse::<ModelRef>().unwrap(),
            ModelRef::LocalDir("src/gguf".into())
        );
        assert_eq!(
            "src".parse::<ModelRef>().unwrap(),
            ModelRef::LocalDir("src".into())
        );
    }

    #[test]
    fn parse_hub_ids() {
        assert_eq!(
            hub("HuggingFaceTB/SmolLM2-135M-Instruct"),
            ModelRef::Hub {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: None
            }
        );
        assert_eq!(
            hub("meta-llama/Llama-3.2-1B@main"),
            ModelRef::Hub {
                repo: "meta-llama/Llama-3.2-1B".into(),
                revision: Some("main".into())
            }
        );
        assert_eq!(
            hub(&format!("Qwen/Qwen2.5-0.5B@{COMMIT}")),
            ModelRef::Hub {
                repo: "Qwen/Qwen2.5-0.5B".into(),
                revision: Some(COMMIT.into())
            }
        );
        assert_eq!(
            hub("org/name_v1.5@refs/pr/1"),
            ModelRef::Hub {
                repo: "org/name_v1.5".into(),
                revision: Some("refs/pr/1".into())
            }
        );
        assert_eq!(hub("org/name@v1").to_string(), "org/name@v1");
        assert_eq!(hub("org/name").revision_or_main(), Some("main"));
    }

    #[test]
    fn parse_rejects_malformed() {
        let long = format!("org/{}", "a".repeat(100));
        for s in [
            "",
            "   ",
            "gpt2-does-not-exist-here",
            "org/",
            "/name", // absolute path: parses as LocalDir, checked separately below
            "org/name/extra",
            "org name/x",
            "org/na me",
            "org/name@",
            "org/name@a b",
            "org/name@../../etc",
            "org/name@refs//x",
            "org/-name",
            "org/name.",
            "org/na--me",
            "org/na..me",
            "or!g/name",
            "org/näme",
            "org/name@v1@v2",
            long.as_str(),
        ] {
            if s == "/name" {
                assert!(matches!(s.parse::<ModelRef>(), Ok(ModelRef::LocalDir(_))));
                continue;
            }
            let err = s.parse::<ModelRef>().expect_err(s);
            assert!(matches!(err, SourceError::InvalidRef { .. }), "{s}: {err}");
            assert!(err.to_string().contains("invalid model reference"), "{err}");
        }
        let err = "gpt2".parse::<ModelRef>().unwrap_err().to_string();
        assert!(err.contains("org/name"), "{err}");
    }

    #[test]
    fn local_dir_passthrough() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("config.json"), "{}").unwrap();
        let r = ModelRef::LocalDir(tmp.path().to_path_buf());
        let resolver = Resolver::with_cache_dir(tmp.path().join("no-cache"));
        assert_eq!(resolver.resolve(&r, &offline()).unwrap(), tmp.path());

        let missing = ModelRef::LocalDir(tmp.path().join("nope"));
        assert!(matches!(
            resolver.resolve(&missing, &offline()),
            Err(SourceError::LocalNotFound(_))
        ));
        let file = ModelRef::LocalDir(tmp.path().join("config.json"));
        assert!(matches!(
            resolver.resolve(&file, &offline()),
            Err(SourceError::NotADirectory(_))
        ));
        let empty = tempfile::tempdir().unwrap();
        let r = ModelRef::LocalDir(empty.path().to_path_buf());
        assert!(matches!(
            resolver.resolve(&r, &offline()),
            Err(SourceError::MissingConfig(_))
        ));
    }

    #[test]
    fn resolves_cached_ref_main() {
        let cache = tempfile::tempdir().unwrap();
        let snap = write_snapshot(cache.path(), "org/tiny", COMMIT, &sharded_files());
        write_ref(cache.path(), "org/tiny", "main", COMMIT);
        let resolver = Resolver::with_cache_dir(cache.path());
        assert_eq!(
            resolver.resolve(&hub("org/tiny"), &offline()).unwrap(),
            snap
        );
        assert_eq!(
            resolver.resolve(&hub("org/tiny@main"), &offline()).unwrap(),
            snap
        );
        // A ref file with a trailing newline (as some tools write it) works too.
        write_ref(cache.path(), "org/tiny", "v1.0", &format!("{COMMIT}\n"));
        assert_eq!(
            resolver.resolve(&hub("org/tiny@v1.0"), &offline()).unwrap(),
            snap
        );
    }

    #[test]
    fn resolves_commit_hash_and_branch_refs() {
        let cache = tempfile::tempdir().unwrap();
        let single = [
            ("config.json", "{}"),
            ("tokenizer.json", "{}"),
            ("model.safetensors", "w"),
        ];
        let old = write_snapshot(cache.path(), "org/tiny", COMMIT, &single);
        let new = write_snapshot(cache.path(), "org/tiny", OTHER_COMMIT, &single);
        write_ref(cache.path(), "org/tiny", "main", OTHER_COMMIT);
        write_ref(cache.path(), "org/tiny", "refs/pr/1", COMMIT);
        let resolver = Resolver::with_cache_dir(cache.path());
        assert_eq!(resolver.resolve(&hub("org/tiny"), &offline()).unwrap(), new);
        // A commit hash needs no ref file.
        assert_eq!(
            resolver
                .resolve(&hub(&format!("org/tiny@{COMMIT}")), &offline())
                .unwrap(),
            old
        );
        assert_eq!(
            resolver
                .resolve(&hub("org/tiny@refs/pr/1"), &offline())
                .unwrap(),
            old
        );
        // An unknown branch is not silently replaced by some other snapshot.
        let err = resolver
            .resolve(&hub("org/tiny@dev"), &offline())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no refs/dev"), "{err}");
    }

    #[test]
    fn missing_shard_is_an_error_naming_both_places() {
        let cache = tempfile::tempdir().unwrap();
        let files: Vec<_> = sharded_files()
            .into_iter()
            .filter(|(n, _)| *n != "model-00002-of-00002.safetensors")
            .collect();
        write_snapshot(cache.path(), "org/tiny", COMMIT, &files);
        write_ref(cache.path(), "org/tiny", "main", COMMIT);
        let resolver = Resolver::with_cache_dir(cache.path());
        let err = resolver.resolve(&hub("org/tiny"), &offline()).unwrap_err();
        let SourceError::Unavailable {
            ref cache_dir,
            cache: ref why,
            ref hub,
            ref url,
            ..
        } = err
        else {
            panic!("unexpected {err}")
        };
        assert_eq!(cache_dir, &cache.path().join("models--org--tiny"));
        assert!(why.contains("model-00002-of-00002.safetensors"), "{why}");
        assert!(!why.contains("model-00001-of-00002.safetensors"), "{why}");
        assert!(hub.contains("disabled"), "{hub}");
        assert_eq!(url, "https://huggingface.co/org/tiny");
        let msg = err.to_string();
        assert!(
            msg.contains("models--org--tiny") && msg.contains("https://huggingface.co/org/tiny"),
            "{msg}"
        );
    }

    #[test]
    fn dangling_symlink_counts_as_missing() {
        let cache = tempfile::tempdir().unwrap();
        let snap = write_snapshot(
            cache.path(),
            "org/tiny",
            COMMIT,
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                ("model.safetensors", "w"),
            ],
        );
        write_ref(cache.path(), "org/tiny", "main", COMMIT);
        let blob = fs::canonicalize(snap.join("model.safetensors")).unwrap();
        fs::remove_file(blob).unwrap();
        let err = Resolver::with_cache_dir(cache.path())
            .resolve(&hub("org/tiny"), &offline())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing model.safetensors"), "{err}");
    }

    #[test]
    fn missing_tokenizer_and_bad_index() {
        let cache = tempfile::tempdir().unwrap();
        write_snapshot(
            cache.path(),
            "org/a",
            COMMIT,
            &[("config.json", "{}"), ("model.safetensors", "w")],
        );
        write_ref(cache.path(), "org/a", "main", COMMIT);
        write_snapshot(
            cache.path(),
            "org/b",
            COMMIT,
            &[
                ("config.json", "{}"),
                ("tokenizer.json", "{}"),
                (WEIGHTS_INDEX, r#"{"weight_map": {"x": "../../evil"}}"#),
            ],
        );
        write_ref(cache.path(), "org/b", "main", COMMIT);
        let resolver = Resolver::with_cache_dir(cache.path());
        let err = resolver
            .resolve(&hub("org/a"), &offline())
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing tokenizer.json"), "{err}");
        let err = resolver.resolve(&hub("org/b"), &offline()).unwrap_err();
        assert!(matches!(err, SourceError::InvalidIndex { .. }), "{err}");
    }

    #[test]
    fn not_cached_offline() {
        let cache = tempfile::tempdir().unwrap();
        let err = Resolver::with_cache_dir(cache.path())
            .resolve(&hub("org/absent@v2"), &offline())
            .unwrap_err()
            .to_string();
        assert!(err.contains("org/absent@v2"), "{err}");
        assert!(err.contains("not in the cache"), "{err}");
        assert!(
            err.contains(
                &cache
                    .path()
                    .join("models--org--absent")
                    .display()
                    .to_string()
            ),
            "{err}"
        );
        assert!(err.contains("downloads are disabled"), "{err}");
    }

    /// With downloads allowed but the endpoint unreachable, the failure is quick and names both
    /// the cache and the Hub. (A refused local port stands in for "no network".)
    #[test]
    fn unreachable_hub_fails_fast() {
        let cache = tempfile::tempdir().unwrap();
        let resolver = Resolver::with_cache_dir(cache.path()).endpoint("http://127.0.0.1:1");
        let start = Instant::now();
        let err = resolver
            .resolve(
                &hub("org/absent"),
                &ResolveOptions {
                    allow_download: true,
                    progress: false,
                },
            )
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        let msg = err.to_string();
        assert!(matches!(err, SourceError::Unavailable { .. }), "{msg}");
        assert!(
            msg.contains("not in the cache") && msg.contains("http://127.0.0.1:1/org/absent"),
            "{msg}"
        );
        // Either the probe or (with a proxy configured) the HTTP client reports the failure.
        assert!(
            msg.contains("unreachable") || msg.contains("cannot list"),
            "{msg}"
        );
        // Nothing was written into the cache.
        assert!(!cache
            .path()
            .join("models--org--absent")
            .join("refs")
            .exists());
    }

    /// Against the real Hub (`cargo test -p flint-models source -- --ignored --nocapture`): a repo
    /// that does not exist fails with a clear message, quickly, with or without network.
    #[test]
    #[ignore = "talks to huggingface.co"]
    fn real_hub_missing_repo() {
        let cache = tempfile::tempdir().unwrap();
        let start = Instant::now();
        let err = Resolver::with_cache_dir(cache.path())
            .resolve(
                &hub("flint-test/no-such-model-xyz"),
                &ResolveOptions {
                    allow_download: true,
                    progress: false,
                },
            )
            .unwrap_err();
        eprintln!("{err}\n(after {:?})", start.elapsed());
        assert!(matches!(err, SourceError::Unavailable { .. }));
        assert!(start.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn index_shards_are_deduplicated() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(WEIGHTS_INDEX);
        fs::write(&p, SHARDED_INDEX).unwrap();
        assert_eq!(
            read_index_shards(&p).unwrap(),
            vec![
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors"
            ]
        );
        fs::write(&p, "{").unwrap();
        assert!(matches!(
            read_index_shards(&p),
            Err(SourceError::InvalidIndex { .. })
        ));
    }
}
