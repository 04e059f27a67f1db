//! Runtime model management over HTTP: the admin routes (load, unload, switch, status, logs),
//! several models at once, 503 while a model loads, idle unload, the catalog, and per-model
//! `/health`, `/ready` and `/metrics`.

mod common;
mod registry_common;

use std::{
    path::Path,
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use axum::http::StatusCode;
use common::*;
use flint_server::{
    api::Served,
    registry::{Catalog, Launch, Launcher, LoadRequest},
};
use registry_common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn admin_routes_need_a_key() {
    let s = server();
    let r = send(&s.app, get("/admin/models")).await;
    assert!(r.error(StatusCode::FORBIDDEN, None)["message"].as_str().unwrap().contains("--api-key"));
    let s = setup();
    send(&s.app, get("/admin/models")).await.error(StatusCode::UNAUTHORIZED, None);
    send(&s.app, post("/admin/models/load", &json!({"model": "a"}))).await.error(StatusCode::UNAUTHORIZED, None);
    let logs = admin_get(&s.app, "/admin/logs?limit=5").await.ok();
    assert_eq!(logs["object"], "list");
    admin_get(&s.app, "/admin/logs?limit=0").await.error(StatusCode::BAD_REQUEST, Some("limit"));
}

#[tokio::test]
async fn load_use_unload_and_switch() {
    let s = setup();
    let r = admin_post(&s.app, "/admin/models/load", json!({"model": "a", "wait": true})).await.ok();
    assert_eq!((r["name"].as_str(), r["status"].as_str()), (Some("a"), Some("ready")));
    let body = json!({"model": "b", "wait": true, "max_model_len": 128, "kv_cache_memory": "2MiB", "dtype": "f32",
        "keep_alive": "-1"});
    let b = admin_post(&s.app, "/admin/models/load", body).await.ok();
    assert_eq!(b["max_model_len"], 128);
    assert_eq!(b["dtype"], "f32");
    assert_eq!(b["keep_alive_s"], Value::Null);
    let mem = &b["memory"];
    assert!(mem["weights_bytes"].as_u64().unwrap() > 0 && mem["kv_cache_bytes"].as_u64().unwrap() <= 2 << 20, "{mem}");
    assert_eq!(
        mem["total_bytes"].as_u64(),
        Some(mem["weights_bytes"].as_u64().unwrap() + mem["kv_cache_bytes"].as_u64().unwrap())
    );

    // Both answer, identically (the same weights), and both are listed.
    assert_eq!(model_ids(&s.app).await, ["a", "b"]);
    let text = |r: Resp| r.ok()["choices"][0]["text"].as_str().unwrap().to_owned();
    assert_eq!(text(complete(&s.app, "a").await), text(complete(&s.app, "b:latest").await));
    let list = admin_get(&s.app, "/admin/models").await.ok();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        list["catalog"],
        json!([{"name": "cat", "source": s.root.path().join("a").display().to_string(), "loaded": false}])
    );

    // Unload: gone from the lists; its name is now unknown.
    let r = admin_post(&s.app, "/admin/models/unload", json!({"model": "b"})).await.ok();
    assert_eq!(r, json!({"name": "b", "status": "unloaded"}));
    assert_eq!(model_ids(&s.app).await, ["a"]);
    complete(&s.app, "b").await.error(StatusCode::NOT_FOUND, Some("model"));
    admin_get(&s.app, "/admin/models/b").await.error(StatusCode::NOT_FOUND, Some("name"));

    // Switch a → b while requests keep coming: each one is answered by a or by b.
    let app = s.app.clone();
    let traffic = tokio::spawn(async move {
        let mut answered = (0, 0);
        for _ in 0..200 {
            let ra = complete(&app, "a").await;
            if ra.status == StatusCode::OK {
                answered.0 += 1;
                continue;
            }
            let rb = complete(&app, "b").await;
            assert_eq!(rb.status, StatusCode::OK, "neither a ({}) nor b answers: {}", ra.text(), rb.text());
            answered.1 += 1;
            if answered.1 >= 5 {
                break;
            }
        }
        answered
    });
    let r = admin_post(&s.app, "/admin/models/switch", json!({"from": "a", "model": "b"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let (by_a, by_b) = traffic.await.unwrap();
    assert!(by_b >= 5, "b never took over ({by_a} answered by a)");
    for _ in 0..500 {
        if model_ids(&s.app).await == ["b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(model_ids(&s.app).await, ["b"]);

    // Switching waits for the new model when asked to; a catalog name loads from the catalog.
    let r = admin_post(&s.app, "/admin/models/switch", json!({"from": "b", "model": "cat", "wait": true})).await.ok();
    assert_eq!((r["name"].as_str(), r["keep_alive_s"].as_f64()), (Some("cat"), Some(600.0)));
    assert_eq!(model_ids(&s.app).await, ["cat"]);
}

#[tokio::test]
async fn bad_load_requests_name_the_field() {
    let s = setup();
    let bad = StatusCode::BAD_REQUEST;
    let load = |body: Value| admin_post(&s.app, "/admin/models/load", body);
    let outside = tempfile::tempdir().unwrap();
    for (body, param) in [
        (json!({}), "model"),
        (json!({"model": "../../etc"}), "model"),
        (json!({"model": outside.path().to_str().unwrap()}), "model"),
        (json!({"model": "missing"}), "model"),
        (json!({"model": "a", "dtype": "int3"}), "dtype"),
        (json!({"model": "a", "max_model_len": 0}), "max_model_len"),
        (json!({"model": "a", "kv_cache_memory": "lots"}), "kv_cache_memory"),
        (json!({"model": "a", "gpu_memory_utilization": 2.0}), "gpu_memory_utilization"),
        (json!({"model": "a", "keep_alive": "soon"}), "keep_alive"),
        (json!({"model": "a", "name": "a b"}), "name"),
        (json!({"model": 5}), "model"),
    ] {
        load(body.clone()).await.error(bad, Some(param));
    }
    // A directory without config.json.
    std::fs::create_dir_all(s.root.path().join("empty")).unwrap();
    let e = load(json!({"model": "empty"})).await.error(bad, Some("model"));
    assert!(e["message"].as_str().unwrap().contains("config.json"), "{e}");
    assert!(admin_get(&s.app, "/admin/models").await.ok()["data"].as_array().unwrap().is_empty());

    // A name in use is a conflict; unloading an unknown model is a 404.
    load(json!({"model": "a", "wait": true})).await.ok();
    load(json!({"model": "b", "name": "a"})).await.error(StatusCode::CONFLICT, Some("name"));
    admin_post(&s.app, "/admin/models/unload", json!({"model": "zz"}))
        .await
        .error(StatusCode::NOT_FOUND, Some("model"));
    admin_post(&s.app, "/admin/models/switch", json!({"from": "zz", "model": "b"}))
        .await
        .error(StatusCode::NOT_FOUND, Some("from"));
    admin_post(&s.app, "/admin/models/switch", json!({"from": "a", "model": "b", "name": "a"}))
        .await
        .error(bad, Some("name"));

    // Corrupt weights: the load fails with the reason, the model is listed as failed, and a
    // later load under that name replaces the failed entry.
    let broken = s.root.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in std::fs::read_dir(s.root.path().join("b")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), broken.join(f.file_name())).unwrap();
    }
    std::fs::write(broken.join("model.safetensors"), b"not safetensors").unwrap();
    let e = load(json!({"model": "broken", "wait": true})).await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert!(e["message"].as_str().unwrap().contains("failed to load"), "{e}");
    let st = admin_get(&s.app, "/admin/models/broken").await.ok();
    assert_eq!(st["status"], "failed");
    assert!(st["error"].as_str().unwrap().contains("model.safetensors"), "{st}");
    complete(&s.app, "broken").await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert_eq!(model_ids(&s.app).await, ["a"]);
    load(json!({"model": "b", "name": "broken", "wait": true})).await.ok();
    assert_eq!(model_ids(&s.app).await, ["a", "broken"]);
}

/// Loads through the real launcher once the test lets it go.
struct Gate {
    inner: Launcher,
    open: Mutex<mpsc::Receiver<()>>,
}

impl Launch for Gate {
    fn launch(&self, req: &LoadRequest, progress: &dyn Fn(&'static str)) -> anyhow::Result<Served> {
        progress("waiting for the test");
        self.open.lock().unwrap().recv()?;
        self.inner.launch(req, progress)
    }
}

#[tokio::test]
async fn a_loading_model_answers_503_and_others_keep_serving() {
    let (tx, rx) = mpsc::channel();
    let s = setup_with(Arc::new(Gate { inner: launcher(), open: Mutex::new(rx) }));
    tx.send(()).unwrap();
    admin_post(&s.app, "/admin/models/load", json!({"model": "a", "wait": true})).await.ok();

    let r = admin_post(&s.app, "/admin/models/load", json!({"model": "b"})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.json()["status"], "loading");
    let mut st = Value::Null;
    for _ in 0..200 {
        st = admin_get(&s.app, "/admin/models/b").await.ok();
        if st["progress"]["phase"] != "queued" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        (st["status"].as_str(), st["progress"]["phase"].as_str()),
        (Some("loading"), Some("waiting for the test"))
    );
    let r = complete(&s.app, "b").await;
    let e = r.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert_eq!(e["code"], "model_loading");
    assert!(e["message"].as_str().unwrap().contains("is loading"), "{e}");
    assert!(r.header("retry-after").is_some());
    send(&s.app, get("/ready?model=b")).await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert_eq!(send(&s.app, get("/health?model=b")).await.ok()["status"], "loading");
    // The other model is not held up, and only it is listed.
    complete(&s.app, "a").await.ok();
    assert_eq!(model_ids(&s.app).await, ["a"]);
    admin_post(&s.app, "/admin/models/unload", json!({"model": "b"})).await.error(StatusCode::CONFLICT, Some("model"));

    tx.send(()).unwrap();
    s.state.registry.wait_ready("b").await.unwrap();
    complete(&s.app, "b").await.ok();
    assert_eq!(send(&s.app, get("/ready?model=b")).await.ok()["status"], "ready");
    assert_eq!(send(&s.app, get("/health?model=b")).await.ok()["status"], "ready");
    send(&s.app, get("/health?model=zz")).await.error(StatusCode::NOT_FOUND, Some("model"));
    assert_eq!(send(&s.app, get("/ready")).await.ok(), json!({"status": "ready", "models": ["a", "b"]}));

    // /metrics has a series per model.
    let text = send(&s.app, authed(get("/metrics"))).await.text();
    for m in ["a", "b"] {
        assert!(text.contains(&format!("vllm:num_requests_running{{model_name=\"{m}\"}} 0")), "{text}");
    }
    assert!(text.contains("flint_models_loaded 2"), "{text}");
}

#[tokio::test]
async fn idle_models_are_unloaded_after_their_keep_alive() {
    let s = setup();
    s.state.registry.spawn_reaper(Duration::from_millis(50));
    let r =
        admin_post(&s.app, "/admin/models/load", json!({"model": "a", "wait": true, "keep_alive": "1s"})).await.ok();
    assert_eq!(r["keep_alive_s"], 1.0);
    assert!(r["expires_at"].is_string(), "{r}");
    admin_post(&s.app, "/admin/models/load", json!({"model": "b", "wait": true})).await.ok();
    complete(&s.app, "a").await.ok();
    for _ in 0..100 {
        if model_ids(&s.app).await == ["b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(model_ids(&s.app).await, ["b"], "a was not unloaded after 1 s idle");
    assert!(admin_get(&s.app, "/admin/models").await.ok()["data"].as_array().unwrap().len() == 1);
}

#[test]
fn catalog_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("models.toml");
    std::fs::write(&path, "[models.x]\ndtype = \"f32\"\n").unwrap();
    let e = Catalog::load(&path).unwrap_err().to_string();
    assert!(e.contains("models.toml") && e.contains("[models.x]"), "{e}");
    assert!(Catalog::load(Path::new("/nonexistent/models.toml"))
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/models.toml"));
}
