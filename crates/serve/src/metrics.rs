//! `GET /metrics`: counters, gauges and histograms in Prometheus' text format (version
//! 0.0.4), kept with atomics and one small lock per histogram: a dozen series do not need
//! a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upper bounds of the batch-size buckets, in rows.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    fn observe(&self, v: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for (count, &bound) in h.0.iter_mut().zip(self.bounds) {
            if v <= bound {
                *count += 1;
            }
        }
        h.1 += v;
        h.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (count, bound) in h.0.iter().zip(self.bounds) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.2);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.1, h.2);
    }
}

/// See the module documentation.
pub struct Metrics {
    max_queue: usize,
    queued: AtomicUsize,
    batch: AtomicUsize,
    tokens: AtomicU64,
    /// (api, status) -> count.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    latency: Histogram,
    first_token: Histogram,
    batch_sizes: Histogram,
}

impl Metrics {
    pub fn new(max_queue: usize) -> Self {
        Self {
            max_queue,
            queued: AtomicUsize::new(0),
            batch: AtomicUsize::new(0),
            tokens: AtomicU64::new(0),
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&LATENCY_BUCKETS),
            first_token: Histogram::new(&LATENCY_BUCKETS),
            batch_sizes: Histogram::new(&BATCH_BUCKETS),
        }
    }

    /// Counts a request into the queue unless `max_queue` already wait.
    pub fn try_enqueue(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            })
            .is_ok()
    }

    pub fn dequeued(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1));
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The rows of the step about to run (observed once per step).
    pub fn set_batch(&self, rows: usize) {
        self.batch.store(rows, Ordering::Relaxed);
        if rows > 0 {
            self.batch_sizes.observe(rows as f64);
        }
    }

    pub fn add_tokens(&self, n: usize) {
        self.tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// A finished request: its API, HTTP status and seconds from arrival to the end.
    pub fn request(&self, api: &'static str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((api, status))
            .or_default() += 1;
        if status == 200 {
            self.latency.observe(seconds);
        }
    }

    /// Seconds from a request's arrival to its first text.
    pub fn first_token(&self, seconds: f64) {
        self.first_token.observe(seconds);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP gptpipe_requests_total Requests answered, by API and HTTP status.\n\
             # TYPE gptpipe_requests_total counter"
        );
        for ((api, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "gptpipe_requests_total{{api=\"{api}\",status=\"{status}\"}} {n}"
            );
        }
        let gauges = [
            (
                "gptpipe_tokens_generated_total",
                "counter",
                "Tokens generated, all samples together.",
                self.tokens.load(Ordering::Relaxed) as f64,
            ),
            (
                "gptpipe_queue_depth",
                "gauge",
                "Requests waiting for room in the batch.",
                self.queued() as f64,
            ),
            (
                "gptpipe_batch_rows",
                "gauge",
                "Samples in the running batch.",
                self.batch.load(Ordering::Relaxed) as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        self.latency.render(
            &mut out,
            "gptpipe_request_duration_seconds",
            "Time from a request's arrival to its last byte (successful requests).",
        );
        self.first_token.render(
            &mut out,
            "gptpipe_time_to_first_text_seconds",
            "Time from a request's arrival to its first text.",
        );
        self.batch_sizes.render(
            &mut out,
            "gptpipe_batch_size_rows",
            "Samples decoded together, per step.",
        );
        out
    }
}

/// Status recorded for a request whose client left before its answer ended (nginx's
/// convention).
pub const CLIENT_CLOSED: u16 = 499;

/// One request's entry in the metrics, from its arrival: its first text, then its status
/// and duration when it ends, or [`CLIENT_CLOSED`] if it is dropped first (the client left
/// and the server stopped working on it).
pub struct Timing {
    metrics: Arc<Metrics>,
    api: &'static str,
    start: Instant,
    first_text: bool,
    ended: bool,
}

impl Timing {
    pub fn start(metrics: Arc<Metrics>, api: &'static str) -> Self {
        Self {
            metrics,
            api,
            start: Instant::now(),
            first_text: false,
            ended: false,
        }
    }

    /// The request's first text is out (counted once).
    pub fn first_text(&mut self) {
        if !std::mem::replace(&mut self.first_text, true) {
            self.metrics.first_token(self.start.elapsed().as_secs_f64());
        }
    }

    pub fn finish(mut self, status: u16) {
        self.end(status);
    }

    fn end(&mut self, status: u16) {
        if !std::mem::replace(&mut self.ended, true) {
            let seconds = self.start.elapsed().as_secs_f64();
            self.metrics.request(self.api, status, seconds);
        }
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        self.end(CLIENT_CLOSED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_holds_at_most_max_queue() {
        let m = Metrics::new(2);
        assert!(m.try_enqueue() && m.try_enqueue());
        assert!(!m.try_enqueue());
        m.dequeued();
        assert!(m.try_enqueue());
        assert_eq!(m.queued(), 2);
    }

    #[test]
    fn a_request_dropped_before_its_end_counts_as_client_closed() {
        let m = Arc::new(Metrics::new(1));
        Timing::start(m.clone(), "openai").finish(200);
        drop(Timing::start(m.clone(), "openai"));
        let text = m.render();
        assert!(text.contains("gptpipe_requests_total{api=\"openai\",status=\"200\"} 1"));
        assert!(text.contains("gptpipe_requests_total{api=\"openai\",status=\"499\"} 1"));
    }

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::new(1);
        m.request("openai", 200, 0.02);
        m.request("openai", 200, 3.0);
        m.request("cloud-run", 400, 0.0);
        let text = m.render();
        assert!(text.contains("gptpipe_request_duration_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("gptpipe_request_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("gptpipe_request_duration_seconds_count 2"));
        assert!(text.contains("gptpipe_requests_total{api=\"cloud-run\",status=\"400\"} 1"));
    }
}
