//! Long-session context management: what the model sees stays under a token
//! limit while the journal keeps everything.
//!
//! Two mechanisms, both deterministic so that a resumed session rebuilds
//! exactly the context the model saw:
//!
//! - **Output views.** A tool output longer than the view cap reaches the
//!   model as its first bytes plus a handle (`out_<seq>`, the journal record
//!   that holds the whole output); the built-in `read_output` tool pages
//!   through the rest.
//! - **Compaction.** When the context would pass the limit, the oldest whole
//!   steps (everything between the goal and a later assistant message) are
//!   replaced by one message: the model's summary of them, or, when
//!   summarising fails, a note that they were trimmed. The replacement is a
//!   journal record ([`Compaction`]), and only the context changes.

use serde::Deserialize;

use crate::model::{Message, Role, ToolDef, message_tokens};

/// The name of the built-in paging tool.
pub const READ_OUTPUT: &str = "read_output";

/// The handle of the output held by record `seq`.
pub fn handle(seq: u64) -> String {
    format!("out_{seq}")
}

/// The record sequence number a handle names.
pub fn parse_handle(handle: &str) -> Option<u64> {
    handle.strip_prefix("out_")?.parse().ok()
}

/// The largest index at most `at` that is on a character boundary of `s`.
fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// What the model sees of a tool output: all of it when it fits in `cap`
/// bytes, else its first bytes and how to read on.
pub fn output_view(output: &str, handle: &str, cap: usize) -> String {
    if output.len() <= cap {
        return output.to_owned();
    }
    let shown = floor_boundary(output, cap);
    format!(
        "{}\n[output truncated: showing {shown} of {} bytes. Read on with {READ_OUTPUT} {{\"handle\": \"{handle}\", \"offset\": {shown}}}]",
        &output[..shown],
        output.len()
    )
}

/// The arguments of `read_output`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadOutputArgs {
    pub handle: String,
    #[serde(default)]
    pub offset: usize,
    pub length: Option<usize>,
}

/// The definition of `read_output` that the model is given.
pub fn read_output_def(cap: usize) -> ToolDef {
    ToolDef {
        name: READ_OUTPUT.to_owned(),
        description: format!(
            "Read part of a tool output that was too long to show in full. \
             `handle` is the one named in the truncated output; `offset` is a byte offset; \
             `length` is at most {cap} bytes (the default)."
        ),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "handle": {"type": "string", "pattern": "^out_[0-9]+$"},
                "offset": {"type": "integer", "minimum": 0},
                "length": {"type": "integer", "minimum": 1, "maximum": cap}
            },
            "required": ["handle"],
            "additionalProperties": false
        }),
    }
}

/// One page of an output: at most `length` bytes from `offset` (both moved
/// back to character boundaries), and where the next page starts.
pub fn page(output: &str, offset: usize, length: usize) -> String {
    let start = floor_boundary(output, offset);
    let end = floor_boundary(output, start.saturating_add(length));
    // A length shorter than one character still moves forward.
    let end = if end == start && start < output.len() {
        output[start..]
            .chars()
            .next()
            .map_or(start, |c| start + c.len_utf8())
    } else {
        end
    };
    let where_next = if end < output.len() {
        format!("next offset {end}")
    } else {
        "end of output".to_owned()
    };
    format!(
        "{}\n[bytes {start}..{end} of {}; {where_next}]",
        &output[start..end],
        output.len()
    )
}

/// Estimated tokens of a context: its messages and its tool definitions.
pub fn estimate(messages: &[Message], tools: &[ToolDef]) -> u64 {
    let tools: u64 = tools
        .iter()
        .map(|t| {
            crate::model::estimate_tokens(&t.name)
                + crate::model::estimate_tokens(&t.description)
                + crate::model::estimate_tokens(&t.parameters.to_string())
        })
        .sum();
    messages.iter().map(message_tokens).sum::<u64>() + tools
}

pub use longrun_journal::payload::{Compaction, Method};

