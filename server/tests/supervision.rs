//! Engine supervision and bounded stops, end to end: an engine that panics or fails a step
//! makes its model `failed` (503 on `/ready`, the reason in `/admin/models` and `/health`), its
//! requests end with a 500 or an error chunk naming the failure, and the registry restarts it
//! a bounded number of times; an unload past its drain time stops the engine under running
//! requests; `flint serve` exits within `--shutdown-timeout` of SIGTERM whatever still runs.
//! `/health` answers within 1 s throughout.

mod common;
mod registry_common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{http::StatusCode, Router};
use common::*;
use flint_engine::{FaultKind, LoraSettings};
use flint_server::api::Served;
use registry_common::*;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A registry restarting failed engines at most `max_restarts` times, 50 ms apart, with LoRA
/// on.
fn supervised(max_restarts: u32) -> Setup {
    let mut launch = launcher();
    launch.template.lora = Some(LoraSettings { max_loras: 2, max_lora_rank: 16 });
    setup_registry(Arc::new(launch), |r| {
        r.max_restarts = max_restarts;
        r.restart_backoff = Duration::from_millis(50);
        r.drain_timeout = Duration::from_millis(200);
    })
}

/// Loads `name` from the model root and returns it once ready.
async fn load(s: &Setup, name: &str) -> Arc<Served> {
    admin_post(&s.app, "/admin/models/load", json!({"model": name, "wait": true})).await.ok();
    s.state.registry.resolve(name).unwrap().0
}

/// `/health` answers 200 within 1 s.
async fn health_is_quick(app: &Router) {
    let t = Instant::now();
    assert_eq!(send(app, get("/health")).await.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_secs(1), "/health took {:?}", t.elapsed());
}

