//! `flint bench` against `flint serve`, both started as users start them: prompts of exact
//! random token ids (`--random-ids`), requests spread over the base model and two LoRA
//! adapters (`--model a,b,c`), sampling on the device kernel (`--sampling-device device`, its
//! CPU implementation here), and the server's step profile read from `/metrics` per level.

mod common;

use std::process::{Command, Stdio};

use common::{lora_fixtures, model_dir, Running};
use serde_json::Value;

#[tokio::test]
async fn bench_spreads_id_prompts_over_adapters_and_reports_the_step_profile() {
    let model = model_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let lora = |name: &str, dir: &str| format!("{name}={}", lora_fixtures().join(dir).display());
    let server = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(["serve", "--model", model.path().to_str().unwrap(), "--port", &port.to_string()])
        .args(["--served-model-name", "tiny", "--kv-cache-memory", "8MiB", "--sampling-device", "device"])
        .args(["--lora", &lora("a", "attn-r8"), "--lora", &lora("m", "mlp-r4"), "--max-loras", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Running(server);
    let base = format!("http://127.0.0.1:{port}");
    server.wait_ready(&base, 120).await;
    let http = reqwest::Client::new();
    let out = tempfile::tempdir().unwrap();
    let json_path = out.path().join("bench.json");
    let bench = tokio::task::spawn_blocking({
        let (url, json_path) = (format!("{base}/v1"), json_path.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_flint"))
                .args(["bench", "--base-url", &url, "--random-ids", "200", "--input-len", "24", "--output-len", "4"])
                .args(["--concurrency", "3", "--requests", "6", "--model", "tiny,a,m"])
                .args(["--json", json_path.to_str().unwrap()])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&bench.stderr));
    assert!(stdout.contains("step profile:"), "{stdout}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    let level = &doc["levels"][0];
    assert_eq!((level["ok"].as_u64(), level["failed"].as_u64()), (Some(6), Some(0)), "{level}");
    // Exact prompt lengths from token ids, whatever the tokenizer; exact outputs (ignore_eos).
    assert_eq!(level["mean_prompt_tokens"].as_f64(), Some(24.0));
    assert_eq!(level["output_tokens"].as_u64(), Some(24));
    assert_eq!(doc["config"]["random_ids"], 200);
    let profile = &level["step_profile"];
    assert!(profile["steps"].as_u64().unwrap() >= 4, "{profile}");
    assert!(profile["forward_ms"].as_f64().unwrap() > 0.0, "{profile}");
    // All six ran on the base engine, and both adapters were put in its slots.
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "vllm:request_success_total{model_name=\"tiny\",finished_reason=\"length\"} 6",
        "flint_lora_adapters_resident{model_name=\"tiny\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
