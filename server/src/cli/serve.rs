//! `flint serve`: the HTTP server (OpenAI, Ollama and admin routes). It listens at once
//! (`/health` answers, `/ready` is 503) while the models load, then serves; SIGTERM/SIGINT stop
//! new requests and let in-flight ones finish, for `--shutdown-timeout` at most: then the
//! engines are stopped under what still runs and the process exits. Each `--model` (a
//! directory, a GGUF file, a Hugging Face id or a catalog name) and each catalog entry with
//! `load = true` is loaded at startup; startup fails if one cannot be. `--lora` adapters go on
//! the first model and are loaded before the server reports ready.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::Args;
use flint_engine::models::{parse_dtype, LoadOptions};

use super::engine_args::{EngineArgs, LoraArgs, LoraModule};
use crate::{
    api::{self, lora::check_name, AppState, ServerConfig},
    registry::{
        check_model_name, Catalog, KeepAlive, LaunchSettings, Launcher, LoadOverrides, LoadRequest, ModelRegistry, Source,
    },
};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model to load at startup: a directory, a .gguf file, a Hugging Face repo id or a
    /// `--catalog` name (repeatable: several models at once); default: SmolLM2-135M-Instruct
    /// when neither this nor a catalog entry with `load = true` is given.
    #[arg(long, env = "FLINT_MODEL", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub model: Vec<String>,
    /// TOML catalog of friendly model names (directories, GGUF files, options; see the README).
    #[arg(long, env = "FLINT_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Directory that `POST /admin/models/load` may load model paths from (repeatable); without
    /// it the admin routes load catalog names only.
    #[arg(long, env = "FLINT_MODEL_ROOT", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub model_root: Vec<PathBuf>,
    /// How long a model stays loaded once idle (`5m`, `1h`, seconds; `-1`: forever), unless its
    /// catalog entry, load request or an Ollama request says otherwise.
    #[arg(long, env = "FLINT_KEEP_ALIVE", default_value = "-1", value_parser = KeepAlive::parse, allow_hyphen_values = true)]
    pub keep_alive: KeepAlive,
    /// Keep uploaded files, fine-tuning jobs and trained adapters here (SQLite + files); turns
    /// on `/v1/files` and `/v1/fine_tuning/jobs` (and LoRA, to serve what is trained).
    #[arg(long, env = "FLINT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Largest file upload, e.g. `512MiB`.
    #[arg(long, env = "FLINT_MAX_UPLOAD_BYTES", default_value = "512MiB", value_parser = super::engine_args::parse_size)]
    pub max_upload_bytes: u64,
    /// Longest an unload waits for the model's running requests, in seconds; then its engine
    /// is stopped under them (they end with an error) and its memory freed.
    #[arg(long, env = "FLINT_UNLOAD_DRAIN_TIMEOUT", default_value_t = 60.0)]
    pub unload_drain_timeout: f64,
    /// Restarts of a model whose engine failed (a panic, a failed step) before it stays
    /// `failed` until loaded again by hand; 0: never restarted.
    #[arg(long, env = "FLINT_MAX_ENGINE_RESTARTS", default_value_t = crate::registry::DEFAULT_MAX_RESTARTS)]
    pub max_engine_restarts: u32,
    /// On SIGTERM or SIGINT, seconds the running requests get to finish; then the engines are
    /// stopped under them and the process exits, within this time whatever still runs.
    #[arg(long, env = "FLINT_SHUTDOWN_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub shutdown_timeout: Duration,
    /// Address to bind (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "FLINT_HOST", default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, env = "FLINT_PORT", default_value_t = 8000)]
    pub port: u16,
    /// The name clients pass as `model` (default: the model directory's name); only with one
    /// `--model`.
    #[arg(long, env = "FLINT_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Require this key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) on every route but
    /// /health and /ready. An empty key is an error; without one, a server bound to an address
    /// other than loopback warns at startup that anyone who can reach it can use it.
    #[arg(long, env = "FLINT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences (prompts x `n`) accepted beyond --max-num-seqs before answering 429.
    #[arg(long, env = "FLINT_MAX_WAITING_REQUESTS", default_value_t = 1024)]
    pub max_waiting_requests: usize,
    /// Largest request body in bytes (413 beyond; file uploads have --max-upload-bytes). At
    /// 8 MiB any body parses or is refused within about 60 ms on 2 cores (`cargo bench --bench
    /// json_bodies`); a 128k-token prompt as token ids takes about 1 MiB.
    #[arg(long, env = "FLINT_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,
    /// Most messages in one chat request (400 naming `messages` beyond).
    #[arg(long, env = "FLINT_MAX_MESSAGES", default_value_t = crate::generation::prompt::DEFAULT_MAX_MESSAGES)]
    pub max_messages: usize,
    /// Most prompts in one `/v1/completions` request (400 naming `prompt` beyond; OpenAI's limit).
    #[arg(long, env = "FLINT_MAX_PROMPTS_PER_REQUEST", default_value_t = crate::generation::prompt::DEFAULT_MAX_PROMPTS)]
    pub max_prompts_per_request: usize,
    /// Longest prompt text in bytes: one completions prompt, or a chat's messages together
    /// (400 beyond). Rendering and tokenizing cost grows with it.
    #[arg(long, env = "FLINT_MAX_PROMPT_BYTES", default_value_t = crate::generation::prompt::DEFAULT_MAX_PROMPT_BYTES)]
    pub max_prompt_bytes: usize,
    /// Salt the prefix cache with each request's API key: requests presenting different keys
    /// never share cached blocks, so `cached_tokens` and timing say nothing across tenants.
    #[arg(long, env = "FLINT_PREFIX_CACHE_PER_KEY")]
    pub prefix_cache_per_key: bool,
    /// Allow browser requests from this origin, `scheme://host[:port]` (repeatable; `*` for
    /// any). A request carrying an `Origin` header it does not allow is refused (403), except
    /// the server's own pages: same origin under a loopback name, an IP address or an
    /// --allowed-host. CORS headers are off without it.
    #[arg(long, env = "FLINT_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Also answer to this Host name (repeatable), e.g. behind a proxy: bound to a loopback
    /// address, the server refuses `Host` headers that are not loopback names or addresses
    /// (DNS rebinding). `.example.com` allows it and its subdomains, `*` any name; a port is
    /// not part of it. Binds other than loopback do not check Host.
    #[arg(long = "allowed-host", env = "FLINT_ALLOWED_HOSTS", value_delimiter = ',', value_name = "NAME")]
    pub allowed_host: Vec<String>,
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
    let result = runtime.block_on(serve(args));
    // Work the shutdown cut off (a blocking task, a load, an engine thread that did not stop)
    // does not hold the exit up.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

