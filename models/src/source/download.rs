//! Downloading a model from the Hugging Face Hub into the local cache with `hf-hub`:
//! `Resolver::download` pins the commit, fetches the required files, weights and shards, and
//! records the ref; `probe_endpoint` fails fast when the endpoint is unreachable.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use super::{
    is_commit_hash, missing_files, read_index_shards, Resolver, REQUIRED_FILES, SINGLE_WEIGHTS,
    WEIGHTS_INDEX,
};

/// Files fetched when the repo has them.
const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "generation_config.json"];

/// How long the reachability check before a download may take in total.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolver {
    /// Downloads the files of `repo@revision` that the cache lacks into the cache, and returns
    /// the snapshot directory. Errors are plain reasons, to go into
    /// [`super::SourceError::Unavailable`].
    pub(super) fn download(
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