/// Polls `/admin/models/{name}` (30 s at most) until `done` holds; returns that status.
async fn wait_status(app: &Router, name: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..600 {
        let r = admin_get(app, &format!("/admin/models/{name}")).await;
        if r.status == StatusCode::OK {
            last = r.json();
            if done(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{name}` never got there; last status {last}");
}

/// A long greedy completion on `model`; `stream` as asked.
fn long_request(model: &str, stream: bool) -> Value {
    completion(json!({"model": model, "max_tokens": 200, "n": 2, "stream": stream}))
}

fn message(e: &Value) -> &str {
    e["message"].as_str().unwrap()
}

/// Runs a plain and a streamed request on `served` and injects `fault` once both are in the
/// engine; returns the plain response's error and the streamed response's error chunk. Tries
/// again (after reloading) in the unlikely case a request finished before the fault hit.
async fn fail_under_requests(s: &Setup, served: Arc<Served>, fault: FaultKind) -> (Value, Value) {
    let mut served = served;
    for _ in 0..5 {
        let (app1, app2) = (s.app.clone(), s.app.clone());
        let plain =
            tokio::spawn(async move { send(&app1, authed(post("/v1/completions", &long_request("a", false)))).await });
        let streamed =
            tokio::spawn(async move { send(&app2, authed(post("/v1/completions", &long_request("a", true)))).await });
        for _ in 0..1000 {
            if served.engine.stats().await.map_or(0, |st| st.requests) >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        served.engine.inject_fault(fault);
        let (plain, streamed) = (plain.await.unwrap(), streamed.await.unwrap());
        health_is_quick(&s.app).await;
        let chunks = streamed.chunks();
        let chunk_error = chunks.last().map(|c| c["error"].clone()).unwrap_or_default();
        if plain.status != StatusCode::OK && !chunk_error.is_null() {
            return (plain.error(StatusCode::INTERNAL_SERVER_ERROR, None), chunk_error);
        }
        // Too late: the requests were done. Start over on a fresh engine, restart count 0.
        eprintln!("the requests ended before the fault ({} and {}); trying again", plain.status, streamed.status);
        let st = wait_status(&s.app, "a", |st| st["status"] != "loading" && st["restarting"] != true).await;
        if st["status"] != "failed" {
            admin_post(&s.app, "/admin/models/unload", json!({"model": "a"})).await.ok();
        }
        served = load(s, "a").await;
    }
    panic!("the fault never hit a running request");
}

#[tokio::test]
async fn a_panicked_engine_fails_its_requests_and_its_model() {
    let s = supervised(0);
    let a = load(&s, "a").await;
    load(&s, "b").await;
    let (plain, chunk) = fail_under_requests(&s, a.clone(), FaultKind::Panic).await;
    for e in [&plain, &chunk] {
        assert!(message(e).contains("the engine failed") && message(e).contains("panicked"), "{e}");
    }

    // The model is failed, with the reason, everywhere; nothing is restarted (limit 0).
    let r = send(&s.app, get("/ready?model=a")).await;
    let e = r.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert_eq!(e["code"], "model_failed");
    assert!(message(&e).contains("panicked") && message(&e).contains("reload it"), "{e}");
    let e = send(&s.app, get("/ready")).await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert!(message(&e).contains("`a` failed"), "{e}");
    let e = send(&s.app, get("/health?model=a")).await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert!(message(&e).contains("panicked"), "{e}");
    let st = wait_status(&s.app, "a", |st| st["status"] == "failed").await;
    assert_eq!(
        (st["failed_while"].as_str(), st["restarting"].as_bool(), st["restarts"].as_u64()),
        (Some("serving"), Some(false), Some(0))
    );
    assert!(st["error"].as_str().unwrap().contains("panicked"), "{st}");
    let e = complete(&s.app, "a").await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert!(message(&e).contains("panicked"), "{e}");
    health_is_quick(&s.app).await;
    // Its engine thread is gone (the model and cache freed), though this test holds a handle.
    assert!(a.engine.join_timeout(Duration::from_secs(10)));

    // The other model is untouched; a reload by hand brings `a` back.
    complete(&s.app, "b").await.ok();
    assert_eq!(model_ids(&s.app).await, ["b"]);
    load(&s, "a").await;
    complete(&s.app, "a").await.ok();
    assert_eq!(send(&s.app, get("/ready")).await.ok()["models"], json!(["a", "b"]));
}

#[tokio::test]
async fn a_failed_engine_is_restarted_until_the_limit() {
    let s = supervised(1);
    let a = load(&s, "a").await;
    a.engine.load_adapter("attn-r8", lora_fixtures().join("attn-r8")).await.unwrap();
    let (plain, chunk) = fail_under_requests(&s, a.clone(), FaultKind::StepError).await;
    for e in [&plain, &chunk] {
        assert!(message(e).contains("a step failed"), "{e}");
    }
    // Restarted from the same load: ready again, and serving.
    let st = wait_status(&s.app, "a", |st| st["status"] == "ready" && st["restarts"] == 1).await;
    assert!(st["error"].is_null(), "{st}");
    assert!(a.engine.join_timeout(Duration::from_secs(10)), "the failed engine still runs");
    complete(&s.app, "a").await.ok();
    // With the adapter it served.
    complete(&s.app, "attn-r8").await.ok();
    assert_eq!(model_ids(&s.app).await, ["a", "attn-r8"]);
    assert_eq!(send(&s.app, get("/ready")).await.ok()["models"], json!(["a"]));
    health_is_quick(&s.app).await;

    // The second failure is past the limit: it stays failed until reloaded by hand.
    let a = s.state.registry.resolve("a").unwrap().0;
    a.engine.inject_fault(FaultKind::Panic);
    let st = wait_status(&s.app, "a", |st| st["status"] == "failed").await;
    assert_eq!((st["restarting"].as_bool(), st["restarts"].as_u64()), (Some(false), Some(1)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(admin_get(&s.app, "/admin/models/a").await.ok()["status"], "failed");
    let e = send(&s.app, get("/ready")).await.error(StatusCode::SERVICE_UNAVAILABLE, Some("model"));
    assert!(message(&e).contains("reload it"), "{e}");
    let text = send(&s.app, authed(get("/metrics"))).await.text();
    for line in ["flint_model_failed{model_name=\"a\"} 1", "flint_model_engine_restarts{model_name=\"a\"} 1"] {
        assert!(text.contains(line), "{line} not in {text}");
    }
    health_is_quick(&s.app).await;
    let st = admin_post(&s.app, "/admin/models/load", json!({"model": "a", "wait": true})).await.ok();
    assert_eq!((st["status"].as_str(), st["restarts"].as_u64()), (Some("ready"), Some(0)));
    complete(&s.app, "a").await.ok();
}

#[tokio::test]
async fn an_unload_past_its_drain_time_stops_the_engine() {
    let s = supervised(3);
    let a = load(&s, "a").await;
    // A streamed request whose client never reads: it holds its slot for as long as it lives.
    let req = authed(post("/v1/completions", &long_request("a", true)));
    let straggler = s.app.clone().oneshot(req).await.unwrap();
    assert_eq!(straggler.status(), StatusCode::OK);
    for _ in 0..500 {
        if a.active() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.active() > 0);
    let t = Instant::now();
    admin_post(&s.app, "/admin/models/unload", json!({"model": "a"})).await.ok();
    assert!(t.elapsed() >= Duration::from_millis(200), "the unload did not wait for the request");
    // The engine thread has exited (model and cache freed) although the request still holds
    // the model: a reload does not hold two copies.
    assert!(a.active() > 0);
    assert!(a.engine.join_timeout(Duration::ZERO), "the engine still runs after the unload");
    health_is_quick(&s.app).await;
    load(&s, "a").await;
    complete(&s.app, "a").await.ok();
    drop(straggler);
}

/// `flint serve --shutdown-timeout 2` exits soon after SIGTERM although a request (whose body
/// never comes in full) is still open.
#[tokio::test]
async fn sigterm_exits_within_the_shutdown_timeout() {
    use tokio::io::AsyncWriteExt;

    let home = tempfile::tempdir().unwrap();
    let tiny = model_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["serve", "--port", &port.to_string(), "--model", tiny.path().to_str().unwrap()])
        .args(["--kv-cache-memory", "8MiB", "--shutdown-timeout", "2"])
        .env("FLINT_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    let base = format!("http://127.0.0.1:{port}");
    server.wait_ready(&base, 120).await;

    let mut open = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\""
    );
    open.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let killed = std::process::Command::new("kill").args(["-TERM", &server.0.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "flint serve still runs 15 s after SIGTERM (timeout 2 s)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    drop(open);
}
