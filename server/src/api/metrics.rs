//! `GET /metrics`: Prometheus text exposition (format 0.0.4) with vLLM's metric names.
//!
//! Two sources, one label set (`model_name` = the served model's name; requests to a LoRA
//! adapter count under the base model, as one series):
//! - the engine's counters ([`flint_engine::EngineStats`]), read at scrape time: gauges
//!   `vllm:num_requests_running`, `vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`
//!   (0..1), `flint_lora_adapters_loaded`, `flint_lora_adapters_resident`, and counters
//!   `vllm:num_preemptions_total`, `vllm:prefix_cache_queries_total`,
//!   `vllm:prefix_cache_hits_total` (prompt tokens), `vllm:generation_tokens_total`;
//! - per-request observations made by the forwarder ([`super::openai::forward_all`]), one per
//!   engine request (a completions request with several prompts makes several):
//!   `vllm:prompt_tokens_total`, `vllm:request_success_total{finished_reason}`, and the
//!   histograms `vllm:time_to_first_token_seconds`, `vllm:inter_token_latency_seconds`,
//!   `vllm:e2e_request_latency_seconds`. A request whose client went away, or that failed, is
//!   not a success and adds no prompt tokens or end-to-end latency.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};
use flint_engine::FinishReason;

use super::AppState;

/// Seconds from arrival to the first output token (vLLM's buckets).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
];
/// Seconds between output tokens (vLLM's buckets).
pub const ITL_BUCKETS: &[f64] =
    &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
/// Seconds from arrival to the last output (vLLM's buckets).
pub const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
];

