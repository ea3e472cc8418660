//! What `/metrics` reports, in the Prometheus text format: requests by
//! route, method and status, their total time, open event streams, and
//! sessions by status. No label names a tenant or a session.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::sessions::{Registry, Status};

/// Requests are counted by route pattern, method and status.
type RequestKey = (&'static str, String, u16);

#[derive(Default)]
pub struct Metrics {
    /// How many requests, and the seconds they took.
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
    pub event_streams: AtomicI64,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, method: &str, status: u16, took: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        let entry = requests
            .entry((route, method.to_owned(), status))
            .or_default();
        entry.0 += 1;
        entry.1 += took.as_secs_f64();
    }

    pub fn render(&self, sessions: &Registry) -> String {
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
        out
    }
}