/// What the runtime gets to wind down after `serve` returned.
const EXIT_GRACE: Duration = Duration::from_millis(500);

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The flags that decide who may call are checked before anything loads.
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {} is not an address", args.host, args.port))?;
    let api_key = api_key(args.api_key.as_deref())?;
    if api_key.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "serving on {addr}, which is not a loopback address, without --api-key: anyone who can reach it \
             can use every route but /admin (generate, and load or unload models through Ollama's routes)"
        );
    }
    let cors_origins = cors_origins(&args.cors_origin)?;
    let allowed_hosts = allowed_hosts(&args.allowed_host)?;
    let dtype = args.dtype.as_deref().map(parse_dtype).transpose()?;
    let catalog = match &args.catalog {
        Some(path) => Catalog::load(path)?,
        None => Catalog::default(),
    };
    // Each load puts its own model directory (and per-model options) into this template.
    let mut template = args.engine.config(Path::new(""), LoadOptions { device: super::run::device()?, dtype, quantization: args.engine.quantization()? });
    // Fine-tuned adapters are served through LoRA slots.
    template.lora = args.lora.settings().or(args.data_dir.as_ref().map(|_| Default::default()));
    let settings = LaunchSettings {
        convert_dir: super::flint_home().join("converted"),
        allow_download: true,
        keep_alive: args.keep_alive,
    };
    let launcher = Launcher::new(template, settings);
    let startup = startup_models(&args, &catalog)?;
    let lora_dir = match &args.lora.lora_dir {
        Some(d) if !d.is_dir() => anyhow::bail!("--lora-dir {} is not a directory", d.display()),
        Some(d) => Some(std::fs::canonicalize(d).with_context(|| format!("--lora-dir {}", d.display()))?),
        None => None,
    };
    let mut model_roots = Vec::new();
    for r in &args.model_root {
        model_roots.push(std::fs::canonicalize(r).with_context(|| format!("--model-root {}", r.display()))?);
    }
    let adapters = args.lora.modules();
    for m in &adapters {
        check_name(&startup[0].name, &m.name)
            .map_err(|e| anyhow::anyhow!("--lora {}={}: {}", m.name, m.path.display(), e.message))?;
    }
    let mut registry = ModelRegistry::new(Some(Arc::new(launcher)), catalog);
    if !(args.unload_drain_timeout >= 0.0 && args.unload_drain_timeout.is_finite()) {
        anyhow::bail!("--unload-drain-timeout must be >= 0 seconds");
    }
    registry.drain_timeout = Duration::from_secs_f64(args.unload_drain_timeout);
    registry.max_restarts = args.max_engine_restarts;
    let registry = Arc::new(registry);
    let state = AppState::build(
        ServerConfig {
            api_key,
            max_waiting_requests: args.max_waiting_requests,
            max_num_seqs: args.engine.max_num_seqs,
            max_body_bytes: args.max_body_bytes,
            cors_origins,
            check_host: addr.ip().is_loopback(),
            allowed_hosts,
            lora_dir,
            model_roots,
            data_dir: args.data_dir.clone(),
            max_upload_bytes: usize::try_from(args.max_upload_bytes).unwrap_or(usize::MAX),
            prompt_limits: crate::generation::PromptLimits {
                max_messages: args.max_messages,
                max_prompts: args.max_prompts_per_request,
                max_prompt_bytes: args.max_prompt_bytes,
            },
            prefix_cache_per_key: args.prefix_cache_per_key,
        },
        registry.clone(),
    )
    .map_err(|(e, _)| e)?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    let names: Vec<&str> = startup.iter().map(|r| r.name.as_str()).collect();
    tracing::info!("listening on http://{addr} (loading {})", names.join(", "));

    let app = api::router(state.clone());
    let (signal_tx, signal_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });
    let mut server = tokio::spawn({
        let (state, signal) = (state.clone(), signal_rx.clone());
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    signalled(signal).await;
                    state.begin_shutdown();
                })
                .await
        }
    });

    // A signal while the models load ends the startup too.
    let startup_done = tokio::select! {
        r = start_models(&state, &startup, adapters) => Some(r),
        () = signalled(signal_rx.clone()) => None,
    };
    if let Some(r) = startup_done {
        r?;
        tracing::info!("ready: serving {} at http://{addr}/v1 (Ollama API at http://{addr}/api)", names.join(", "));
        tokio::select! {
            r = &mut server => {
                r.context("the server task failed")?.context("the HTTP server failed")?;
                return Ok(());
            }
            () = signalled(signal_rx.clone()) => {}
        }
    }
    shut_down(&state, server, args.shutdown_timeout).await;
    Ok(())
}

