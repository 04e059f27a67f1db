//! vLLM's LoRA adapter routes: `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter`.
//! A loaded adapter is served under its `lora_name`: requests pass it as `model`.
//!
//! Adapters load only from inside `--lora-dir`: `lora_path` (relative to that directory, or
//! absolute) must resolve, after `..` and symlinks, to a directory inside it, so that clients
//! cannot make the server read files anywhere else. A path that lexically points outside is
//! refused before the filesystem is touched, so answers tell nothing about files out there.
//! Success answers are plain text, as vLLM's are; errors are OpenAI error bodies.

use std::{
    path::{Component, Path, PathBuf},
    sync::Arc,
};

use axum::{extract::State, http::StatusCode};
use flint_engine::EngineError;

use super::{
    error::ApiError,
    types::{ErrorBody, LoadLoraAdapterRequest, UnloadLoraAdapterRequest},
    AppState, JsonBody, Served,
};

/// Load a LoRA adapter (PEFT format) from `--lora-dir` and serve it as `lora_name`.
#[utoipa::path(post, path = "/v1/load_lora_adapter", request_body = LoadLoraAdapterRequest,
    responses((status = 200, description = "`Success: LoRA adapter '<name>' added successfully.`",
        body = String, content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn load_lora_adapter(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<LoadLoraAdapterRequest>,
) -> Result<(StatusCode, String), ApiError> {
    let served = base_model(&state, req.model.as_deref())?;
    if served.engine.info().lora.is_none() {
        return Err(EngineError::LoraDisabled.into());
    }
    check_name(&served.name, &req.lora_name)?;
    if state.registry.state(&req.lora_name).is_some() {
        return Err(ApiError::invalid("lora_name", format!("`{}` is the name of a served model; choose another", req.lora_name)));
    }
    let Some(dir) = &state.config.lora_dir else {
        return Err(ApiError::invalid(
            "lora_path",
            "loading adapters at runtime is off: start the server with --lora-dir DIR to load adapters from DIR",
        ));
    };
    let path = confine(dir, &req.lora_path, "lora_path", "--lora-dir")?;
    served.engine.load_adapter(&req.lora_name, path).await?;
    Ok((StatusCode::OK, format!("Success: LoRA adapter '{}' added successfully.", req.lora_name)))
}

/// Stop serving the LoRA adapter `lora_name` (requests already using it finish first).
#[utoipa::path(post, path = "/v1/unload_lora_adapter", request_body = UnloadLoraAdapterRequest,
    responses((status = 200, description = "`Success: LoRA adapter '<name>' removed successfully.`",
        body = String, content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unload_lora_adapter(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<UnloadLoraAdapterRequest>,
) -> Result<(StatusCode, String), ApiError> {
    let served = match state.resolve(&req.lora_name) {
        Ok((served, Some(_))) => served,
        Ok((served, None)) => {
            check_name(&served.name, &req.lora_name)?;
            return Err(ApiError::invalid("lora_name", format!("`{}` is a model, not a LoRA adapter", req.lora_name)));
        }
        _ if !state.registry.ready().iter().any(|m| m.engine.info().lora.is_some()) => {
            return Err(EngineError::LoraDisabled.into())
        }
        _ => {
            return Err(ApiError::not_found(format!("no LoRA adapter named `{}` is loaded", req.lora_name))
                .with_param("lora_name"))
        }
    };
    served.engine.unload_adapter(&req.lora_name).map_err(|e| {
        let mut e = ApiError::from(e);
        if e.status == StatusCode::NOT_FOUND {
            e.param = Some("lora_name".into());
        }
        e
    })?;
    Ok((StatusCode::OK, format!("Success: LoRA adapter '{}' removed successfully.", req.lora_name)))
}

/// The model a new adapter goes on: `model` when given, else the only ready model.
fn base_model(state: &AppState, model: Option<&str>) -> Result<Arc<Served>, ApiError> {
    if let Some(m) = model {
        return match state.resolve(m)? {
            (served, None) => Ok(served),
            (_, Some(_)) => Err(ApiError::invalid("model", format!("`{m}` is a LoRA adapter, not a base model"))),
        };
    }
    let mut ready = state.registry.ready();
    match ready.len() {
        1 => Ok(ready.remove(0)),
        0 => Err(ApiError::not_ready()),
        _ => Err(ApiError::invalid("model", "several models are served: name the base model in `model`")),
    }
}

/// An adapter name must be non-empty and differ from the base model's name (`base`).
pub fn check_name(base: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() {
        return Err(ApiError::invalid("lora_name", "`lora_name` must not be empty"));
    }
    if name == base {
        return Err(ApiError::invalid(
            "lora_name",
            format!("`lora_name` `{name}` is the base model's name; choose another name for the adapter"),
        ));
    }
    Ok(())
}

/// `raw` (relative to `dir`, or absolute) as a canonical path inside `dir`; 400 naming
/// `param` otherwise (`flag`: the option that set `dir`, for the message). Directories only,
/// unless `raw` ends in `.gguf`.
pub fn confine(dir: &Path, raw: &str, param: &str, flag: &str) -> Result<PathBuf, ApiError> {
    let bad = |msg: String| ApiError::invalid(param, msg);
    if raw.trim().is_empty() {
        return Err(bad(format!("`{param}` must not be empty")));
    }
    let outside = || bad(format!("`{param}` {raw:?} is outside the allowed directory ({flag})"));
    let unreadable = |e: std::io::Error| ApiError::internal(format!("the directory given by {flag} cannot be read: {e}"));
    let dir = std::path::absolute(dir).map_err(unreadable)?;
    let root = std::fs::canonicalize(&dir).map_err(unreadable)?;
    // An absolute `raw` replaces `dir` in the join.
    let joined = dir.join(raw);
    let lexical = lexical_normal(&joined).ok_or_else(outside)?;
    let dir_normal = lexical_normal(&dir).unwrap_or_else(|| dir.clone());
    if !lexical.starts_with(&dir_normal) && !lexical.starts_with(&root) {
        return Err(outside());
    }
    let real = std::fs::canonicalize(&joined).map_err(|e| bad(format!("`{param}` {raw:?} cannot be opened: {e}")))?;
    // A symlink inside the directory that points out of it.
    if !real.starts_with(&root) {
        return Err(outside());
    }
    let gguf = real.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if !(real.is_dir() || gguf && real.is_file()) {
        return Err(bad(format!("`{param}` {raw:?} is not a directory")));
    }
    Ok(real)
}

/// `p` with `.` dropped and `..` applied to the components before it, without reading the
/// filesystem; `None` when `..` climbs above the root.
fn lexical_normal(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::Normal(_) => out.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if !matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    return None;
                }
                out.pop();
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normal_applies_dots() {
        let n = |s: &str| lexical_normal(Path::new(s));
        assert_eq!(n("/a/./b/../c"), Some(PathBuf::from("/a/c")));
        assert_eq!(n("/a/b/../../c"), Some(PathBuf::from("/c")));
        assert_eq!(n("/a/../.."), None);
        assert_eq!(n("a/../../b"), None);
    }

    fn confine_lora(dir: &Path, raw: &str) -> Result<PathBuf, ApiError> {
        confine(dir, raw, "lora_path", "--lora-dir")
    }

    #[test]
    fn paths_stay_inside_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("adapters");
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::create_dir_all(tmp.path().join("secret")).unwrap();
        std::fs::write(dir.join("file"), "x").unwrap();
        let root = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(confine_lora(&dir, "a").unwrap(), root.join("a"));
        assert_eq!(confine_lora(&dir, "a/b/..").unwrap(), root.join("a"));
        assert_eq!(confine_lora(&dir, dir.join("a/b").to_str().unwrap()).unwrap(), root.join("a/b"));
        let param = |r: Result<PathBuf, ApiError>| {
            let e = r.unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
            assert_eq!(e.param.as_deref(), Some("lora_path"));
            e.message
        };
        for outside in ["../secret", "a/../../secret", "/etc", "../../../../../../etc"] {
            assert!(param(confine_lora(&dir, outside)).contains("outside the allowed directory (--lora-dir)"), "{outside}");
        }
        let secret = tmp.path().join("secret");
        assert!(param(confine_lora(&dir, secret.to_str().unwrap())).contains("outside"));
        // Missing paths outside are refused as outside, without looking at them.
        assert!(param(confine_lora(&dir, "../nothing-here")).contains("outside"));
        assert!(param(confine_lora(&dir, "nothing-here")).contains("cannot be opened"));
        assert!(param(confine_lora(&dir, "file")).contains("not a directory"));
        assert!(param(confine_lora(&dir, " ")).contains("empty"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&secret, dir.join("link")).unwrap();
            assert!(param(confine_lora(&dir, "link")).contains("outside"));
            std::os::unix::fs::symlink(dir.join("a"), dir.join("inner")).unwrap();
            assert_eq!(confine_lora(&dir, "inner").unwrap(), root.join("a"));
        }
    }
}