/// Which messages to compact so that the rest, plus a replacement of at
/// most `replacement_tokens`, fits in `target` tokens: `1..to` (everything
/// after the goal up to the start of a later step). `None` when there is
/// nothing to compact (fewer than two steps).
pub fn plan(
    messages: &[Message],
    tools: &[ToolDef],
    target: u64,
    replacement_tokens: u64,
) -> Option<usize> {
    // Steps start at assistant messages; a cut there never separates a
    // call from its result.
    let starts: Vec<usize> = (2..messages.len())
        .filter(|&i| messages[i].role == Role::Assistant)
        .collect();
    let fixed = estimate(&messages[..1], tools) + replacement_tokens;
    let mut tail: u64 = messages.iter().skip(1).map(message_tokens).sum();
    let mut prev = 1;
    for &start in &starts {
        tail -= messages[prev..start]
            .iter()
            .map(message_tokens)
            .sum::<u64>();
        prev = start;
        if fixed + tail <= target {
            return Some(start);
        }
    }
    // Even keeping only the last step is over the target: compact all the
    // steps before it, the most that can be done.
    starts.last().copied()
}

/// The messages `1..to` as a plain-text transcript for the model to
/// summarise, at most about `max_chars` long: each message is cut at
/// `PER_MESSAGE` characters, and when the whole is still too long its middle
/// is left out (the start holds any earlier summary, the end the latest steps).
pub fn transcript(messages: &[Message], max_chars: usize) -> String {
    const PER_MESSAGE: usize = 1000;
    let entries: Vec<String> = messages
        .iter()
        .map(|m| {
            let mut text = match m.role {
                Role::System => format!("[system] {}", m.content.as_deref().unwrap_or("")),
                Role::User => format!("[user] {}", m.content.as_deref().unwrap_or("")),
                Role::Tool => format!(
                    "[tool result {}] {}",
                    m.tool_call_id.as_deref().unwrap_or("?"),
                    m.content.as_deref().unwrap_or("")
                ),
                Role::Assistant => {
                    let mut parts = Vec::new();
                    if let Some(content) = &m.content {
                        parts.push(content.clone());
                    }
                    for call in &m.tool_calls {
                        parts.push(format!(
                            "called {} {} ({})",
                            call.name, call.arguments, call.id
                        ));
                    }
                    format!("[assistant] {}", parts.join("; "))
                }
            };
            if text.len() > PER_MESSAGE {
                let cut = floor_boundary(&text, PER_MESSAGE);
                text.truncate(cut);
                text.push_str(" [...]");
            }
            text
        })
        .collect();
    let total: usize = entries.iter().map(|e| e.len() + 1).sum();
    if total <= max_chars || entries.len() < 2 {
        return entries.join("\n");
    }
    // Keep the first entry and as many of the last as fit.
    let mut budget = max_chars.saturating_sub(entries[0].len() + 40);
    let mut kept_tail = Vec::new();
    for entry in entries[1..].iter().rev() {
        if entry.len() + 1 > budget {
            break;
        }
        budget -= entry.len() + 1;
        kept_tail.push(entry.as_str());
    }
    kept_tail.reverse();
    let omitted = entries.len() - 1 - kept_tail.len();
    let mut out = entries[0].clone();
    out.push_str(&format!("\n[... {omitted} messages omitted ...]"));
    for entry in kept_tail {
        out.push('\n');
        out.push_str(entry);
    }
    out
}

/// The instruction sent with a transcript to summarise.
pub const SUMMARY_INSTRUCTION: &str = "You compact the context of a long-running agent. \
Summarise the transcript below for the agent itself: the goal's progress, facts learned, \
files and outputs that matter (keep any out_N handles), and what remains to do. \
Be brief and factual; do not call tools.";

