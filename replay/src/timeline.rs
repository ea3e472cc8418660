//! The readable timeline of a session (`show`): a block per record, with
//! what a person needs to follow the agent: the model's reasoning and
//! calls, each call's arguments and result, refusals, approvals,
//! compactions, budget events and errors.

use std::fmt::Write as _;

use longrun_host::journal::payload::{
    BudgetEvent, ChangesApplied, ChildEnded, ChildStarted, ChosenBy, Control, ControlAction,
    EndStatus, Forked, Input, JournaledCompaction, LeaseTaken, Message, Method, ModelFailure,
    ModelResponse, NewMessages, PolicyChanged, Refusal, RepeatedFailure, Role, SessionCreated,
    SessionEnded, ToolIntent, ToolResult, TrajectoryChosen, Verdict,
};
use longrun_host::journal::{Journal, Record, RecordKind, StateError, Status, Visitor, hex, visit};

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
        RecordKind::PolicyDecision
        | RecordKind::Error
        | RecordKind::PolicyChanged
        | RecordKind::RepeatedFailure => RED,
        RecordKind::ApprovalAsked | RecordKind::ApprovalGiven | RecordKind::BudgetEvent => YELLOW,
        RecordKind::Compaction => MAGENTA,
        RecordKind::UserMessage | RecordKind::Control => BLUE,
        RecordKind::SessionCreated
        | RecordKind::SessionEnded
        | RecordKind::Forked
        | RecordKind::LeaseTaken
        | RecordKind::ChildStarted
        | RecordKind::ChildEnded
        | RecordKind::TrajectoryChosen
        | RecordKind::ChangesApplied => BOLD,
    }
}

/// One record as a block of text (ending in a newline). `started` is the
/// session's first record's time, for the offsets. A record whose payload
/// does not decode is shown as its text, with why.
pub fn render(
    record: &Record,
    started_unix_millis: u64,
    journal: &Journal,
    style: Style,
) -> String {
    let offset = record.unix_millis.saturating_sub(started_unix_millis) as f64 / 1000.0;
    let mut block = Block {
        out: String::new(),
        style,
        journal,
    };
    let _ = writeln!(
        block.out,
        "{} {} {}",
        style.paint(DIM, &format!("#{:<6}", record.seq)),
        style.paint(DIM, &format!("+{offset:>9.3}s")),
        style.paint(kind_colour(record.kind), record.kind.as_str()),
    );
    if let Err(e) = visit(&mut block, record) {
        block.line("unreadable", &style.paint(RED, &e.to_string()));
        block.line("payload", &String::from_utf8_lossy(&record.payload));
    }
    block.out
}

/// The lines of one record's block: a [`Visitor`] with a method per kind.
struct Block<'a> {
    out: String,
    style: Style,
    journal: &'a Journal,
}

