//! The server's step profile over one level: flint's `/metrics` counters
//! `flint_engine_steps_total` and `flint_engine_step_seconds_total{phase}` read before and
//! after, so a throughput figure comes with where each engine step spent its time. Other
//! servers lack these series; the profile is then simply absent.

use reqwest::Client;
use serde::Serialize;

/// Counters summed over the server's models at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepCounters {
    pub steps: f64,
    pub schedule_s: f64,
    pub forward_s: f64,
    pub sample_s: f64,
}

/// Mean time per engine step of each phase over a level, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StepProfile {
    pub steps: u64,
    pub schedule_ms: f64,
    pub forward_ms: f64,
    pub sample_ms: f64,
}

impl StepCounters {
    /// Reads the counters from `/metrics` beside the API root (`.../v1` → `.../metrics`);
    /// `None` when the server does not expose them.
    pub async fn scrape(client: &Client, base_url: &str, api_key: Option<&str>) -> Option<Self> {
        let root = base_url.trim_end_matches('/');
        let root = root.strip_suffix("/v1").unwrap_or(root);
        let mut req = client.get(format!("{root}/metrics")).timeout(std::time::Duration::from_secs(5));
        if let Some(key) = api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Self::parse(&resp.text().await.ok()?)
    }

    /// Sums the series over models; `None` without `flint_engine_steps_total`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut c = Self::default();
        let mut seen = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(v) = value.parse::<f64>() else { continue };
            let name = series.split('{').next().unwrap_or(series);
            match name {
                "flint_engine_steps_total" => {
                    c.steps += v;
                    seen = true;
                }
                "flint_engine_step_seconds_total" if series.contains("phase=\"schedule\"") => c.schedule_s += v,
                "flint_engine_step_seconds_total" if series.contains("phase=\"forward\"") => c.forward_s += v,
                "flint_engine_step_seconds_total" if series.contains("phase=\"sample\"") => c.sample_s += v,
                _ => {}
            }
        }
        seen.then_some(c)
    }

    /// The profile of the steps run between `before` and `self`; `None` if none ran.
    pub fn since(&self, before: &Self) -> Option<StepProfile> {
        let steps = self.steps - before.steps;
        if steps < 1.0 {
            return None;
        }
        let per_step = |a: f64, b: f64| (a - b) * 1e3 / steps;
        Some(StepProfile {
            steps: steps as u64,
            schedule_ms: per_step(self.schedule_s, before.schedule_s),
            forward_ms: per_step(self.forward_s, before.forward_s),
            sample_ms: per_step(self.sample_s, before.sample_s),
        })
    }
}

impl StepProfile {
    /// One line under a level's row of the table.
    pub fn render(&self) -> String {
        format!(
            "  step profile: {} steps, per step: schedule {:.3} ms, forward {:.3} ms, sample {:.3} ms",
            self.steps, self.schedule_ms, self.forward_ms, self.sample_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_differences() {
        let page = "# HELP flint_engine_steps_total x\n\
                    flint_engine_steps_total{model_name=\"a\"} 10\n\
                    flint_engine_steps_total{model_name=\"b\"} 5\n\
                    flint_engine_step_seconds_total{model_name=\"a\",phase=\"schedule\"} 0.5\n\
                    flint_engine_step_seconds_total{model_name=\"a\",phase=\"forward\"} 2\n\
                    flint_engine_step_seconds_total{model_name=\"a\",phase=\"sample\"} 1.5\n\
                    vllm:generation_tokens_total{model_name=\"a\"} 99\n";
        let after = StepCounters::parse(page).expect("has the series");
        assert_eq!(after, StepCounters { steps: 15.0, schedule_s: 0.5, forward_s: 2.0, sample_s: 1.5 });
        let before = StepCounters { steps: 5.0, ..Default::default() };
        let p = after.since(&before).expect("10 steps");
        assert_eq!(p.steps, 10);
        assert!((p.forward_ms - 200.0).abs() < 1e-9 && (p.sample_ms - 150.0).abs() < 1e-9);
        assert!(after.since(&after).is_none());
        assert!(StepCounters::parse("vllm:num_requests_running 1\n").is_none());
    }
}
