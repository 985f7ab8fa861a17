//! The server's counters and their Prometheus text rendering (`GET /metrics`).

use std::fmt::Write as _;
use std::sync::Arc;

use latchless::batch::BatchStats;
use latchless::counter::AtomicCounter;

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
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self {
            outcomes: std::array::from_fn(|_| AtomicCounter::new(0)),
            in_flight: AtomicCounter::new(0),
        }
    }

    /// Counts a request in flight until the returned guard is finished or dropped; dropped
    /// unfinished (the client went away and the server dropped the request's future or body),
    /// it counts [`Outcome::Disconnected`].
    pub(crate) fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.increment();
        InFlight {
            metrics: Some(Arc::clone(self)),
        }
    }

    /// The counters, with the batcher's `stats` and `in_flight` and the sessions held, in
    /// Prometheus' text format.
    pub(crate) fn render(
        &self,
        model: &str,
        stats: &BatchStats,
        batch_in_flight: u64,
        sessions: usize,
    ) -> String {
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
            &plain(batch_in_flight),
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
        let _ = writeln!(
            out,
            "# HELP latchless_batch_queue_wait_seconds_total Time requests waited before joining a batch.\n\
             # TYPE latchless_batch_queue_wait_seconds_total counter\n\
             latchless_batch_queue_wait_seconds_total {}",
            stats.queue_wait.as_secs_f64()
        );
        out
    }
}

/// A request in flight: see [`Metrics::enter`].
#[derive(Debug)]
pub(crate) struct InFlight {
    metrics: Option<Arc<Metrics>>,
}

impl InFlight {
    /// Counts the request's outcome; it is no longer in flight.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        if let Some(metrics) = self.metrics.take() {
            metrics.outcomes[outcome.index()].increment();
            metrics.in_flight.decrement();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            metrics.outcomes[Outcome::Disconnected.index()].increment();
            metrics.in_flight.decrement();
        }
    }
}
