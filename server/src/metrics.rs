//! The server's counters and their Prometheus text rendering (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use latchless::batch::{BatchHistograms, BatchStats, Histogram};
use latchless::counter::AtomicCounter;

use crate::histogram::DurationHistogram;

/// The quantiles every summary gives.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// A part of the server's own work on a request, timed inside it
/// (`latchless_server_overhead_seconds`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// From the request's head arriving to its submission to the batcher: reading and parsing
    /// the body, checks, submission.
    Admit,
    /// A whole reply: from the step that produced its last token to the reply's last frame
    /// handed to hyper (which writes it to the socket in the same task poll).
    FinishWhole,
    /// A streamed reply: from the step that produced its last token to the stream's end handed
    /// to hyper (after the last event, `[DONE]`).
    FinishStream,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Admit, Phase::FinishWhole, Phase::FinishStream];

    fn label(self) -> &'static str {
        match self {
            Phase::Admit => "admit",
            Phase::FinishWhole => "finish_whole",
            Phase::FinishStream => "finish_stream",
        }
    }
}

/// What `/metrics` shows of the batcher, read when it is asked for.
pub(crate) struct BatcherView<'a> {
    pub(crate) stats: &'a BatchStats,
    pub(crate) histograms: &'a BatchHistograms,
    /// Items admitted and not finished.
    pub(crate) in_flight: u64,
}

/// How a completion request ended, as counted in `latchless_server_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with a completion (200).
    Ok,
    /// Malformed, unsupported or over a limit (400).
    InvalidRequest,
    /// The body was over the size limit (413).
    BodyTooLarge,
    /// Refused by the batcher, its queue full (429).
    Overloaded,
    /// Refused because the server is shutting down (503).
    ShuttingDown,
    /// Past its deadline (504).
    Timeout,
    /// Its session was updated by a concurrent request (409).
    SessionBusy,
    /// The model or the batcher failed (500).
    Failed,
    /// The client went away before the end of the answer; the request was cancelled.
    Disconnected,
}

impl Outcome {
    const ALL: [Outcome; 9] = [
        Outcome::Ok,
        Outcome::InvalidRequest,
        Outcome::BodyTooLarge,
        Outcome::Overloaded,
        Outcome::ShuttingDown,
        Outcome::Timeout,
        Outcome::SessionBusy,
        Outcome::Failed,
        Outcome::Disconnected,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::InvalidRequest => "invalid_request",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::Overloaded => "overloaded",
            Outcome::ShuttingDown => "shutting_down",
            Outcome::Timeout => "timeout",
            Outcome::SessionBusy => "session_busy",
            Outcome::Failed => "failed",
            Outcome::Disconnected => "disconnected",
        }
    }

    /// Its place in [`Outcome::ALL`], which lists the variants in declaration order.
    fn index(self) -> usize {
        self as usize
    }
}

/// The server's own counters (the batcher keeps its own: see [`render`](Metrics::render)).
#[derive(Debug)]
pub(crate) struct Metrics {
    outcomes: [AtomicCounter; Outcome::ALL.len()],
    in_flight: AtomicCounter,
    /// Requests admitted to each priority class and not yet answered.
    class_in_flight: Vec<AtomicCounter>,
    /// The server's own time on a request, by [`Phase`].
    overhead: [DurationHistogram; Phase::ALL.len()],
}

impl Metrics {
    /// Counters for a server of `classes` priority classes.
    pub(crate) fn new(classes: usize) -> Self {
        Self {
            outcomes: std::array::from_fn(|_| AtomicCounter::new(0)),
            in_flight: AtomicCounter::new(0),
            class_in_flight: (0..classes).map(|_| AtomicCounter::new(0)).collect(),
            overhead: std::array::from_fn(|_| DurationHistogram::new()),
        }
    }

    /// Records the server's own time on one request in `phase`.
    pub(crate) fn overhead(&self, phase: Phase, took: Duration) {
        self.overhead[phase as usize].record(took);
    }

