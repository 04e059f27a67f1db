//! The local Hugging Face hub cache (`models--org--name/{refs,snapshots,blobs}`, the layout
//! `huggingface_hub` and `hf-hub` share): where it is ([`default_cache_dir`]), which snapshot a
//! revision names, and whether a snapshot holds a complete model ([`read_index_shards`] lists
//! the shards a sharded checkpoint needs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{home_dir, SourceError, REQUIRED_FILES, SINGLE_WEIGHTS, WEIGHTS_INDEX};

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

pub(super) fn hf_home() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HOME")
        .or_else(|| var("XDG_CACHE_HOME").map(|x| x.join("huggingface")))
        .or_else(|| home_dir().map(|h| h.join(".cache").join("huggingface")))
}

/// Finds `snapshots/<commit>` for `revision` in a cached repo folder: through `refs/<revision>`
/// (branches, tags), or directly when `revision` is a commit hash. `Err` is a reason.
pub(super) fn find_cached_snapshot(repo_dir: &Path, revision: &str) -> Result<PathBuf, String> {
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
pub(super) fn missing_files(dir: &Path) -> Result<Vec<String>, SourceError> {
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