/// A histogram with fixed upper bounds (`le`); observations above the last go to `+Inf`.
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramData>,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct HistogramData {
    /// Per bucket (not cumulative), then one for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bucket bounds must increase");
        let data = HistogramData { counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 };
        Self { bounds, inner: Mutex::new(data) }
    }

    pub fn observe(&self, v: f64) {
        self.observe_n(v, 1);
    }

    /// `n` observations of `v` at once.
    pub fn observe_n(&self, v: f64, n: u64) {
        if n == 0 || v.is_nan() {
            return;
        }
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        let mut d = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        d.counts[i] += n;
        d.sum += v * n as f64;
        d.count += n;
    }

    fn snapshot(&self) -> HistogramData {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What the server observes about one model's requests.
pub struct ModelMetrics {
    pub prompt_tokens: AtomicU64,
    /// Finished requests by `finished_reason` (`stop`, `length`).
    success_stop: AtomicU64,
    success_length: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        Self {
            prompt_tokens: AtomicU64::new(0),
            success_stop: AtomicU64::new(0),
            success_length: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

impl ModelMetrics {
    /// One engine request that ran to its end: its prompt tokens, how its last sample
    /// finished, and its end-to-end latency.
    pub fn finished(&self, prompt_tokens: usize, reason: FinishReason, e2e: Duration) {
        self.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        let c = match reason {
            FinishReason::Stop => &self.success_stop,
            FinishReason::Length => &self.success_length,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.e2e.observe(e2e.as_secs_f64());
    }
}

/// The registry: one [`ModelMetrics`] per served model name.
#[derive(Default)]
pub struct Metrics {
    models: Mutex<BTreeMap<String, Arc<ModelMetrics>>>,
}

impl Metrics {
    /// The series of `model` (created on first use).
    pub fn model(&self, model: &str) -> Arc<ModelMetrics> {
        let mut m = self.models.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(model.to_owned()).or_default().clone()
    }

    /// The exposition text: engine gauges and counters for each model in `engines` (the ready
    /// models whose stats could be read), then every model's request metrics.
    pub fn render(&self, engines: &[EngineGauges]) -> String {
        let models: Vec<(String, Arc<ModelMetrics>)> =
            self.models.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = String::new();
        let name = "flint_models_loaded";
        family(&mut out, name, "Models ready to serve.", "gauge");
        let _ = writeln!(out, "{name} {}", engines.len());
        let gauges: [Family<GaugeOf>; 5] = [
            ("vllm:num_requests_running", "Requests in model execution batches.", |g| g.running as f64),
            ("vllm:num_requests_waiting", "Requests waiting to be processed.", |g| g.waiting as f64),
            ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", |g| g.kv_cache_usage),
            ("flint_lora_adapters_loaded", "LoRA adapters loaded (servable by name).", |g| g.adapters_loaded as f64),
            ("flint_lora_adapters_resident", "LoRA adapters resident in the model's slots.", |g| g.adapters_resident as f64),
        ];
        let counters: [Family<CounterOf>; 5] = [
            ("flint_engine_steps_total", "Engine steps (forward passes) run.", |g| g.steps),
            ("vllm:num_preemptions_total", "Cumulative number of preemptions.", |g| g.preemptions),
            ("vllm:prefix_cache_queries_total", "Prefix-cache queries, in prompt tokens.", |g| g.prefix_cache_queries),
            ("vllm:prefix_cache_hits_total", "Prefix-cache hits, in prompt tokens.", |g| g.prefix_cache_hits),
            ("vllm:generation_tokens_total", "Number of generation tokens processed.", |g| g.generation_tokens),
        ];
        if !engines.is_empty() {
            for (name, help, get) in gauges {
                family(&mut out, name, help, "gauge");
                for g in engines {
                    sample(&mut out, name, &label(&g.model), get(g));
                }
            }
            for (name, help, get) in counters {
                family(&mut out, name, help, "counter");
                for g in engines {
                    sample(&mut out, name, &label(&g.model), get(g) as f64);
                }
            }
            // The step profile: per-step time of each phase is this over flint_engine_steps_total.
            let name = "flint_engine_step_seconds_total";
            family(&mut out, name, "Time the engine spent in each phase of its steps (forward: launch only on a GPU unless FLINT_PROFILE_SYNC=1; sample: includes waiting for the GPU).", "counter");
            for g in engines {
                for (phase, us) in [("schedule", g.schedule_micros), ("forward", g.forward_micros), ("sample", g.sample_micros)] {
                    let l = format!("{},phase=\"{phase}\"", label(&g.model));
                    sample(&mut out, name, &l, us as f64 / 1e6);
                }
            }
        }
        let name = "vllm:prompt_tokens_total";
        family(&mut out, name, "Number of prefill tokens processed (finished requests).", "counter");
        for (model, m) in &models {
            sample(&mut out, name, &label(model), m.prompt_tokens.load(Ordering::Relaxed) as f64);
        }
        let name = "vllm:request_success_total";
        family(&mut out, name, "Count of successfully processed requests.", "counter");
        for (model, m) in &models {
            for (reason, c) in [("stop", &m.success_stop), ("length", &m.success_length)] {
                let l = format!("{},finished_reason=\"{reason}\"", label(model));
                sample(&mut out, name, &l, c.load(Ordering::Relaxed) as f64);
            }
        }
        let hists: [Family<HistogramOf>; 3] = [
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", |m| &m.ttft),
            ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", |m| &m.itl),
            ("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", |m| &m.e2e),
        ];
        for (name, help, get) in hists {
            family(&mut out, name, help, "histogram");
            for (model, m) in &models {
                histogram(&mut out, name, &label(model), get(m));
            }
        }
        out
    }
}

/// A metric family: name, help text, and how to read a sample.
type Family<F> = (&'static str, &'static str, F);
type GaugeOf = fn(&EngineGauges) -> f64;
type CounterOf = fn(&EngineGauges) -> u64;
type HistogramOf = fn(&ModelMetrics) -> &Histogram;

/// The engine's state for one scrape.
#[derive(Clone, Debug, Default)]
pub struct EngineGauges {
    pub model: String,
    pub running: usize,
    pub waiting: usize,
    /// 0..1.
    pub kv_cache_usage: f64,
    pub adapters_loaded: usize,
    pub adapters_resident: usize,
    pub preemptions: u64,
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub generation_tokens: u64,
    pub steps: u64,
    pub schedule_micros: u64,
    pub forward_micros: u64,
    pub sample_micros: u64,
}

/// `model_name="..."` with the value escaped as the text format wants.
fn label(model: &str) -> String {
    let mut v = String::with_capacity(model.len());
    for c in model.chars() {
        match c {
            '\\' => v.push_str("\\\\"),
            '"' => v.push_str("\\\""),
            '\n' => v.push_str("\\n"),
            c => v.push(c),
        }
    }
    format!("model_name=\"{v}\"")
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, v: f64) {
    let _ = writeln!(out, "{name}{{{labels}}} {}", number(v));
}

/// Integers without a fraction, `+Inf`/`-Inf`/`NaN` as the format spells them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let d = h.snapshot();
    let mut cumulative = 0;
    for (i, &c) in d.counts.iter().enumerate() {
        cumulative += c;
        let le = h.bounds.get(i).map_or_else(|| "+Inf".to_string(), |&b| format!("{b:?}"));
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", number(d.sum));
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", d.count);
}

/// Prometheus metrics (text format 0.0.4) with vLLM's names: engine gauges and counters read at
/// scrape time, request counters and latency histograms (time to first token, inter-token
/// latency, end to end) observed per request. Behind `--api-key` like every other route except
/// `/health` and `/ready`: configure the scrape job with the key as a bearer token
/// (`authorization: {credentials: KEY}` in Prometheus). Always 200; the engine's series are left
/// out while the model is loading or the server is shutting down.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut gauges = Vec::new();
    for served in state.registry.ready() {
        if let Ok(s) = served.engine.stats().await {
            let sch = s.scheduler;
            let kv_cache_usage = if sch.usable_blocks == 0 {
                0.0
            } else {
                (1.0 - sch.free_blocks as f64 / sch.usable_blocks as f64).clamp(0.0, 1.0)
            };
            gauges.push(EngineGauges {
                model: served.name.clone(),
                running: sch.running,
                waiting: sch.waiting,
                kv_cache_usage,
                adapters_loaded: served.engine.adapters().len(),
                adapters_resident: s.adapters_resident,
                preemptions: sch.preemptions,
                prefix_cache_queries: sch.prefix_cache.queries,
                prefix_cache_hits: sch.prefix_cache.hits,
                generation_tokens: s.generated_tokens,
                steps: s.steps,
                schedule_micros: s.schedule_micros,
                forward_micros: s.forward_micros,
                sample_micros: s.sample_micros,
            });
        }
    }
    let mut body = state.metrics.render(&gauges);
    if let Some(ft) = &state.finetune {
        let name = "flint_fine_tuning_jobs";
        let _ = writeln!(body, "# HELP {name} Fine-tuning jobs by status.\n# TYPE {name} gauge");
        for (status, n) in ft.counts() {
            let _ = writeln!(body, "{name}{{status=\"{status}\"}} {n}");
        }
    }
    let statuses = state.registry.statuses();
    if !statuses.is_empty() {
        // A failed engine and its restarts show on a dashboard without polling the admin routes.
        let name = "flint_model_failed";
        family(&mut body, name, "1 while the model is failed (its load, or its engine while serving).", "gauge");
        for s in &statuses {
            sample(&mut body, name, &label(&s.name), f64::from(u8::from(s.status == "failed")));
        }
        let name = "flint_model_engine_restarts";
        family(&mut body, name, "Engine restarts after failures since the model was last loaded by hand.", "gauge");
        for s in &statuses {
            sample(&mut body, name, &label(&s.name), f64::from(s.restarts));
        }
    }
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        const B: &[f64] = &[0.25, 1.0, 10.0];
        let m = Metrics::default();
        let h = Histogram::new(B);
        for v in [0.125, 0.25, 0.5, 20.0] {
            h.observe(v);
        }
        h.observe_n(2.0, 3);
        let mut out = String::new();
        histogram(&mut out, "x", &label("m"), &h);
        let expected = "x_bucket{model_name=\"m\",le=\"0.25\"} 2\n\
                        x_bucket{model_name=\"m\",le=\"1.0\"} 3\n\
                        x_bucket{model_name=\"m\",le=\"10.0\"} 6\n\
                        x_bucket{model_name=\"m\",le=\"+Inf\"} 7\n\
                        x_sum{model_name=\"m\"} 26.875\n\
                        x_count{model_name=\"m\"} 7\n";
        assert_eq!(out, expected);

        // The whole page: HELP/TYPE once per family, every histogram series ends in +Inf.
        m.model("m").ttft.observe(0.002);
        let text = m.render(&[]);
        assert!(text.contains("# HELP vllm:time_to_first_token_seconds "), "{text}");
        assert!(text.contains("# TYPE vllm:time_to_first_token_seconds histogram\n"), "{text}");
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.001\"} 0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"0.005\"} 1\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_count{model_name=\"m\"} 1\n"));
        assert!(text.contains("# TYPE vllm:request_success_total counter\n"));
        assert!(text.contains("vllm:request_success_total{model_name=\"m\",finished_reason=\"length\"} 0\n"));
        assert!(!text.contains("vllm:num_requests_running"), "no engine series without the engine");
        assert_eq!(text.matches("# TYPE vllm:e2e_request_latency_seconds ").count(), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label(r#"a"b\c"#), r#"model_name="a\"b\\c""#);
        assert_eq!(label("x\ny"), "model_name=\"x\\ny\"");
        let m = Metrics::default();
        m.model("q\"m").finished(3, FinishReason::Stop, Duration::from_millis(400));
        let g = EngineGauges { model: "q\"m".into(), running: 2, kv_cache_usage: 0.25, ..Default::default() };
        let text = m.render(std::slice::from_ref(&g));
        assert!(text.contains("vllm:num_requests_running{model_name=\"q\\\"m\"} 2\n"), "{text}");
        assert!(text.contains("vllm:kv_cache_usage_perc{model_name=\"q\\\"m\"} 0.25\n"), "{text}");
        assert!(text.contains("vllm:prompt_tokens_total{model_name=\"q\\\"m\"} 3\n"), "{text}");
        assert!(text.contains("vllm:request_success_total{model_name=\"q\\\"m\",finished_reason=\"stop\"} 1\n"));
        assert!(text.contains("vllm:e2e_request_latency_seconds_bucket{model_name=\"q\\\"m\",le=\"0.3\"} 0\n"));
        assert!(text.contains("vllm:e2e_request_latency_seconds_bucket{model_name=\"q\\\"m\",le=\"0.5\"} 1\n"));
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(7.0), "7");
    }
}