/// Loads the startup models and the `--lora` adapters (on the first), restores trained
/// adapters, and marks the server started.
async fn start_models(state: &Arc<AppState>, startup: &[LoadRequest], adapters: Vec<LoraModule>) -> anyhow::Result<()> {
    let registry = &state.registry;
    for req in startup {
        registry.start_load(req.clone()).map_err(|e| anyhow::anyhow!("{}: {e}", req.name))?;
    }
    for req in startup {
        registry
            .wait_ready(&req.name)
            .await
            .map_err(|e| anyhow::anyhow!("model `{}` ({}): {e}", req.name, req.source))?;
    }
    let first = registry.wait_ready(&startup[0].name).await?;
    for m in adapters {
        first
            .engine
            .load_adapter(&m.name, m.path.clone())
            .await
            .with_context(|| format!("loading LoRA adapter `{}` (--lora) from {}", m.name, m.path.display()))?;
    }
    drop(first);
    if let Some(ft) = &state.finetune {
        // Adapters trained before a restart are served again.
        ft.restore_adapters().await;
    }
    registry.spawn_reaper(Duration::from_secs(1));
    state.set_started();
    Ok(())
}

/// After SIGTERM/SIGINT (the server already refuses new requests): running requests get until
/// `timeout` less a grace to finish; then every engine is stopped (what still runs ends with a
/// shutdown error) and the connections left are cut at `timeout`.
async fn shut_down(state: &Arc<AppState>, mut server: tokio::task::JoinHandle<std::io::Result<()>>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    // Stopping the engines and closing the connections take a moment of the budget.
    let grace = (timeout / 4).min(Duration::from_secs(2));
    let running = || state.registry.ready().iter().map(|m| m.active()).sum::<usize>();
    tracing::info!(requests = running(), "shutting down: finishing in-flight requests (at most {:.0} s)", timeout.as_secs_f64());
    let mut finished = tokio::time::timeout_at(deadline - grace, &mut server).await.is_ok();
    if !finished {
        tracing::warn!(requests = running(), "shutdown timeout: stopping the engines under the requests still running");
    }
    let stopped = state.registry.stop_all(grace / 2).await;
    if !finished {
        finished = tokio::time::timeout_at(deadline, &mut server).await.is_ok();
    }
    if !finished {
        tracing::warn!("shutdown timeout: closing the connections still open");
        server.abort();
    }
    if !stopped {
        // Dropping the last handle of an engine joins its thread, which did not stop: keep one
        // so nothing waits on it; the process exit ends it.
        std::mem::forget(state.registry.clone());
    }
    tracing::info!("stopped");
}