    /// Counts a request in flight until the returned guard is finished or dropped; dropped
    /// unfinished (the client went away and the server dropped the request's future or body),
    /// it counts [`Outcome::Disconnected`].
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.increment();
        InFlight {
            metrics: Some(Arc::clone(self)),
            class: None,
        }
    }

    /// The counters and the server's overhead, with the batcher's figures and the sessions
    /// held, in Prometheus' text format.
    pub(crate) fn render(&self, model: &str, batcher: &BatcherView<'_>, sessions: usize) -> String {
        let stats = batcher.stats;
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: u64| vec![(String::new(), v)];
        family(
            "latchless_server_info",
            "gauge",
            "The model served.",
            &[(format!("{{model=\"{model}\"}}"), 1)],
        );
        let outcomes: Vec<_> = Outcome::ALL
            .iter()
            .map(|&o| {
                (
                    format!("{{outcome=\"{}\"}}", o.label()),
                    self.outcomes[o.index()].get(),
                )
            })
            .collect();
        family(
            "latchless_server_requests_total",
            "counter",
            "Completion requests by how they ended.",
            &outcomes,
        );
        family(
            "latchless_server_in_flight",
            "gauge",
            "Completion requests being answered.",
            &plain(self.in_flight.get()),
        );
        family(
            "latchless_server_sessions",
            "gauge",
            "Sessions whose model state the cache holds.",
            &plain(sessions as u64),
        );
        family(
            "latchless_batch_refused_total",
            "counter",
            "Requests the batcher refused, by reason.",
            &[
                ("{reason=\"overloaded\"}".into(), stats.refused_overloaded),
                (
                    "{reason=\"shutting_down\"}".into(),
                    stats.refused_shutting_down,
                ),
                ("{reason=\"too_costly\"}".into(), stats.refused_too_costly),
            ],
        );
        let counters = [
            (
                "submitted",
                "Requests the batcher accepted.",
                stats.submitted,
            ),
            (
                "completed",
                "Requests that ran to their output.",
                stats.completed,
            ),
            (
                "failed",
                "Requests whose step or join failed.",
                stats.failed,
            ),
            ("expired", "Requests past their deadline.", stats.expired),
            (
                "cancelled",
                "Requests whose client went away: they left the batch.",
                stats.cancelled,
            ),
            ("steps", "Decode steps run.", stats.batches),
        ];
        for (name, help, value) in counters {
            family(
                &format!("latchless_batch_{name}_total"),
                "counter",
                help,
                &plain(value),
            );
        }
        family(
            "latchless_batch_in_flight",
            "gauge",
            "Requests admitted and not finished, waiting or running.",
            &plain(batcher.in_flight),
        );
        let sizes = ["1", "2", "3-4", "5-8", "9-16", "17-32", "33-64", "65+"];
        let occupancy: Vec<_> = sizes
            .iter()
            .zip(stats.batch_sizes)
            .map(|(size, n)| (format!("{{size=\"{size}\"}}"), n))
            .collect();
        family(
            "latchless_batch_steps_by_size_total",
            "counter",
            "Decode steps by how many requests ran in them (batch occupancy).",
            &occupancy,
        );
        let classes: Vec<_> = self
            .class_in_flight
            .iter()
            .enumerate()
            .map(|(c, n)| (format!("{{class=\"{c}\"}}"), n.get()))
            .collect();
        family(
            "latchless_server_class_in_flight",
            "gauge",
            "Requests admitted to each priority class and not yet answered (its queue depth, \
             waiting or running).",
            &classes,
        );
        let _ = writeln!(
            out,
            "# HELP latchless_batch_queue_wait_seconds_total Time requests waited before joining a batch.\n\
             # TYPE latchless_batch_queue_wait_seconds_total counter\n\
             latchless_batch_queue_wait_seconds_total {}",
            stats.queue_wait.as_secs_f64()
        );
        // The server's process, whatever else runs in it (the load generator's `--spawn` mode
        // accounts its own threads apart).
        if let Ok(cpu) = cpu_time::ProcessTime::try_now() {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total CPU time of the server's process, user and system.\n\
                 # TYPE process_cpu_seconds_total counter\n\
                 process_cpu_seconds_total {}",
                cpu.as_duration().as_secs_f64()
            );
        }
        self.render_summaries(&mut out, batcher.histograms);
        out
    }

    /// The distributions, as Prometheus summaries: the batcher's histograms keep quantiles (to
    /// 1%), a count and a mean, not counts below fixed bounds, so a Prometheus histogram's
    /// buckets cannot be made from them; a summary's quantiles can, exactly as kept. (A
    /// summary cannot be aggregated across servers; a single server has nothing to aggregate.)
    /// The server's own overhead uses the same form, for one way of reading every figure.
    fn render_summaries(&self, out: &mut String, h: &BatchHistograms) {
        let micros = |h: &Histogram, labels: &str| Series::micros(h, labels);
        let summaries = [
            (
                "latchless_batch_queue_seconds",
                "Per request that joined a batch, from its submission to its join.",
                vec![micros(&h.queue_time, "")],
            ),
            (
                "latchless_batch_latency_seconds",
                "Per request the model answered, from its submission to its final item.",
                vec![micros(&h.latency, "")],
            ),
            (
                "latchless_batch_step_seconds",
                "Per decode step, the time the model ran.",
                vec![micros(&h.compute_time, "")],
            ),
            (
                "latchless_batch_step_size",
                "Per decode step, the requests running in it.",
                vec![Series::counts(&h.batch_size, "")],
            ),
            (
                "latchless_batch_class_queue_seconds",
                "As latchless_batch_queue_seconds, by priority class.",
                h.classes
                    .iter()
                    .enumerate()
                    .map(|(c, k)| micros(&k.queue_time, &format!("class=\"{c}\",")))
                    .collect(),
            ),
            (
                "latchless_batch_class_latency_seconds",
                "As latchless_batch_latency_seconds, by priority class.",
                h.classes
                    .iter()
                    .enumerate()
                    .map(|(c, k)| micros(&k.latency, &format!("class=\"{c}\",")))
                    .collect(),
            ),
            (
                "latchless_server_overhead_seconds",
                "The server's own time on a request: phase admit, from its head arriving to its \
                 submission to the batcher; finish_whole and finish_stream, from the step that \
                 produced its last token to its reply's last byte handed to the connection.",
                Phase::ALL
                    .iter()
                    .map(|&p| {
                        let h = &self.overhead[p as usize];
                        Series {
                            labels: format!("phase=\"{}\",", p.label()),
                            quantiles: QUANTILES.map(|q| h.quantile(q).as_secs_f64()),
                            sum: h.sum().as_secs_f64(),
                            count: h.count(),
                        }
                    })
                    .collect(),
            ),
        ];
        for (name, help, series) in summaries {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} summary");
            for s in series {
                for (q, v) in QUANTILES.iter().zip(s.quantiles) {
                    // Nothing recorded: no quantile, which Prometheus writes NaN.
                    let v = if s.count == 0 { f64::NAN } else { v };
                    let _ = writeln!(out, "{name}{{{}quantile=\"{q}\"}} {v}", s.labels);
                }
                let labels = s.labels.trim_end_matches(',');
                let labels = if labels.is_empty() {
                    String::new()
                } else {
                    format!("{{{labels}}}")
                };
                let _ = writeln!(out, "{name}_sum{labels} {}", s.sum);
                let _ = writeln!(out, "{name}_count{labels} {}", s.count);
            }
        }
    }
}

