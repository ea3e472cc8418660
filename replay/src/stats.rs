//! `stats`: steps per tool, time per tool, tokens and cost over time; for
//! a session that started children, tokens and cost per session of its
//! tree and per model (the planner's against its workers').

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use longrun_host::journal::payload::Payload;
use longrun_host::journal::state::Used;
use longrun_host::journal::tree::{self, Node};
use longrun_host::journal::{Journal, SessionId, SessionState};
use longrun_host::policy::RecordedPrices;
use serde::Serialize;

use crate::ReplayError;

/// One tool's calls in a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ToolStats {
    pub calls: u64,
    /// Calls that ran and failed.
    pub errors: u64,
    /// Calls the policy (or a person) refused: they never ran.
    pub refused: u64,
    pub total_ms: u64,
    pub max_ms: u64,
}

/// The session's totals after one model call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    pub seq: u64,
    /// Since the session's first record.
    pub offset_ms: u64,
    pub steps: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub session: SessionId,
    pub tools: BTreeMap<String, ToolStats>,
    pub over_time: Vec<Point>,
    /// The session and every session under it, depth first (the session
    /// alone when it started none).
    pub tree: Vec<Node>,
    /// What the tree's sessions used themselves, per model.
    pub by_model: BTreeMap<String, Used>,
}

pub fn stats(journal: &Journal, session: SessionId) -> Result<Stats, ReplayError> {
    let mut state = SessionState::new(session);
    let mut pricing = RecordedPrices::default();
    let mut out = Stats {
        session,
        tools: BTreeMap::new(),
        over_time: Vec::new(),
        tree: Vec::new(),
        by_model: BTreeMap::new(),
    };
    let mut calls: HashMap<String, String> = HashMap::new();
    for record in journal.records(session) {
        let record = record?;
        let payload = longrun_host::journal::state::decode(&record)?;
        state.apply(&record, &payload, &mut pricing)?;
        let point = |state: &SessionState| Point {
            seq: record.seq,
            offset_ms: record.unix_millis.saturating_sub(state.created_unix_millis),
            steps: state.used.steps,
            input_tokens: state.used.input_tokens,
            output_tokens: state.used.output_tokens,
            cost_usd: state.used.cost_usd,
        };
        match payload {
            Payload::ModelResponse(_) => out.over_time.push(point(&state)),
            Payload::Compaction(compaction) => {
                if compaction.compaction.usage.is_some() {
                    out.over_time.push(point(&state));
                }
            }
            Payload::ToolIntent(intent) => {
                out.tools.entry(intent.tool.clone()).or_default().calls += 1;
                calls.insert(intent.call_id, intent.tool);
            }
            Payload::ToolResult(result) => {
                if let Some(tool) = calls.get(&result.call_id) {
                    let entry = out.tools.entry(tool.clone()).or_default();
                    entry.total_ms += result.elapsed_ms;
                    entry.max_ms = entry.max_ms.max(result.elapsed_ms);
                    entry.errors += u64::from(result.error.is_some());
                }
            }
            Payload::PolicyDecision(refusal) => {
                out.tools.entry(refusal.tool).or_default().refused += 1;
            }
            Payload::SessionCreated(_)
            | Payload::ModelRequest(_)
            | Payload::BudgetEvent(_)
            | Payload::ApprovalAsked(_)
            | Payload::ApprovalGiven(_)
            | Payload::Error(_)
            | Payload::SessionEnded(_)
            | Payload::UserMessage(_)
            | Payload::Control(_)
            | Payload::Forked(_)
            | Payload::PolicyChanged(_)
            | Payload::RepeatedFailure(_)
            | Payload::LeaseTaken(_)
            | Payload::ChildStarted(_)
            | Payload::ChildEnded(_)
            | Payload::TrajectoryChosen(_)
            | Payload::ChangesApplied(_) => {}
        }
    }
    out.tree = tree::tree(journal, session, &mut pricing)?;
    out.by_model = tree::by_model(&out.tree);
    Ok(out)
}

/// The stats as text: a table per tool, and the totals over time (at most
/// `rows` points, evenly spaced, the last always shown).
pub fn render(stats: &Stats, rows: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "session {}", stats.session);
    let _ = writeln!(
        out,
        "\n{:<16} {:>7} {:>7} {:>8} {:>11} {:>9} {:>9}",
        "tool", "calls", "errors", "refused", "total ms", "mean ms", "max ms"
    );
    for (tool, s) in &stats.tools {
        let ran = s.calls.max(1);
        let _ = writeln!(
            out,
            "{tool:<16} {:>7} {:>7} {:>8} {:>11} {:>9.1} {:>9}",
            s.calls,
            s.errors,
            s.refused,
            s.total_ms,
            s.total_ms as f64 / ran as f64,
            s.max_ms
        );
    }
    let _ = writeln!(
        out,
        "\n{:>8} {:>11} {:>7} {:>12} {:>12} {:>11}",
        "record", "time", "steps", "tokens in", "tokens out", "cost $"
    );
    let n = stats.over_time.len();
    let every = n.div_ceil(rows.max(1)).max(1);
    for (i, p) in stats.over_time.iter().enumerate() {
        if i % every == 0 || i + 1 == n {
            let _ = writeln!(
                out,
                "{:>8} {:>10.1}s {:>7} {:>12} {:>12} {:>11.4}",
                p.seq,
                p.offset_ms as f64 / 1000.0,
                p.steps,
                p.input_tokens,
                p.output_tokens,
                p.cost_usd
            );
        }
    }
    if stats.tree.len() > 1 {
        render_tree(&mut out, stats);
    }
    out
}

/// Each session of the tree (indented under its parent) and each model:
/// what it used itself.
fn render_tree(out: &mut String, stats: &Stats) {
    let header = |out: &mut String, first: &str| {
        let _ = writeln!(
            out,
            "\n{first:<24} {:<18} {:<18} {:>7} {:>7} {:>12} {:>12} {:>11}",
            "model", "status", "steps", "calls", "tokens in", "tokens out", "cost $"
        );
    };
    let row = |out: &mut String, first: &str, model: &str, status: &str, used: &Used| {
        let _ = writeln!(
            out,
            "{first:<24} {model:<18} {status:<18} {:>7} {:>7} {:>12} {:>12} {:>11.4}",
            used.steps, used.tool_calls, used.input_tokens, used.output_tokens, used.cost_usd
        );
    };
    header(out, "session (own use)");
    let mut whole = Used::default();
    for node in &stats.tree {
        let name = format!("{}{}", "  ".repeat(node.depth), node.session);
        row(out, &name, &node.model, node.status.as_str(), &node.own);
        whole.plus(&node.own);
    }
    row(out, "tree", "", "", &whole);
    header(out, "per model");
    for (model, used) in &stats.by_model {
        row(out, "", model, "", used);
    }
}
