//! The readable timeline of a session (`show`): a block per record, with
//! what a person needs to follow the agent: the model's reasoning and
//! calls, each call's arguments and result, refusals, approvals,
//! compactions, budget events and errors.

use std::fmt::Write as _;

use longrun_host::journal::{Journal, Record, RecordKind, hex};
use serde_json::Value;

/// How the timeline is written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours (for a terminal).
    pub colour: bool,
    /// Blobs written out in full instead of named by hash.
    pub expand_blobs: bool,
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const BLUE: &str = "\x1b[34m";
const MAGENTA: &str = "\x1b[35m";
const CYAN: &str = "\x1b[36m";

impl Style {
    fn paint(&self, colour: &str, text: &str) -> String {
        if self.colour {
            format!("{colour}{text}{RESET}")
        } else {
            text.to_owned()
        }
    }
}

fn kind_colour(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::ModelRequest | RecordKind::ModelResponse => CYAN,
        RecordKind::ToolIntent | RecordKind::ToolResult => GREEN,
        RecordKind::PolicyDecision | RecordKind::Error | RecordKind::PolicyChanged => RED,
        RecordKind::ApprovalAsked | RecordKind::ApprovalGiven | RecordKind::BudgetEvent => YELLOW,
        RecordKind::Compaction => MAGENTA,
        RecordKind::UserMessage | RecordKind::Control => BLUE,
        RecordKind::SessionCreated | RecordKind::SessionEnded | RecordKind::Forked => BOLD,
    }
}

/// One record as a block of text (ending in a newline). `started` is the
/// session's first record's time, for the offsets.
pub fn render(
    record: &Record,
    started_unix_millis: u64,
    journal: &Journal,
    style: Style,
) -> String {
    let mut out = String::new();
    let offset = record.unix_millis.saturating_sub(started_unix_millis) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "{} {} {}",
        style.paint(DIM, &format!("#{:<6}", record.seq)),
        style.paint(DIM, &format!("+{offset:>9.3}s")),
        style.paint(kind_colour(record.kind), record.kind.as_str()),
    );
    let value: Value = serde_json::from_slice(&record.payload).unwrap_or(Value::Null);
    let mut line = |label: &str, text: &str| {
        for (i, part) in text.lines().enumerate() {
            let label = if i == 0 { label } else { "" };
            let _ = writeln!(out, "    {:<11}{part}", style.paint(DIM, label));
        }
        if text.is_empty() {
            let _ = writeln!(out, "    {}", style.paint(DIM, label));
        }
    };
    let s = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    };
    match record.kind {
        RecordKind::SessionCreated => {
            line("goal", &s(&value["goal"]));
            line("model", &s(&value["model"]));
            line("policy", &s(&value["policy_hash"]));
            if let Some(tools) = value["tools"].as_array() {
                let names: Vec<String> = tools.iter().map(|t| s(&t["name"])).collect();
                line("tools", &names.join(", "));
            }
            if !value["snapshot"].is_null() {
                line("snapshot", &s(&value["snapshot"]));
            }
            if !value["parent"].is_null() {
                let p = &value["parent"];
                line(
                    "forked",
                    &format!("from session {} at record {}", p["session"], p["at"]),
                );
            }
            if let Some(labels) = value["labels"].as_object() {
                line("labels", &Value::Object(labels.clone()).to_string());
            }
        }
        RecordKind::ModelRequest => {
            for message in value.as_array().into_iter().flatten() {
                let role = s(&message["role"]);
                match role.as_str() {
                    "tool" => line(
                        "tool →",
                        &format!("{} {}", s(&message["tool_call_id"]), s(&message["content"])),
                    ),
                    _ => line(&format!("{role} →"), &s(&message["content"])),
                }
            }
        }
        RecordKind::ModelResponse => {
            let message = &value["message"];
            if !message["reasoning_content"].is_null() {
                line("reasoning", &s(&message["reasoning_content"]));
            }
            if !message["content"].is_null() {
                line("says", &s(&message["content"]));
            }
            for call in message["tool_calls"].as_array().into_iter().flatten() {
                line(
                    "calls",
                    &format!(
                        "{} {} {}",
                        style.paint(GREEN, &s(&call["name"])),
                        s(&call["arguments"]),
                        style.paint(DIM, &s(&call["id"]))
                    ),
                );
            }
            let usage = &value["usage"];
            line(
                "usage",
                &format!(
                    "{} in / {} out tokens",
                    usage["input_tokens"], usage["output_tokens"]
                ),
            );
        }
        RecordKind::ToolIntent => line(
            "runs",
            &format!(
                "{} {} {}",
                style.paint(GREEN, &s(&value["tool"])),
                s(&value["arguments"]),
                style.paint(DIM, &s(&value["call_id"]))
            ),
        ),
        RecordKind::ToolResult => {
            if !value["error"].is_null() {
                line("error", &style.paint(RED, &s(&value["error"])));
            } else if !value["output"].is_null() {
                line("output", &s(&value["output"]));
            } else if let Some(blob) = record.blobs.first() {
                match (style.expand_blobs, journal.blob(blob)) {
                    (true, Ok(bytes)) => line("output", &String::from_utf8_lossy(&bytes)),
                    (true, Err(e)) => line("output", &style.paint(RED, &e.to_string())),
                    (false, _) => line(
                        "output",
                        &format!("in blob {} (--blobs shows it)", hex(blob)),
                    ),
                }
            }
            line("took", &format!("{} ms", value["elapsed_ms"]));
        }
        RecordKind::PolicyDecision => line(
            "refused",
            &style.paint(
                RED,
                &format!("{}: {}", s(&value["tool"]), s(&value["reason"])),
            ),
        ),
        RecordKind::ApprovalAsked => line(
            "asks",
            &format!("{}: {}", s(&value["tool"]), s(&value["reason"])),
        ),
        RecordKind::ApprovalGiven => {
            let verdict = if value["approved"] == true {
                "approved"
            } else {
                "denied"
            };
            let reason = value["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            line(
                verdict,
                &format!("{} by {}{reason}", s(&value["call_id"]), s(&value["by"])),
            );
        }
        RecordKind::Compaction => {
            line(
                "compacted",
                &format!(
                    "messages {}..{} ({}), steps through {}: {} → {} tokens",
                    value["from"],
                    value["to"],
                    s(&value["method"]),
                    value["through_step"],
                    value["tokens_before"],
                    value["tokens_after"]
                ),
            );
            line("summary", &s(&value["replacement"]["content"]));
        }
        RecordKind::UserMessage => line(
            "person",
            &format!("{}: {}", s(&value["by"]), s(&value["text"])),
        ),
        RecordKind::PolicyChanged => line("policy", &format!("now {}", s(&value["policy_hash"]))),
        RecordKind::Forked => line(
            "forked",
            &format!("session {} from record {}", value["child"], value["at"]),
        ),
        RecordKind::SessionEnded => {
            line("status", &s(&value["status"]));
            if !value["answer"].is_null() {
                line("answer", &s(&value["answer"]));
            }
        }
        RecordKind::BudgetEvent | RecordKind::Control | RecordKind::Error => {
            line("", &serde_json::to_string(&value).unwrap_or_default());
        }
    }
    out
}
