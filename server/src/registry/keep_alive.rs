//! [`KeepAlive`]: how long an idle model stays loaded, in Ollama's forms.

use std::time::Duration;

/// How long a model stays loaded after its last request finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until it is unloaded by hand (flint's default for models given at startup).
    Forever,
    /// Unloaded once idle this long; zero unloads it as soon as its requests are done.
    For(Duration),
}

impl KeepAlive {
    /// Ollama's forms: a duration string (`"5m"`, `"1h30m"`, `"10s"`, `"500ms"`, `"0"`, `"-1"`;
    /// a bare number is seconds) or a number of seconds; a negative value means forever.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("a keep-alive duration must not be empty".into());
        }
        if let Some(rest) = t.strip_prefix('-') {
            // Any negative duration is forever, as in Ollama; it still has to be well formed.
            return parse_duration(rest).map(|_| Self::Forever);
        }
        parse_duration(t).map(Self::For)
    }

    /// `keep_alive` of a JSON body: a string as in [`Self::parse`] or a number of seconds.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        match v {
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Number(n) => {
                let secs = n.as_f64().ok_or_else(|| format!("{n} is not a number of seconds"))?;
                Ok(Self::from_secs(secs))
            }
            other => Err(format!("expected a duration like \"5m\" or a number of seconds, got {other}")),
        }
    }

    /// A number of seconds; negative (or not finite) means forever.
    pub fn from_secs(secs: f64) -> Self {
        if secs < 0.0 || !secs.is_finite() {
            Self::Forever
        } else {
            Self::For(Duration::from_secs_f64(secs.min(1e12)))
        }
    }

    /// Seconds, or `None` for forever (what the admin routes report).
    pub fn as_secs(self) -> Option<f64> {
        match self {
            Self::Forever => None,
            Self::For(d) => Some(d.as_secs_f64()),
        }
    }
}

/// `1h30m`, `5m`, `10s`, `500ms`, `2.5s`, `300` (seconds) → a duration.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration (use e.g. \"30s\", \"5m\", \"1h30m\" or seconds)");
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 { Ok(Duration::from_secs_f64(secs.min(1e12))) } else { Err(bad()) };
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total.min(1e12)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_forms() {
        let secs = |s: &str| KeepAlive::parse(s).unwrap().as_secs();
        assert_eq!(secs("5m"), Some(300.0));
        assert_eq!(secs("1h30m"), Some(5400.0));
        assert_eq!(secs("10s"), Some(10.0));
        assert_eq!(secs("500ms"), Some(0.5));
        assert_eq!(secs("0"), Some(0.0));
        assert_eq!(secs("45"), Some(45.0));
        assert_eq!(secs("-1"), None);
        assert_eq!(secs("-5m"), None);
        for bad in ["", "5 minutes", "m", "1x", "--1", "nan"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(KeepAlive::from_json(&serde_json::json!(-1)).unwrap(), KeepAlive::Forever);
        assert_eq!(KeepAlive::from_json(&serde_json::json!(2)).unwrap(), KeepAlive::For(Duration::from_secs(2)));
        assert_eq!(KeepAlive::from_json(&serde_json::json!("0")).unwrap(), KeepAlive::For(Duration::ZERO));
        assert!(KeepAlive::from_json(&serde_json::json!(true)).is_err());
    }
}
