//! What `/metrics` reports, in the Prometheus text format: requests by
//! route, method and status, their total time, open event streams, and
//! sessions by status. No label names a tenant or a session.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use longrun_host::sandbox::PoolStats;

use crate::admission::Admission;
use std::time::Duration;

use crate::sessions::{Registry, Status};

/// Requests are counted by route pattern, method and status.
type RequestKey = (&'static str, String, u16);

#[derive(Default)]
pub struct Metrics {
    /// How many requests, and the seconds they took.
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
    pub event_streams: AtomicI64,
    /// The connection caps and what they decided, once the server listens.
    admission: OnceLock<Arc<Admission>>,
}

impl Metrics {
    pub fn set_connection_limits(&self, admission: Arc<Admission>) {
        let _ = self.admission.set(admission);
    }

    pub fn observe(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let entry = requests
            .entry((route, method.to_owned(), status))
            .or_default();
        entry.0 += 1;
        entry.1 += took.as_secs_f64();
    }

    pub fn render(&self, sessions: &Registry, pool: PoolStats) -> String {
        let mut out = String::new();
        out.push_str("# HELP longrun_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE longrun_http_requests_total counter\n");
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((route, method, status), (count, _)) in &requests {
            let _ = writeln!(
                out,
                "longrun_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
            );
        }
        out.push_str(
            "# HELP longrun_http_request_seconds_total Time spent answering HTTP requests.\n",
        );
        out.push_str("# TYPE longrun_http_request_seconds_total counter\n");
        for ((route, method, status), (_, seconds)) in &requests {
            let _ = writeln!(
                out,
                "longrun_http_request_seconds_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {seconds}"
            );
        }
        out.push_str("# HELP longrun_event_streams Open event streams.\n");
        out.push_str("# TYPE longrun_event_streams gauge\n");
        let _ = writeln!(
            out,
            "longrun_event_streams {}",
            self.event_streams.load(Ordering::Relaxed)
        );
        let mut by_status: BTreeMap<&str, u64> =
            Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let (mut steps, mut tool_calls, mut input, mut output) = (0, 0, 0, 0);
        for entry in sessions.all() {
            let summary = entry.summary();
            *by_status.entry(summary.status.as_str()).or_default() += 1;
            steps += summary.usage.steps;
            tool_calls += summary.usage.tool_calls;
            input += summary.usage.input_tokens;
            output += summary.usage.output_tokens;
        }
        out.push_str("# HELP longrun_sessions Sessions by status.\n");
        out.push_str("# TYPE longrun_sessions gauge\n");
        for (status, n) in by_status {
            let _ = writeln!(out, "longrun_sessions{{status=\"{status}\"}} {n}");
        }
        for (name, help, value) in [
            ("longrun_steps", "Model steps of all sessions.", steps),
            (
                "longrun_tool_calls",
                "Tool calls of all sessions.",
                tool_calls,
            ),
            (
                "longrun_input_tokens",
                "Input tokens of all sessions.",
                input,
            ),
            (
                "longrun_output_tokens",
                "Output tokens of all sessions.",
                output,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let (open, shed, refused) = self
            .admission
            .get()
            .map_or((0, 0, 0), |a| (a.open(), a.shed_total(), a.refused_total()));
        let gauges: [(&str, &str, &str, f64); 9] = [
            (
                "longrun_http_connections",
                "gauge",
                "Connections served now.",
                open as f64,
            ),
            (
                "longrun_http_connections_shed_total",
                "counter",
                "Connections past a cap, answered on the shed path (/healthz and /metrics only).",
                shed as f64,
            ),
            (
                "longrun_http_connections_refused_total",
                "counter",
                "Connections past every cap, closed at once.",
                refused as f64,
            ),
            (
                "longrun_sandbox_slots",
                "gauge",
                "Instance pool slots.",
                f64::from(pool.size),
            ),
            (
                "longrun_sandbox_slots_in_use",
                "gauge",
                "Instance pool slots taken now.",
                f64::from(pool.in_use),
            ),
            (
                "longrun_sandbox_calls_waiting",
                "gauge",
                "Tool calls waiting for a pool slot now.",
                pool.waiting as f64,
            ),
            (
                "longrun_sandbox_waits_total",
                "counter",
                "Tool calls that waited for a pool slot.",
                pool.waits as f64,
            ),
            (
                "longrun_sandbox_wait_seconds_total",
                "counter",
                "Time tool calls spent waiting for a pool slot.",
                pool.wait_seconds,
            ),
            (
                "longrun_sandbox_wait_timeouts_total",
                "counter",
                "Tool calls whose timeout ran out waiting for a pool slot.",
                pool.timeouts as f64,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}