/// `--shutdown-timeout`: seconds, >= 0.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=1e9).contains(&secs) => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("`{s}` is not a number of seconds >= 0")),
    }
}

/// Resolves once `rx` says a shutdown signal came.
async fn signalled(mut rx: tokio::sync::watch::Receiver<bool>) {
    // The sender lives as long as the process waits for signals.
    let _ = rx.wait_for(|&s| s).await;
}

/// What to load at startup: each `--model` (a catalog name, or a directory / .gguf file / Hub
/// id), then the catalog's `load = true` entries; the default model when that is nothing.
fn startup_models(args: &ServeArgs, catalog: &Catalog) -> anyhow::Result<Vec<LoadRequest>> {
    if args.served_model_name.is_some() && args.model.len() > 1 {
        anyhow::bail!("--served-model-name names one model; with several --model, name them in a --catalog");
    }
    let mut out: Vec<LoadRequest> = Vec::new();
    for m in &args.model {
        if let Some(entry) = catalog.get(m) {
            out.push(entry.request.clone());
            continue;
        }
        let path = Path::new(m);
        let gguf = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) && path.is_file();
        let source = if gguf { Source::Gguf(path.to_owned()) } else { Source::Dir(super::resolve_model(Some(m))?) };
        let stem = match &source {
            Source::Gguf(p) => p.file_stem(),
            Source::Dir(d) => d.file_name(),
            Source::Hub(_) => None,
        };
        let name = stem.map_or_else(|| m.clone(), |n| n.to_string_lossy().into_owned());
        out.push(LoadRequest { name, source, overrides: LoadOverrides::default(), keep_alive: None });
    }
    for entry in catalog.entries().filter(|e| e.load_at_start) {
        if !out.iter().any(|r| r.name == entry.request.name) {
            out.push(entry.request.clone());
        }
    }
    if out.is_empty() {
        let dir = super::resolve_model(None)?;
        let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        out.push(LoadRequest { name, source: Source::Dir(dir), overrides: LoadOverrides::default(), keep_alive: None });
    }
    if let (Some(name), [one]) = (&args.served_model_name, out.as_mut_slice()) {
        one.name = name.clone();
    }
    for (i, r) in out.iter().enumerate() {
        check_model_name(&r.name).map_err(|e| anyhow::anyhow!("{e} (--served-model-name or a catalog name)"))?;
        if out[..i].iter().any(|o| o.name == r.name) {
            anyhow::bail!("two startup models are named `{}`; name them apart in a --catalog", r.name);
        }
    }
    Ok(out)
}

