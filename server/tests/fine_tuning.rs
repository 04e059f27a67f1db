//! Fine-tuning over HTTP on the tiny model: a job teaches an answer that the served `ft:`
//! model then gives (and the base model does not), with events, checkpoints, cancelling,
//! bad requests, and jobs interrupted by a restart.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use common::*;
use flint_engine::LoraSettings;
use flint_server::{
    api::{self, AppState, ServerConfig},
    finetune::{store::Store, MAX_PENDING_JOBS},
    registry::ModelRegistry,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const QUESTION: &str = "pw?";
const ANSWER: &str = "swordfish";

struct Ft {
    app: Router,
    state: Arc<AppState>,
    data: TempDir,
    _model: TempDir,
}

fn ft_server(data: TempDir) -> Ft {
    let model = model_dir();
    let cfg = ServerConfig { data_dir: Some(data.path().to_path_buf()), ..config() };
    let state = AppState::with_registry(cfg, Arc::new(ModelRegistry::new(None, Default::default())));
    assert!(state.finetune.is_some());
    state.set_model(served_with(model.path(), Some(LoraSettings { max_loras: 4, max_lora_rank: 16 })));
    Ft { app: api::router(state.clone()), state, data, _model: model }
}

/// `POST /v1/files` with a multipart body.
async fn upload(app: &Router, purpose: &str, data: &str) -> Resp {
    let b = "flintboundary";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n--{b}\r\n\
         Content-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{data}\r\n--{b}--\r\n"
    );
    let req = Request::post("/v1/files")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={b}"))
        .body(Body::from(body))
        .unwrap();
    send(app, req).await
}

fn dataset() -> String {
    let line = json!({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]});
    let mut s = String::new();
    for _ in 0..4 {
        s.push_str(&line.to_string());
        s.push('\n');
    }
    s
}

