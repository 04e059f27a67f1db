//! `flint serve` started the way users start it, with several models: a `--catalog` with a
//! directory entry and a GGUF entry (converted at startup), `--model` naming a catalog entry,
//! and startup errors that name the file or flag.

mod common;

use std::process::{Command, Stdio};

use common::{model_dir, Running};
use serde_json::{json, Value};

fn flint() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flint"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn serves_several_models_from_a_catalog() {
    let home = tempfile::tempdir().unwrap();
    let tiny = model_dir();
    std::fs::write(home.path().join("tiny.gguf"), flint_engine::models::gguf::testing::tiny_llama_gguf()).unwrap();
    let catalog = home.path().join("models.toml");
    let text = format!(
        "[models.tiny]\npath = {:?}\nmax_model_len = 128\n\n[models.quant]\ngguf = \"tiny.gguf\"\nload = true\nkeep_alive = \"1h\"\n\n[models.spare]\npath = {:?}\n",
        tiny.path(),
        tiny.path()
    );
    std::fs::write(&catalog, text).unwrap();
    let port = free_port();
    let child = flint()
        .args(["serve", "--port", &port.to_string(), "--catalog", catalog.to_str().unwrap(), "--model", "tiny"])
        .args(["--api-key", "k", "--kv-cache-memory", "8MiB"])
        .env("FLINT_HOME", home.path())
        .env("FLINT_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    let base = format!("http://127.0.0.1:{port}");
    server.wait_ready(&base, 120).await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{base}{path}")).bearer_auth("k").send();
    let models: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["quant", "tiny"]);
    let admin: Value = get("/admin/models").await.unwrap().json().await.unwrap();
    let quant = admin["data"].as_array().unwrap().iter().find(|m| m["name"] == "quant").unwrap().clone();
    assert_eq!((quant["status"].as_str(), quant["keep_alive_s"].as_f64()), (Some("ready"), Some(3600.0)));
    assert!(quant["source"].as_str().unwrap().starts_with("gguf:"), "{quant}");
    let tiny_status = admin["data"].as_array().unwrap().iter().find(|m| m["name"] == "tiny").unwrap().clone();
    assert_eq!(tiny_status["max_model_len"], 128);
    assert_eq!(admin["catalog"].as_array().unwrap().len(), 3);
    // The GGUF was converted under FLINT_HOME.
    assert!(std::fs::read_dir(home.path().join("converted")).unwrap().count() == 1);
    for model in ["quant", "tiny:latest"] {
        let body = json!({"model": model, "prompt": "hello", "max_tokens": 4, "temperature": 0, "ignore_eos": true});
        let r = http.post(format!("{base}/v1/completions")).bearer_auth("k").json(&body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{model}: {}", r.text().await.unwrap());
    }
    // The recent log lines are there, structured.
    let logs: Value = get("/admin/logs?limit=500").await.unwrap().json().await.unwrap();
    let lines = logs["data"].as_array().unwrap();
    assert!(lines.iter().any(|l| l["message"] == "model ready" && l["fields"]["model"] == "quant"), "{logs}");
    drop(server);
}

#[test]
fn startup_errors_name_the_file_or_flag() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("models.toml");
    std::fs::write(&catalog, "[models.x]\ndtype = \"f32\"\n").unwrap();
    let out = flint().args(["serve", "--catalog", catalog.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models.toml") && err.contains("[models.x]"), "{err}");

    let tiny = model_dir();
    let p = tiny.path().to_str().unwrap();
    let out = flint().args(["serve", "--model", p, "--model", p, "--served-model-name", "one"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--served-model-name"));
    let out = flint().args(["serve", "--model", p, "--model", p]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("two startup models"));
    let out = flint().args(["serve", "--model", p, "--keep-alive", "soon"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--keep-alive"));
}
