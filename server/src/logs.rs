//! Logging for the `flint` binary: one [`init`] that sets up `tracing` with the `FLINT_LOG`
//! filter, a stderr writer (human text or one JSON object per line, for log shippers), and a
//! bounded in-memory ring of recent lines ([`LogRing`]) so an operator can read what just
//! happened over HTTP (`GET /admin/logs`) without shell access to the host.

use std::{
    collections::VecDeque,
    fmt,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{field::Field, Event, Level, Subscriber};
use tracing_subscriber::{layer::Context, prelude::*, EnvFilter, Layer};

/// The filter when `FLINT_LOG` is unset or invalid: quiet dependencies, flint's own crates at info.
pub const DEFAULT_FILTER: &str = "warn,flint_engine=info,flint_server=info";
/// Lines kept in the ring when `FLINT_LOG_BUFFER` is unset or not a number.
pub const DEFAULT_BUFFER: usize = 2000;

/// How log lines are written to stderr.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    #[default]
    Text,
    /// One JSON object per line, event fields flattened into it.
    Json,
}

/// One recorded event, as `GET /admin/logs` returns it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct LogLine {
    /// RFC 3339, UTC, milliseconds (`2025-01-02T03:04:05.678Z`).
    pub timestamp: String,
    /// `TRACE`, `DEBUG`, `INFO`, `WARN` or `ERROR`.
    pub level: String,
    /// The event's target (usually the module path).
    pub target: String,
    /// The event's message (empty if it had none).
    pub message: String,
    /// The event's other fields.
    pub fields: Map<String, Value>,
}

/// A line plus its parsed level, so filtering needs no string parsing.
#[derive(Debug)]
struct Entry {
    level: Level,
    line: LogLine,
}

/// The most recent `capacity` log lines; the oldest is dropped when full.
///
/// A poisoned lock is recovered rather than propagated: a panic elsewhere must not also take
/// logging down, and the deque is always left consistent (each operation is one push/pop).
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    lines: Mutex<VecDeque<Entry>>,
}

impl LogRing {
    /// A ring holding at most `capacity` lines (0 keeps nothing). Memory grows as lines
    /// arrive, so a large capacity costs nothing until it is used.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, lines: Mutex::new(VecDeque::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `line`, dropping the oldest if the ring is full. A line whose level does not
    /// parse is kept as `INFO` for filtering.
    pub fn push(&self, line: LogLine) {
        let level = line.level.parse().unwrap_or(Level::INFO);
        self.push_entry(Entry { level, line });
    }

    fn push_entry(&self, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        let mut lines = self.lock();
        while lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(entry);
    }

    /// The newest `limit` lines at `min_level` or more severe (all levels if `None`), oldest first.
    pub fn recent(&self, limit: usize, min_level: Option<Level>) -> Vec<LogLine> {
        let lines = self.lock();
        // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
        let keep = |e: &&Entry| min_level.is_none_or(|min| e.level <= min);
        let mut out: Vec<LogLine> = lines.iter().rev().filter(keep).take(limit).map(|e| e.line.clone()).collect();
        out.reverse();
        out
    }

    /// Lines currently held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`Layer`] that copies every event it sees into a [`LogRing`]. It has no filter of its
/// own: [`init`] puts the `FLINT_LOG` filter on the whole subscriber, so the ring holds
/// exactly what stderr shows.
pub struct RingLayer(pub Arc<LogRing>);

impl<S: Subscriber> Layer<S> for RingLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let line = LogLine {
            timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            level: meta.level().to_string(),
            // Events bridged from the `log` crate all have target `log`; the real one is a field.
            target: visitor.log_target.unwrap_or_else(|| meta.target().to_owned()),
            message: visitor.message.unwrap_or_default(),
            fields: visitor.fields,
        };
        self.0.push_entry(Entry { level: *meta.level(), line });
    }
}

/// Collects an event's `message` and other fields as JSON values.
#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    log_target: Option<String>,
    fields: Map<String, Value>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            // The rest of the `log` bridge's bookkeeping (module path, file, line) is noise here.
            name if name.starts_with("log.") => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl tracing::field::Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // NaN and infinities have no JSON number; keep them readable as strings.
        let v = serde_json::Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

static RING: OnceLock<Arc<LogRing>> = OnceLock::new();

/// `FLINT_LOG_BUFFER` as a line count; unset or unparsable means [`DEFAULT_BUFFER`].
fn buffer_capacity() -> usize {
    std::env::var("FLINT_LOG_BUFFER").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_BUFFER)
}

