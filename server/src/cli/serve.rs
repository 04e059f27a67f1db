//! `flint serve`: the OpenAI-compatible HTTP server. It listens at once (`/health` answers,
//! `/ready` is 503) while the model loads, then serves; SIGTERM/SIGINT stop new requests and
//! let in-flight ones finish before the process exits. `--lora` adapters are loaded before the
//! server reports ready; startup fails if one cannot be.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use flint_engine::{
    models::{parse_dtype, LoadOptions},
    EngineHandle,
};

use super::engine_args::{EngineArgs, LoraArgs};
use crate::{
    api::{self, lora::check_name, AppState, Served, ServerConfig},
    chat_template::ChatTemplate,
};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory or Hugging Face repo id; default: SmolLM2-135M-Instruct.
    #[arg(long, env = "FLINT_MODEL")]
    pub model: Option<String>,
    /// Address to bind (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "FLINT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "FLINT_PORT", default_value_t = 8000)]
    pub port: u16,
    /// The name clients pass as `model` (default: the model directory's name).
    #[arg(long, env = "FLINT_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Require this key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) on every route but
    /// /health and /ready.
    #[arg(long, env = "FLINT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests accepted beyond --max-num-seqs before answering 429.
    #[arg(long, env = "FLINT_MAX_WAITING_REQUESTS", default_value_t = 1024)]
    pub max_waiting_requests: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, env = "FLINT_MAX_BODY_BYTES", default_value_t = 32 << 20)]
    pub max_body_bytes: usize,
    /// Allow browser requests from this origin (repeatable; `*` for any). CORS is off without it.
    #[arg(long, env = "FLINT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Weights/compute dtype: f32, bf16 or f16.
    #[arg(long, env = "FLINT_DTYPE")]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
}

pub fn main(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let dir = super::resolve_model(args.model.as_deref())?;
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let load = LoadOptions { device: super::run::device()?, dtype };
    let name = args.served_model_name.clone().unwrap_or_else(|| {
        dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    });
    let mut cfg = args.engine.config(&dir, load);
    cfg.lora = args.lora.settings();
    let lora_dir = match &args.lora.lora_dir {
        Some(d) if !d.is_dir() => anyhow::bail!("--lora-dir {} is not a directory", d.display()),
        Some(d) => Some(std::fs::canonicalize(d).with_context(|| format!("--lora-dir {}", d.display()))?),
        None => None,
    };
    let adapters = args.lora.modules();
    for m in &adapters {
        check_name(&name, &m.name).map_err(|e| anyhow::anyhow!("--lora {}={}: {}", m.name, m.path.display(), e.message))?;
    }
    let state = AppState::new(ServerConfig {
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_waiting_requests: args.max_waiting_requests,
        max_num_seqs: cfg.max_num_seqs,
        max_body_bytes: args.max_body_bytes,
        cors_origins: args.cors_origin.clone(),
        lora_dir,
    });
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {} is not an address", args.host, args.port))?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!("listening on http://{addr} (model {name} loading)");

    let app = api::router(state.clone());
    let server = tokio::spawn({
        let state = state.clone();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown_signal().await;
                    tracing::info!("shutting down: finishing in-flight requests");
                    state.begin_shutdown();
                })
                .await
        }
    });

    let loading = tokio::task::spawn_blocking(move || -> anyhow::Result<Served> {
        let engine = EngineHandle::start(cfg).with_context(|| format!("loading the model in {}", dir.display()))?;
        let template = ChatTemplate::from_tokenizer_config(&engine.tokenizer().template_config())?;
        if template.is_none() {
            tracing::warn!("{} has no chat template: /v1/chat/completions will answer 400", dir.display());
        }
        Ok(Served { engine, name, template, created: chrono::Utc::now().timestamp() })
    });
    let served = loading.await.context("the loading task failed")??;
    for m in adapters {
        served
            .engine
            .load_adapter(&m.name, m.path.clone())
            .await
            .with_context(|| format!("loading LoRA adapter `{}` (--lora) from {}", m.name, m.path.display()))?;
    }
    tracing::info!("ready: serving `{}` at http://{addr}/v1", served.name);
    state.set_model(served);
    server.await.context("the server task failed")?.context("the HTTP server failed")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