/// The key auth uses: an empty one is a mistake (an unset variable expanded), never "no auth".
fn api_key(key: Option<&str>) -> anyhow::Result<Option<String>> {
    match key {
        Some(k) if k.trim().is_empty() => anyhow::bail!(
            "--api-key (or FLINT_API_KEY) is empty: give a key, or leave both unset to serve without auth"
        ),
        k => Ok(k.map(str::to_owned)),
    }
}

/// `--cors-origin` values as browsers send `Origin` (lower case, no trailing `/`): `*` or
/// `http(s)://host[:port]`; empty entries (an empty variable) are dropped.
fn cors_origins(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for o in list.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
        let norm = o.trim_end_matches('/').to_ascii_lowercase();
        let authority = norm.strip_prefix("http://").or_else(|| norm.strip_prefix("https://"));
        let ok = norm == "*" || authority.is_some_and(|a| !a.is_empty() && !a.contains(['/', '?', '#', ' ', '*']));
        if !ok {
            anyhow::bail!("--cors-origin {o}: expected `*` or an origin like `http://host:port` (no path)");
        }
        out.push(norm);
    }
    Ok(out)
}

/// `--allowed-host` values, lower case: names (`.domain` for subdomains, `*` for any), no port.
fn allowed_hosts(list: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for h in list.iter().map(|h| h.trim()).filter(|h| !h.is_empty()) {
        let bracketed_v6 = h.starts_with('[') && h.ends_with(']');
        if h.contains(['/', ' ', '@']) || (h.contains(':') && !bracketed_v6) || (h.contains('*') && h != "*") {
            anyhow::bail!("--allowed-host {h}: expected a host name without port (`flint.example.com`, `.example.com`, `*`)");
        }
        out.push(h.to_ascii_lowercase());
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_api_key_is_an_error() {
        for empty in ["", "  "] {
            let e = api_key(Some(empty)).unwrap_err().to_string();
            assert!(e.contains("--api-key") && e.contains("FLINT_API_KEY"), "{e}");
        }
        assert_eq!(api_key(None).unwrap(), None);
        assert_eq!(api_key(Some("k")).unwrap().as_deref(), Some("k"));
    }

    #[test]
    fn cors_origins_and_hosts_are_checked() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(cors_origins(&s(&["HTTP://App.example:3000/", "*", ""])).unwrap(), ["http://app.example:3000", "*"]);
        for bad in ["app.example", "http://app.example/path", "ftp://x", "http://"] {
            assert!(cors_origins(&s(&[bad])).unwrap_err().to_string().contains("--cors-origin"), "{bad}");
        }
        assert_eq!(allowed_hosts(&s(&["Flint.LAN", ".example.com", "*", "[::1]", ""])).unwrap(), ["flint.lan", ".example.com", "*", "[::1]"]);
        for bad in ["flint.lan:8000", "http://flint.lan", "*.example.com"] {
            assert!(allowed_hosts(&s(&[bad])).unwrap_err().to_string().contains("--allowed-host"), "{bad}");
        }
    }
}