/// The message that replaces compacted steps.
pub fn replacement(method: Method, through_step: u64, summary: &str) -> Message {
    let text = match method {
        Method::Summary => format!(
            "[Steps 1-{through_step} were compacted to fit the context; the journal keeps them in full. Summary:]\n{summary}"
        ),
        Method::Trim => format!(
            "[Steps 1-{through_step} were removed to fit the context; the journal keeps them in full. Output handles from them still work with {READ_OUTPUT}.]"
        ),
    };
    Message::text(Role::User, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolCall;

    fn step(i: usize, output: &str) -> [Message; 2] {
        [
            Message {
                tool_calls: vec![ToolCall {
                    id: format!("c{i}"),
                    name: "echo".into(),
                    arguments: "{}".into(),
                }],
                ..Message::text(Role::Assistant, "")
            },
            Message::tool_result(format!("c{i}"), output),
        ]
    }

    #[test]
    fn a_short_output_is_shown_whole_and_a_long_one_is_cut_with_a_handle() {
        assert_eq!(output_view("short", "out_1", 10), "short");
        let view = output_view(&"x".repeat(50), "out_7", 10);
        assert!(view.starts_with("xxxxxxxxxx\n[output truncated: showing 10 of 50 bytes"));
        assert!(view.contains(r#"{"handle": "out_7", "offset": 10}"#));
    }

    #[test]
    fn views_and_pages_never_split_a_character() {
        let text = "é".repeat(10); // 20 bytes
        assert!(output_view(&text, "out_1", 5).starts_with("éé\n"));
        assert_eq!(page(&text, 3, 4), "éé\n[bytes 2..6 of 20; next offset 6]");
        assert_eq!(
            page(&text, 18, 100),
            "é\n[bytes 18..20 of 20; end of output]"
        );
        assert_eq!(page(&text, 0, 1), "é\n[bytes 0..2 of 20; next offset 2]");
    }

    #[test]
    fn handles_round_trip_and_reject_other_text() {
        assert_eq!(parse_handle(&handle(42)), Some(42));
        assert_eq!(parse_handle("out_"), None);
        assert_eq!(parse_handle("blob_3"), None);
    }

    #[test]
    fn the_plan_cuts_at_a_step_start_and_keeps_the_latest_steps() {
        let mut messages = vec![Message::text(Role::User, "goal")];
        for i in 0..10 {
            messages.extend(step(i, &"y".repeat(400)));
        }
        let all = estimate(&messages, &[]);
        let to = plan(&messages, &[], all / 2, 20).unwrap();
        assert_eq!(messages[to].role, Role::Assistant);
        assert!(estimate(&messages[to..], &[]) + 20 + estimate(&messages[..1], &[]) <= all / 2);
        // One step earlier would not have fitted.
        assert!(estimate(&messages[to - 2..], &[]) + 20 + estimate(&messages[..1], &[]) > all / 2);
    }

    #[test]
    fn applying_a_compaction_replaces_the_range_and_moves_the_sent_mark() {
        let mut messages = vec![Message::text(Role::User, "goal")];
        for i in 0..3 {
            messages.extend(step(i, "out"));
        }
        let mut sent = 6;
        let compaction = Compaction {
            from: 1,
            to: 5,
            method: Method::Trim,
            replacement: replacement(Method::Trim, 2, ""),
            tokens_before: 0,
            tokens_after: 0,
            usage: None,
            error: None,
        };
        compaction.apply(&mut messages, &mut sent).unwrap();
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[1].role, Role::User);
        assert_eq!(messages[2].role, Role::Assistant);
        assert_eq!(sent, 3);
        let too_far = Compaction {
            to: 9,
            ..compaction
        };
        assert!(too_far.apply(&mut messages, &mut sent).is_err());
    }

    #[test]
    fn a_long_transcript_keeps_its_first_and_last_messages() {
        let mut messages = vec![Message::text(Role::User, "earlier summary")];
        for i in 0..100 {
            messages.extend(step(i, &format!("result {i}")));
        }
        let text = transcript(&messages, 2000);
        assert!(text.len() <= 2100, "{}", text.len());
        assert!(text.starts_with("[user] earlier summary\n[... "));
        assert!(text.ends_with("[tool result c99] result 99"));
    }
}