/// Installs the global subscriber: the `FLINT_LOG` filter (default [`DEFAULT_FILTER`]) over a
/// stderr writer in `format` and a [`RingLayer`]. Returns the global ring (also [`global`]).
///
/// Safe to call more than once: later calls keep the first subscriber and ring.
pub fn init(format: LogFormat) -> Arc<LogRing> {
    let ring = RING.get_or_init(|| Arc::new(LogRing::new(buffer_capacity()))).clone();
    let filter = EnvFilter::try_from_env("FLINT_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // `Option<Layer>` is a layer, which lets one subscriber type carry either format.
    let text = (format == LogFormat::Text).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
    });
    // An error means a subscriber is already installed (a second call); keep that one.
    let _ = tracing_subscriber::registry().with(filter).with(text).with(json).with(RingLayer(ring.clone())).try_init();
    ring
}

/// The ring [`init`] installed; `None` if logging was never initialised (as in tests).
pub fn global() -> Option<Arc<LogRing>> {
    RING.get().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(level: &str, message: &str) -> LogLine {
        LogLine {
            timestamp: String::new(),
            level: level.into(),
            target: "t".into(),
            message: message.into(),
            fields: Map::new(),
        }
    }

    fn messages(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.message.as_str()).collect()
    }

    #[test]
    fn capacity_drops_oldest() {
        let ring = LogRing::new(3);
        for i in 0..5 {
            ring.push(line("INFO", &i.to_string()));
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(messages(&ring.recent(10, None)), ["2", "3", "4"]);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let ring = LogRing::new(0);
        ring.push(line("ERROR", "x"));
        assert!(ring.is_empty());
    }

    #[test]
    fn level_filter_keeps_at_least_as_severe() {
        let ring = LogRing::new(10);
        for lvl in ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"] {
            ring.push(line(lvl, lvl));
        }
        assert_eq!(messages(&ring.recent(10, Some(Level::WARN))), ["WARN", "ERROR"]);
        assert_eq!(messages(&ring.recent(10, Some(Level::ERROR))), ["ERROR"]);
        assert_eq!(ring.recent(10, Some(Level::TRACE)).len(), 5);
    }

    #[test]
    fn limit_returns_newest_in_order() {
        let ring = LogRing::new(10);
        for i in 0..6 {
            ring.push(line(if i % 2 == 0 { "INFO" } else { "WARN" }, &i.to_string()));
        }
        assert_eq!(messages(&ring.recent(3, None)), ["3", "4", "5"]);
        assert_eq!(messages(&ring.recent(2, Some(Level::WARN))), ["3", "5"]);
        assert!(ring.recent(0, None).is_empty());
    }

    #[test]
    fn poisoned_lock_is_recovered() {
        let ring = Arc::new(LogRing::new(4));
        ring.push(line("INFO", "before"));
        let r = ring.clone();
        let _ = std::thread::spawn(move || {
            let _guard = r.lock();
            panic!("poison the ring");
        })
        .join();
        ring.push(line("INFO", "after"));
        assert_eq!(messages(&ring.recent(10, None)), ["before", "after"]);
    }

    #[test]
    fn layer_records_message_and_fields() {
        let ring = Arc::new(LogRing::new(10));
        let subscriber = tracing_subscriber::registry().with(RingLayer(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(model = "x", "hello");
            tracing::warn!(n = 3, ok = true, "count {}", 7);
        });
        let lines = ring.recent(10, None);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].message, "hello");
        assert_eq!(lines[0].level, "INFO");
        assert_eq!(Value::Object(lines[0].fields.clone()), serde_json::json!({"model": "x"}));
        assert!(lines[0].target.ends_with("logs::tests"), "{}", lines[0].target);
        // RFC 3339 UTC with milliseconds: 2025-01-02T03:04:05.678Z
        let ts = &lines[0].timestamp;
        assert!(ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.', "{ts}");
        assert_eq!(lines[1].message, "count 7");
        assert_eq!(Value::Object(lines[1].fields.clone()), serde_json::json!({"n": 3, "ok": true}));
    }

    #[test]
    fn filter_on_subscriber_applies_to_ring() {
        let ring = Arc::new(LogRing::new(10));
        let subscriber =
            tracing_subscriber::registry().with(EnvFilter::new("warn")).with(RingLayer(ring.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("dropped");
            tracing::warn!("kept");
        });
        assert_eq!(messages(&ring.recent(10, None)), ["kept"]);
    }
}