/// One series of a summary: its labels (each followed by a comma, to go before `quantile`),
/// its [`QUANTILES`], sum and count.
struct Series {
    labels: String,
    quantiles: [f64; QUANTILES.len()],
    sum: f64,
    count: u64,
}

impl Series {
    /// A batcher histogram of microseconds, in seconds. Its sum is its mean (exact to 1%, as
    /// its values) times its count: the histogram keeps no exact sum.
    fn micros(h: &Histogram, labels: &str) -> Self {
        Self {
            labels: labels.to_string(),
            quantiles: QUANTILES.map(|q| h.quantile(q) as f64 / 1e6),
            sum: h.mean() * h.len() as f64 / 1e6,
            count: h.len(),
        }
    }

    /// A batcher histogram of counts, as they are.
    fn counts(h: &Histogram, labels: &str) -> Self {
        Self {
            labels: labels.to_string(),
            quantiles: QUANTILES.map(|q| h.quantile(q) as f64),
            sum: h.mean() * h.len() as f64,
            count: h.len(),
        }
    }
}

/// A request in flight: see [`Metrics::enter`].
#[derive(Debug)]
pub(crate) struct InFlight {
    metrics: Option<Arc<Metrics>>,
    /// The priority class it was admitted to, once admitted.
    class: Option<usize>,
}

impl InFlight {
    /// The batcher admitted the request to priority class `class`: it counts in that class's
    /// queue depth until it is answered.
    pub(crate) fn admitted(&mut self, class: usize) {
        if let Some(metrics) = &self.metrics {
            if let Some(n) = metrics.class_in_flight.get(class) {
                n.increment();
                self.class = Some(class);
            }
        }
    }

    /// Counts the request's outcome; it is no longer in flight.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    fn end(&mut self, outcome: Outcome) {
        if let Some(metrics) = self.metrics.take() {
            metrics.outcomes[outcome.index()].increment();
            metrics.in_flight.decrement();
            if let Some(n) = self.class.and_then(|c| metrics.class_in_flight.get(c)) {
                n.decrement();
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end(Outcome::Disconnected);
    }
}
