//! Helpers for the tests of runtime model management (admin routes, supervision): a registry
//! that loads through the real launcher from a `--model-root` holding copies of the tiny model
//! as `a` and `b` (and a catalog naming `a` as `cat`), and authed requests.

#![allow(dead_code)]

use std::sync::Arc;

use axum::{
    body::Body,
    http::{header, Request},
    Router,
};
use flint_engine::{
    models::{Device, LoadOptions},
    EngineConfig, KvCacheBudget,
};
use flint_server::{
    api::{self, AppState, ServerConfig},
    registry::{Catalog, KeepAlive, Launch, LaunchSettings, Launcher, ModelRegistry},
};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::common::{completion, config, get, model_dir, post, send, Resp};

pub const KEY: &str = "k";

pub fn authed(req: Request<Body>) -> Request<Body> {
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(header::AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
    Request::from_parts(parts, body)
}

pub async fn admin_get(app: &Router, uri: &str) -> Resp {
    send(app, authed(get(uri))).await
}

pub async fn admin_post(app: &Router, uri: &str, body: Value) -> Resp {
    send(app, authed(post(uri, &body))).await
}

pub fn launcher() -> Launcher {
    // The model directory is each load's own.
    let mut template = EngineConfig::new("", LoadOptions { device: Device::Cpu, dtype: None, quantization: None });
    template.block_size = 4;
    template.kv_cache = KvCacheBudget::Bytes(4 << 20);
    template.max_num_seqs = 8;
    let settings = LaunchSettings {
        convert_dir: std::env::temp_dir().join("flint-admin-test-converted"),
        allow_download: false,
        keep_alive: KeepAlive::Forever,
    };
    Launcher::new(template, settings)
}

pub struct Setup {
    pub app: Router,
    pub state: Arc<AppState>,
    pub root: TempDir,
}

/// A server loading through `launch`, its registry set up by `configure`.
pub fn setup_registry(launch: Arc<dyn Launch>, configure: impl FnOnce(&mut ModelRegistry)) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let src = model_dir();
    for name in ["a", "b"] {
        let to = root.path().join(name);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(src.path()).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
        }
    }
    let catalog = Catalog::parse("[models.cat]\npath = \"a\"\nkeep_alive = \"10m\"\n", root.path()).unwrap();
    let mut registry = ModelRegistry::new(Some(launch), catalog);
    configure(&mut registry);
    let cfg =
        ServerConfig { api_key: Some(KEY.into()), model_roots: vec![root.path().canonicalize().unwrap()], ..config() };
    let state = AppState::with_registry(cfg, Arc::new(registry));
    state.set_started();
    Setup { app: api::router(state.clone()), state, root }
}

pub fn setup_with(launch: Arc<dyn Launch>) -> Setup {
    setup_registry(launch, |_| {})
}

pub fn setup() -> Setup {
    setup_with(Arc::new(launcher()))
}

/// A completion on `model` (authed), greedy.
pub async fn complete(app: &Router, model: &str) -> Resp {
    send(app, authed(post("/v1/completions", &completion(json!({"model": model}))))).await
}

pub async fn model_ids(app: &Router) -> Vec<String> {
    let list = send(app, authed(get("/v1/models"))).await.ok();
    list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}