async fn wait(app: &Router, id: &str) -> Value {
    for _ in 0..1200 {
        let job = send(app, get(&format!("/v1/fine_tuning/jobs/{id}"))).await.ok();
        if ["succeeded", "failed", "cancelled"].contains(&job["status"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish in 120 s");
}

async fn chat_answer(app: &Router, model: &str) -> String {
    let body = json!({"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12,
        "temperature": 0});
    let r = send(app, post("/v1/chat/completions", &body)).await.ok();
    r["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_job_teaches_an_answer_served_at_once() {
    let s = ft_server(tempfile::tempdir().unwrap());
    let file = upload(&s.app, "fine-tune", &dataset()).await.ok();
    let body = json!({"model": MODEL, "training_file": file["id"], "validation_file": file["id"], "suffix": "pw",
        "seed": 3, "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 12, "batch_size": 2,
        "learning_rate_multiplier": 100, "lora_rank": 8}}}});
    let job = send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.ok();
    assert_eq!((job["object"].as_str(), job["status"].as_str()), (Some("fine_tuning.job"), Some("validating_files")));
    let id = job["id"].as_str().unwrap().to_owned();
    let job = wait(&s.app, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let name = format!("ft:{MODEL}:pw:{id}");
    assert_eq!(job["fine_tuned_model"], name);
    assert!(job["trained_tokens"].as_u64().unwrap() > 0);
    assert_eq!(job["hyperparameters"]["n_epochs"], 12);

    // The loss fell, step by step, and validation was measured.
    let events = send(&s.app, get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))).await.ok();
    let events = events["data"].as_array().unwrap();
    let losses: Vec<f64> = events.iter().rev().filter_map(|e| e["data"]["train_loss"].as_f64()).collect();
    assert!(losses.len() >= 12, "{losses:?}");
    assert!(losses.last().unwrap() < &(0.1 * losses[0]), "{losses:?}");
    assert!(events.iter().any(|e| e["data"]["valid_loss"].is_number()));
    assert!(events.iter().all(|e| e["object"] == "fine_tuning.job.event"));

    // Served at once under its name; the base model does not know the answer.
    let ids: Vec<Value> = send(&s.app, get("/v1/models")).await.ok()["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert!(ids.contains(&json!(name)), "{ids:?}");
    assert!(chat_answer(&s.app, &name).await.starts_with(ANSWER));
    assert!(!chat_answer(&s.app, MODEL).await.contains(ANSWER));

    // One checkpoint per epoch but the last, each servable.
    let ckpts = send(&s.app, get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints?limit=100"))).await.ok();
    let ckpts = ckpts["data"].as_array().unwrap();
    assert_eq!(ckpts.len(), 11);
    let first = ckpts.last().unwrap();
    assert!(first["fine_tuned_model_checkpoint"].as_str().unwrap().starts_with(&format!("{name}:ckpt-step-")));
    chat_answer(&s.app, first["fine_tuned_model_checkpoint"].as_str().unwrap()).await;

    // The saved adapter is a PEFT directory.
    let dir = s.data.path().join("adapters").join(&id).join("final");
    assert!(dir.join("adapter_config.json").is_file() && dir.join("adapter_model.safetensors").is_file());

    // After a restart the job, its events and its model are back.
    let data = s.data;
    drop(s.app);
    drop(s.state);
    let s2 = ft_server(data);
    s2.state.finetune.as_ref().unwrap().restore_adapters().await;
    assert_eq!(send(&s2.app, get(&format!("/v1/fine_tuning/jobs/{id}"))).await.ok()["status"], "succeeded");
    assert!(chat_answer(&s2.app, &name).await.starts_with(ANSWER));
}

#[tokio::test]
async fn bad_requests_name_the_reason() {
    let s = ft_server(tempfile::tempdir().unwrap());
    let file = upload(&s.app, "fine-tune", &dataset()).await.ok();
    let other = upload(&s.app, "user_data", "{}\n").await.ok();
    let create = |body: Value| send(&s.app, post("/v1/fine_tuning/jobs", &body));
    let f = file["id"].clone();
    create(json!({"model": MODEL, "training_file": "file-nope"})).await.error(StatusCode::NOT_FOUND, Some("training_file"));
    create(json!({"model": "nope", "training_file": f})).await.error(StatusCode::NOT_FOUND, Some("model"));
    let e = create(json!({"model": MODEL, "training_file": other["id"]})).await.error(StatusCode::BAD_REQUEST, Some("training_file"));
    assert!(e["message"].as_str().unwrap().contains("fine-tune"));
    for (h, param) in [
        (json!({"n_epochs": 0}), "hyperparameters.n_epochs"),
        (json!({"batch_size": "lots"}), "hyperparameters.batch_size"),
        (json!({"learning_rate_multiplier": -1}), "hyperparameters.learning_rate_multiplier"),
        (json!({"lora_rank": 64}), "hyperparameters.lora_rank"),
    ] {
        create(json!({"model": MODEL, "training_file": f, "hyperparameters": h})).await.error(StatusCode::BAD_REQUEST, Some(param));
    }
    create(json!({"model": MODEL, "training_file": f, "suffix": "a b"})).await.error(StatusCode::BAD_REQUEST, Some("suffix"));
    create(json!({"model": MODEL, "training_file": f, "method": {"type": "dpo"}})).await.error(StatusCode::BAD_REQUEST, Some("method.type"));
    send(&s.app, get("/v1/fine_tuning/jobs/ftjob-nope")).await.error(StatusCode::NOT_FOUND, Some("fine_tuning_job_id"));
    send(&s.app, get("/v1/fine_tuning/jobs?limit=0")).await.error(StatusCode::BAD_REQUEST, Some("limit"));
    send(&s.app, get("/v1/fine_tuning/jobs?limit=101")).await.error(StatusCode::BAD_REQUEST, Some("limit"));
    let many: serde_json::Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    create(json!({"model": MODEL, "training_file": f, "metadata": many})).await.error(StatusCode::BAD_REQUEST, Some("metadata"));
    create(json!({"model": MODEL, "training_file": f, "metadata": {"k": "v".repeat(513)}})).await.error(StatusCode::BAD_REQUEST, Some("metadata"));
    assert!(send(&s.app, get("/v1/fine_tuning/jobs")).await.ok()["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn cancelling_stops_a_running_job_and_keeps_nothing() {
    let s = ft_server(tempfile::tempdir().unwrap());
    let file = upload(&s.app, "fine-tune", &dataset()).await.ok();
    let body = json!({"model": MODEL, "training_file": file["id"], "hyperparameters": {"n_epochs": 50, "batch_size": 1}});
    let id = send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.ok()["id"].as_str().unwrap().to_owned();
    for _ in 0..600 {
        let job = send(&s.app, get(&format!("/v1/fine_tuning/jobs/{id}"))).await.ok();
        if job["trained_tokens"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send(&s.app, post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))).await.ok();
    let job = wait(&s.app, &id).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["fine_tuned_model"], Value::Null);
    assert!(!s.data.path().join("adapters").join(&id).join("final").exists());
    send(&s.app, post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))).await.error(StatusCode::BAD_REQUEST, Some("fine_tuning_job_id"));
}

#[tokio::test]
async fn jobs_interrupted_by_a_restart_are_failed_with_the_reason() {
    let data = tempfile::tempdir().unwrap();
    {
        let store = Store::open(data.path()).unwrap();
        let job = json!({"object": "fine_tuning.job", "id": "ftjob-1", "model": MODEL, "created_at": 1,
            "finished_at": null, "fine_tuned_model": null, "organization_id": "org-flint", "result_files": [],
            "status": "running", "validation_file": null, "training_file": "file-1", "hyperparameters": {},
            "trained_tokens": 10, "error": null, "user_provided_suffix": null, "seed": 1, "estimated_finish": null,
            "integrations": [], "metadata": null, "method": {}});
        store.insert_job("ftjob-1", 1, "running", MODEL, &job).unwrap();
    }
    let s = ft_server(data);
    let job = send(&s.app, get("/v1/fine_tuning/jobs/ftjob-1")).await.ok();
    assert_eq!(job["status"], "failed");
    assert!(job["error"]["message"].as_str().unwrap().contains("restart"), "{job}");
}

#[tokio::test]
async fn events_and_checkpoints_pages_are_capped() {
    let s = ft_server(tempfile::tempdir().unwrap());
    let file = upload(&s.app, "fine-tune", &dataset()).await.ok();
    let body = json!({"model": MODEL, "training_file": file["id"], "hyperparameters": {"max_seq_len": 8}});
    let id = send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.ok()["id"].as_str().unwrap().to_owned();
    for route in ["events", "checkpoints"] {
        for limit in ["0", "101", "x"] {
            let uri = format!("/v1/fine_tuning/jobs/{id}/{route}?limit={limit}");
            send(&s.app, get(&uri)).await.error(StatusCode::BAD_REQUEST, Some("limit"));
        }
        send(&s.app, get(&format!("/v1/fine_tuning/jobs/{id}/{route}?limit=100"))).await.ok();
    }
    // The answer starts past 8 tokens, where training stops reading: refused while validating,
    // naming the file's line, rather than failing hours later.
    let job = wait(&s.app, &id).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["param"], "training_file", "{job}");
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(msg.contains("line 1: ") && msg.contains("max_seq_len"), "{job}");
}

/// Jobs waiting or running are capped: one more is a 429 until one ends.
#[tokio::test]
async fn pending_jobs_are_capped() {
    let s = ft_server(tempfile::tempdir().unwrap());
    let file = upload(&s.app, "fine-tune", &dataset()).await.ok();
    let body = json!({"model": MODEL, "training_file": file["id"], "hyperparameters": {"n_epochs": 50, "batch_size": 1}});
    let mut ids = Vec::new();
    for _ in 0..MAX_PENDING_JOBS {
        ids.push(send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.ok()["id"].as_str().unwrap().to_owned());
    }
    let e = send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.error(StatusCode::TOO_MANY_REQUESTS, None);
    assert!(e["message"].as_str().unwrap().contains(&MAX_PENDING_JOBS.to_string()), "{e}");
    for id in &ids {
        send(&s.app, post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))).await.ok();
    }
    for id in &ids {
        assert_eq!(wait(&s.app, id).await["status"], "cancelled");
    }
    let id = send(&s.app, post("/v1/fine_tuning/jobs", &body)).await.ok()["id"].as_str().unwrap().to_owned();
    send(&s.app, post(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))).await.ok();
    assert_eq!(wait(&s.app, &id).await["status"], "cancelled");
}
