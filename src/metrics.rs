//! CloudWatch metrics in Embedded Metric Format (EMF): JSON lines on stdout that CloudWatch Logs
//! turns into metrics, with no API call and no agent.
//!
//! The figures are not counted along the way: each decision keeps its share (`Tally`) with its
//! summary line, and the invocation's figures are their sum, made once at its end.
//!
//! A small module rather than a crate: the `metrics` facade crates install a process-global
//! recorder, which makes per-invocation figures and tests that read back exactly what one
//! invocation printed harder than formatting a handful of documents here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::resilience::Resilience;

pub const NAMESPACE: &str = "EtcdLifecycleHook";

/// Where EMF lines go: stdout in Lambda, a buffer in tests.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

pub fn stdout_sink() -> Sink {
    Arc::new(|line: &str| println!("{line}"))
}

/// A sink that keeps every line, for tests.
pub fn memory_sink() -> (Sink, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&lines);
    let sink: Sink = Arc::new(move |line: &str| {
        keep.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.to_string())
    });
    (sink, lines)
}

/// What one decision did that the metrics count: its share of the invocation's figures, kept
/// with its summary line (never printed there) and summed at the end of the invocation.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Heartbeats recorded (the sweep's heartbeats before any work included).
    pub heartbeats: u64,
    /// Lifecycle actions completed with `CONTINUE` sent.
    pub continued: u64,
    /// Lifecycle actions found already over when completed.
    pub already_done: u64,
    pub members_removed: u64,
    /// 1 when the decision was a hold because of quorum or the voter floor.
    pub quorum_holds: u64,
}

/// The figures of one invocation, emitted together at its end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct InvocationMetrics {
    /// Lifecycle actions completed, by result (`CONTINUE`, `ALREADY_DONE`).
    pub completed: BTreeMap<&'static str, u64>,
    pub members_removed: u64,
    pub quorum_holds: u64,
    pub heartbeats: u64,
}

impl InvocationMetrics {
    /// The invocation's figures: the sum of what each of its decisions did. A completion result
    /// no action had gets no document.
    pub fn from_tallies<'a>(tallies: impl IntoIterator<Item = &'a Tally>) -> Self {
        let mut sum = Tally::default();
        for t in tallies {
            sum.heartbeats += t.heartbeats;
            sum.continued += t.continued;
            sum.already_done += t.already_done;
            sum.members_removed += t.members_removed;
            sum.quorum_holds += t.quorum_holds;
        }
        let completed = [
            ("CONTINUE", sum.continued),
            ("ALREADY_DONE", sum.already_done),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .collect();
        Self {
            completed,
            members_removed: sum.members_removed,
            quorum_holds: sum.quorum_holds,
            heartbeats: sum.heartbeats,
        }
    }

    /// Formats this invocation's documents, draining the layer's retry and transition counters.
    pub fn documents(
        &self,
        function: &str,
        resilience: &Resilience,
        duration: Duration,
    ) -> Vec<Value> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let mut docs = vec![document(
            timestamp,
            &[("FunctionName", function)],
            &[
                ("MembersRemoved", "Count", self.members_removed as f64),
                ("QuorumHolds", "Count", self.quorum_holds as f64),
                ("Heartbeats", "Count", self.heartbeats as f64),
                ("Retries", "Count", resilience.take_retries() as f64),
                (
                    "HandlerDuration",
                    "Milliseconds",
                    duration.as_secs_f64() * 1000.0,
                ),
            ],
        )];
        for (result, n) in &self.completed {
            docs.push(document(
                timestamp,
                &[("FunctionName", function), ("Result", result)],
                &[("LifecycleActionsCompleted", "Count", *n as f64)],
            ));
        }
        for (dependency, state, n) in resilience.take_transitions() {
            docs.push(document(
                timestamp,
                &[
                    ("FunctionName", function),
                    ("Dependency", dependency.as_str()),
                    ("State", state.as_str()),
                ],
                &[("BreakerTransitions", "Count", n as f64)],
            ));
        }
        docs
    }

    pub fn emit(&self, sink: &Sink, function: &str, resilience: &Resilience, duration: Duration) {
        for doc in self.documents(function, resilience, duration) {
            sink(&doc.to_string());
        }
    }
}

fn document(timestamp: u64, dimensions: &[(&str, &str)], metrics: &[(&str, &str, f64)]) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": metrics.iter().map(|(name, unit, _)| json!({"Name": name, "Unit": unit})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in dimensions {
        doc.insert((*k).into(), json!(v));
    }
    for (name, _, value) in metrics {
        doc.insert((*name).into(), json!(value));
    }
    Value::Object(doc)
}
