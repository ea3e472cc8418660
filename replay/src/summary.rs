//! One line of facts per session, from one pass over its records.

use longrun_host::agent::{JournaledCompaction, SessionCreated, ToolIntent};
use longrun_host::journal::{Journal, RecordKind, SessionId, hex};
use longrun_host::model::{ModelResponse, Usage};
use longrun_host::policy::{Policy, Price};
use serde::Serialize;

use crate::{ReplayError, payload};

/// What `longrun replay list` says of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub session: SessionId,
    pub status: String,
    pub records: u64,
    pub steps: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// At the recorded policy's prices (0 when it has none for the model).
    pub cost_usd: f64,
    pub started_unix_millis: u64,
    pub last_unix_millis: u64,
    pub model: String,
    pub policy_hash: String,
    /// The last record's hash: give it to `verify --anchor` later to prove
    /// that nothing up to here was deleted.
    pub head: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<SessionId>,
}

/// What a model call cost under `price`.
pub fn cost(price: &Price, usage: &Usage) -> f64 {
    price.cost_usd(
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.output_tokens,
    )
}

/// The recorded policy's price for the recorded model, if it parses and
/// has one.
pub fn recorded_price(created: &SessionCreated) -> Option<Price> {
    Policy::parse_recorded(
        &created.policy_text,
        "the recorded policy",
        std::path::Path::new("/"),
    )
    .ok()?
    .price_for(&created.model)
}

/// Summarise one session.
pub fn summarise(journal: &Journal, session: SessionId) -> Result<SessionSummary, ReplayError> {
    let (first, created) = crate::created(journal, session)?;
    let price = recorded_price(&created).unwrap_or(Price::FREE);
    let mut summary = SessionSummary {
        session,
        status: "unfinished".into(),
        records: 0,
        steps: 0,
        tool_calls: 0,
        input_tokens: 0,
        output_tokens: 0,
        cost_usd: 0.0,
        started_unix_millis: first.unix_millis,
        last_unix_millis: first.unix_millis,
        model: created.model.clone(),
        policy_hash: created.policy_hash.clone(),
        head: String::new(),
        parent: created.parent.as_ref().map(|p| p.session),
    };
    let charge = |summary: &mut SessionSummary, usage: &Usage| {
        summary.input_tokens += usage.input_tokens;
        summary.output_tokens += usage.output_tokens;
        summary.cost_usd += cost(&price, usage);
    };
    let mut ended = false;
    for record in journal.records(session) {
        let record = record?;
        summary.records += 1;
        summary.last_unix_millis = record.unix_millis;
        summary.head = hex(&record.hash);
        // What the record says of the session's status, if anything.
        let status = match record.kind {
            RecordKind::ModelResponse => {
                let response: ModelResponse = payload(&record)?;
                summary.steps += 1;
                charge(&mut summary, &response.usage);
                Some("unfinished".to_owned())
            }
            RecordKind::Compaction => {
                let compaction: JournaledCompaction = payload(&record)?;
                if let Some(usage) = &compaction.compaction.usage {
                    charge(&mut summary, usage);
                }
                Some("unfinished".to_owned())
            }
            RecordKind::ToolIntent => {
                let _: ToolIntent = payload(&record)?;
                summary.tool_calls += 1;
                Some("unfinished".to_owned())
            }
            RecordKind::SessionEnded => {
                let ended: serde_json::Value = payload(&record)?;
                Some(ended["status"].as_str().unwrap_or("ended").to_owned())
            }
            RecordKind::BudgetEvent => {
                let event: serde_json::Value = payload(&record)?;
                event
                    .get("exhausted")
                    .map(|kind| format!("paused ({} budget)", kind.as_str().unwrap_or("a")))
            }
            RecordKind::ApprovalAsked => Some("awaiting approval".to_owned()),
            RecordKind::Control => {
                let control: serde_json::Value = payload(&record)?;
                Some(if control["action"] == "pause" {
                    "paused by a person".to_owned()
                } else {
                    "unfinished".to_owned()
                })
            }
            // A fork of this session changes nothing about it.
            RecordKind::Forked => None,
            _ => Some("unfinished".to_owned()),
        };
        // Nothing after its end changes how a session ended.
        if !ended && let Some(status) = status {
            summary.status = status;
        }
        ended |= record.kind == RecordKind::SessionEnded;
    }
    Ok(summary)
}
