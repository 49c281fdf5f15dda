//! Prometheus metrics in the text exposition format, written by hand (no registry needed).
//!
//! Engine gauges and counters are read from [`EngineStats`] at scrape time; the server keeps
//! request counts by endpoint and status, latency histograms, and per-API-key usage and cost.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use moela_engine::EngineStats;

/// A histogram with fixed upper bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistInner>,
}

#[derive(Debug, Default, Clone)]
struct HistInner {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            inner: Mutex::new(HistInner {
                counts: vec![0; bounds.len()],
                ..Default::default()
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            h.counts[i] += 1;
        }
        h.sum += v;
        h.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const TOKEN_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const REQUEST_BOUNDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Usage of one API key.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub cache_hit_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

impl KeyUsage {
    fn add(&mut self, u: &KeyUsage) {
        self.requests += u.requests;
        self.prompt_tokens += u.prompt_tokens;
        self.cache_hit_tokens += u.cache_hit_tokens;
        self.completion_tokens += u.completion_tokens;
        self.cost += u.cost;
    }
}

/// How a generation request ended, a label of the per-key counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered in full.
    Completed,
    /// The client went away first (it is billed for what was generated).
    Cancelled,
    /// The engine or server ended it with an error (a drain timeout, a fault).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed => "error",
        }
    }
}

/// The server's own metrics.
#[derive(Debug)]
pub struct Metrics {
    /// (endpoint, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Streams that ended with an error after the 200 was sent.
    stream_errors: Mutex<u64>,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub request_duration: Histogram,
    keys: Mutex<BTreeMap<(String, Outcome), KeyUsage>>,
    currency: Option<String>,
}

impl Metrics {
    /// `currency`: the price table's, when costs are accounted.
    pub fn new(currency: Option<String>) -> Metrics {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            stream_errors: Mutex::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            inter_token: Histogram::new(TOKEN_BOUNDS),
            request_duration: Histogram::new(REQUEST_BOUNDS),
            keys: Mutex::new(BTreeMap::new()),
            currency,
        }
    }

    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn count_stream_error(&self) {
        *self.stream_errors.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    /// Adds an ended request's usage to its key, under how it ended.
    pub fn add_key_usage(&self, key: &str, outcome: Outcome, u: &KeyUsage) {
        let mut m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((key.to_string(), outcome)).or_default().add(u);
    }

    /// A key's usage over every outcome.
    pub fn key_usage(&self, key: &str) -> Option<KeyUsage> {
        let m = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for (_, u) in m.iter().filter(|((k, _), _)| k == key) {
            found.get_or_insert_with(KeyUsage::default).add(u);
        }
        found
    }

    /// The whole exposition.
    pub fn render(&self, stats: &EngineStats) -> String {
        let mut out = String::new();
        for (name, help, v) in engine_gauges(stats) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, v) in engine_counters(stats) {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let reqs = self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP moela_requests_total HTTP requests by endpoint and status code.\n# TYPE moela_requests_total counter"
        );
        for ((endpoint, status), n) in &reqs {
            let _ = writeln!(
                out,
                "moela_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                escape(endpoint)
            );
        }
        let errors = *self.stream_errors.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP moela_stream_errors_total Streams that failed after they started.\n# TYPE moela_stream_errors_total counter\nmoela_stream_errors_total {errors}"
        );
        self.ttft.render(
            &mut out,
            "moela_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
        );
        self.inter_token.render(
            &mut out,
            "moela_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        self.request_duration.render(
            &mut out,
            "moela_request_duration_seconds",
            "Time from request arrival to its last token.",
        );
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner()).clone();
        type Field = fn(&KeyUsage) -> f64;
        let per_key: [(&str, &str, Field); 4] = [
            (
                "moela_key_requests_total",
                "Generation requests per API key and outcome (completed, cancelled, error).",
                |u| u.requests as f64,
            ),
            (
                "moela_key_prompt_tokens_total",
                "Prompt tokens per API key.",
                |u| u.prompt_tokens as f64,
            ),
            (
                "moela_key_prompt_cache_hit_tokens_total",
                "Prompt tokens served from the prefix cache, per API key.",
                |u| u.cache_hit_tokens as f64,
            ),
            (
                "moela_key_completion_tokens_total",
                "Generated tokens per API key.",
                |u| u.completion_tokens as f64,
            ),
        ];
        for (name, help, f) in per_key {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((k, outcome), u) in &keys {
                let _ = writeln!(
                    out,
                    "{name}{{key=\"{}\",outcome=\"{}\"}} {}",
                    escape(k),
                    outcome.as_str(),
                    f(u)
                );
            }
        }
        if let Some(cur) = &self.currency {
            let name = "moela_key_cost_total";
            let _ = writeln!(
                out,
                "# HELP {name} Cost per API key under the price table.\n# TYPE {name} counter"
            );
            for ((k, outcome), u) in &keys {
                let _ = writeln!(
                    out,
                    "{name}{{key=\"{}\",outcome=\"{}\",currency=\"{}\"}} {}",
                    escape(k),
                    outcome.as_str(),
                    escape(cur),
                    u.cost
                );
            }
        }
        out
    }
}

/// Engine gauges: (name, help, value); a new engine gauge is one line here.
fn engine_gauges(s: &EngineStats) -> Vec<(&'static str, &'static str, u64)> {
    let g = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed) as u64;
    vec![
        (
            "moela_queue_depth",
            "Requests waiting for a batch slot.",
            g(&s.queued),
        ),
        (
            "moela_running_sequences",
            "Sequences in the running batch.",
            g(&s.running),
        ),
        (
            "moela_kv_cache_tokens",
            "Tokens held in the KV cache by running sequences.",
            g(&s.kv_tokens),
        ),
        (
            "moela_kv_blocks_used",
            "KV-cache blocks held by running sequences.",
            g(&s.kv_blocks_used),
        ),
        (
            "moela_kv_blocks_cached",
            "KV-cache blocks kept for prefix reuse (evictable).",
            g(&s.kv_blocks_cached),
        ),
        (
            "moela_kv_blocks_free",
            "KV-cache blocks free.",
            g(&s.kv_blocks_free),
        ),
    ]
}

/// Engine counters: (name, help, value).
fn engine_counters(s: &EngineStats) -> Vec<(&'static str, &'static str, u64)> {
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    vec![
        (
            "moela_prompt_tokens_total",
            "Prompt tokens admitted to the engine.",
            c(&s.prompt_tokens),
        ),
        (
            "moela_generation_tokens_total",
            "Tokens generated by the engine.",
            c(&s.generated_tokens),
        ),
        (
            "moela_prompt_cache_hit_tokens_total",
            "Prompt tokens served from the prefix cache.",
            c(&s.cached_tokens),
        ),
        (
            "moela_engine_steps_total",
            "Forward passes run by the engine.",
            c(&s.steps),
        ),
        (
            "moela_spec_decode_draft_tokens_total",
            "Tokens drafted for speculative decoding and sent for verification.",
            c(&s.drafted_tokens),
        ),
        (
            "moela_spec_decode_accepted_tokens_total",
            "Drafted tokens the model accepted.",
            c(&s.accepted_tokens),
        ),
        (
            "moela_spec_decode_rows_total",
            "Decode rows verified (one per decoding sequence per step).",
            c(&s.decode_rows),
        ),
    ]
}

/// Escapes a label value.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