impl Block<'_> {
    /// `text` under a dim `label`, one line per line of text.
    fn line(&mut self, label: &str, text: &str) {
        let label = self.style.paint(DIM, label);
        let mut lines = text.lines();
        match lines.next() {
            Some(first) => {
                let _ = writeln!(self.out, "    {label:<11}{first}");
                for part in lines {
                    let _ = writeln!(self.out, "    {:<11}{part}", self.style.paint(DIM, ""));
                }
            }
            None => {
                let _ = writeln!(self.out, "    {label}");
            }
        }
    }

    fn message(&mut self, message: &Message) {
        let content = message.content.as_deref().unwrap_or_default();
        match message.role {
            Role::Tool => self.line(
                "tool →",
                &format!(
                    "{} {content}",
                    message.tool_call_id.as_deref().unwrap_or_default()
                ),
            ),
            role => self.line(&format!("{} →", role_name(role)), content),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

impl Visitor for Block<'_> {
    type Error = StateError;

    fn session_created(&mut self, _: &Record, p: &SessionCreated) -> Result<(), StateError> {
        self.line("goal", &p.goal);
        self.line("model", &p.model);
        self.line("policy", &p.policy_hash);
        let tools: Vec<&str> = p.tools.iter().map(|t| t.name.as_str()).collect();
        self.line("tools", &tools.join(", "));
        if let Some(snapshot) = &p.snapshot {
            self.line("snapshot", snapshot);
        }
        if let Some(parent) = &p.parent {
            self.line(
                "forked",
                &format!("from session {} at record {}", parent.session, parent.at),
            );
        }
        if let Some(spawned_by) = &p.spawned_by {
            self.line(
                "parent",
                &format!(
                    "started by session {} at record {}",
                    spawned_by.session, spawned_by.seq
                ),
            );
        }
        if !p.labels.is_empty() {
            self.line(
                "labels",
                &serde_json::Value::Object(p.labels.clone()).to_string(),
            );
        }
        Ok(())
    }

    fn model_request(&mut self, _: &Record, p: &NewMessages) -> Result<(), StateError> {
        for message in &p.0 {
            self.message(message);
        }
        Ok(())
    }

    fn model_response(&mut self, _: &Record, p: &ModelResponse) -> Result<(), StateError> {
        let message = &p.message;
        if let Some(reasoning) = &message.reasoning_content {
            self.line("reasoning", reasoning);
        }
        if let Some(content) = &message.content {
            self.line("says", content);
        }
        for call in &message.tool_calls {
            let text = format!(
                "{} {} {}",
                self.style.paint(GREEN, &call.name),
                call.arguments,
                self.style.paint(DIM, &call.id)
            );
            self.line("calls", &text);
        }
        self.line(
            "usage",
            &format!(
                "{} in / {} out tokens",
                p.usage.input_tokens, p.usage.output_tokens
            ),
        );
        Ok(())
    }

    fn tool_intent(&mut self, _: &Record, p: &ToolIntent) -> Result<(), StateError> {
        let text = format!(
            "{} {} {}",
            self.style.paint(GREEN, &p.tool),
            p.arguments,
            self.style.paint(DIM, &p.call_id)
        );
        self.line("runs", &text);
        Ok(())
    }

    fn tool_result(&mut self, r: &Record, p: &ToolResult) -> Result<(), StateError> {
        if let Some(error) = &p.error {
            let text = self.style.paint(RED, error);
            self.line("error", &text);
        } else if let Some(output) = &p.output {
            self.line("output", output);
        } else if let Some(blob) = r.blobs.first() {
            let text = match (self.style.expand_blobs, self.journal.blob(blob)) {
                (true, Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
                (true, Err(e)) => self.style.paint(RED, &e.to_string()),
                (false, _) => format!("in blob {} (--blobs shows it)", hex(blob)),
            };
            self.line("output", &text);
        }
        self.line("took", &format!("{} ms", p.elapsed_ms));
        Ok(())
    }

    fn policy_decision(&mut self, _: &Record, p: &Refusal) -> Result<(), StateError> {
        let text = self.style.paint(RED, &format!("{}: {}", p.tool, p.reason));
        self.line("refused", &text);
        Ok(())
    }

    fn budget_event(&mut self, _: &Record, p: &BudgetEvent) -> Result<(), StateError> {
        match p {
            BudgetEvent::Warning {
                warning,
                used,
                limit,
            } => self.line("warning", &format!("{warning}: {used} of {limit} used")),
            BudgetEvent::Exhausted {
                exhausted,
                used,
                limit,
            } => {
                let text = self
                    .style
                    .paint(RED, &format!("{exhausted}: {used} of {limit} used"));
                self.line("exhausted", &text);
            }
        }
        Ok(())
    }

    fn approval_asked(&mut self, _: &Record, p: &Refusal) -> Result<(), StateError> {
        self.line("asks", &format!("{}: {}", p.tool, p.reason));
        Ok(())
    }

    fn approval_given(&mut self, _: &Record, p: &Verdict) -> Result<(), StateError> {
        let verdict = if p.approved { "approved" } else { "denied" };
        let reason = p
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        self.line(verdict, &format!("{} by {}{reason}", p.call_id, p.by));
        Ok(())
    }

    fn compaction(&mut self, _: &Record, p: &JournaledCompaction) -> Result<(), StateError> {
        let c = &p.compaction;
        let method = match c.method {
            Method::Summary => "summary",
            Method::Trim => "trim",
        };
        self.line(
            "compacted",
            &format!(
                "messages {}..{} ({method}), steps through {}: {} → {} tokens",
                c.from, c.to, p.through_step, c.tokens_before, c.tokens_after
            ),
        );
        self.line(
            "summary",
            c.replacement.content.as_deref().unwrap_or_default(),
        );
        if let Some(error) = &c.error {
            self.line("because", error);
        }
        Ok(())
    }

    fn error(&mut self, _: &Record, p: &ModelFailure) -> Result<(), StateError> {
        let retry = p
            .retry_in_ms
            .map(|ms| format!(" (retried in {ms} ms)"))
            .unwrap_or_default();
        let text = self
            .style
            .paint(RED, &format!("attempt {}: {}{retry}", p.attempt, p.error));
        self.line("model", &text);
        Ok(())
    }

    fn session_ended(&mut self, _: &Record, p: &SessionEnded) -> Result<(), StateError> {
        let status = match p.status {
            EndStatus::Completed => Status::Completed,
            EndStatus::Cancelled => Status::Cancelled,
            EndStatus::Stuck => Status::Stuck,
        };
        self.line("status", status.as_str());
        if let Some(answer) = &p.answer {
            self.line("answer", answer);
        }
        Ok(())
    }

    fn user_message(&mut self, _: &Record, p: &Input) -> Result<(), StateError> {
        self.line("person", &format!("{}: {}", p.by, p.text));
        Ok(())
    }

    fn control(&mut self, _: &Record, p: &Control) -> Result<(), StateError> {
        let action = match p.action {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
        };
        self.line("control", action);
        Ok(())
    }

    fn forked(&mut self, _: &Record, p: &Forked) -> Result<(), StateError> {
        self.line(
            "forked",
            &format!("session {} from record {}", p.child, p.at),
        );
        Ok(())
    }

    fn policy_changed(&mut self, _: &Record, p: &PolicyChanged) -> Result<(), StateError> {
        self.line("policy", &format!("now {}", p.policy_hash));
        Ok(())
    }

    fn child_started(&mut self, _: &Record, p: &ChildStarted) -> Result<(), StateError> {
        self.line(
            "child",
            &format!("started session {} on {}: {}", p.child, p.model, p.goal),
        );
        Ok(())
    }

    fn child_ended(&mut self, _: &Record, p: &ChildEnded) -> Result<(), StateError> {
        let text = format!(
            "session {} {} (${:.6}, {} steps){}",
            p.child,
            p.status.as_str(),
            p.spent.cost_usd,
            p.spent.steps,
            p.answer
                .as_deref()
                .map(|a| format!(": {a}"))
                .unwrap_or_default()
        );
        self.line("child", &text);
        Ok(())
    }

    fn trajectory_chosen(&mut self, _: &Record, p: &TrajectoryChosen) -> Result<(), StateError> {
        let by = match &p.by {
            ChosenBy::OnlyCompleted => "the only one completed".to_owned(),
            ChosenBy::Model { response } => format!("by the model (record {response})"),
            ChosenBy::FirstCompleted { why } => {
                format!("as the first completed: the model named none ({why})")
            }
        };
        self.line(
            "chosen",
            &format!(
                "trajectory {} (session {}), {by}; {} changes {}",
                p.index,
                p.child,
                p.changes.len(),
                if p.apply { "to apply" } else { "proposed" }
            ),
        );
        for change in &p.changes {
            let what = match (&change.before, &change.after) {
                (None, _) => "added",
                (_, None) => "removed",
                _ => "changed",
            };
            self.line(
                "change",
                &format!(
                    "{what} {}/{}",
                    change.guest.trim_end_matches('/'),
                    change.path
                ),
            );
        }
        for left in &p.left_out {
            self.line(
                "change",
                &format!("left out {}/{}: {}", left.guest, left.path, left.why),
            );
        }
        Ok(())
    }

    fn changes_applied(&mut self, _: &Record, p: &ChangesApplied) -> Result<(), StateError> {
        self.line(
            "applied",
            &format!("{} changes, {} conflicts", p.applied, p.conflicts.len()),
        );
        for conflict in &p.conflicts {
            self.line(
                "conflict",
                &format!("{}/{}: {}", conflict.guest, conflict.path, conflict.why),
            );
        }
        Ok(())
    }

    fn lease_taken(&mut self, _: &Record, p: &LeaseTaken) -> Result<(), StateError> {
        self.line(
            "lease",
            &format!("{} writes from here (epoch {})", p.owner, p.epoch),
        );
        Ok(())
    }

    fn repeated_failure(&mut self, _: &Record, p: &RepeatedFailure) -> Result<(), StateError> {
        let text = format!(
            "{} failed the same way {} times (the policy allows {})",
            p.tool, p.count, p.limit
        );
        self.line("repeat", &self.style.paint(RED, &text));
        Ok(())
    }
}
