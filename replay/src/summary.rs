//! One line of facts per session, from one pass over its records.

use longrun_host::journal::{Journal, JournalError, SessionId, SessionState, Status, hex};
use longrun_host::policy::RecordedPrices;
use serde::Serialize;

use crate::ReplayError;

/// What `longrun replay list` says of a session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub session: SessionId,
    pub status: Status,
    pub records: u64,
    pub steps: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// At the prices of the policy in force (0 when it has none for the
    /// model).
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

/// Summarise one session: its records folded by [`SessionState`], at the
/// prices of the policy in force at each record.
pub fn summarise(journal: &Journal, session: SessionId) -> Result<SessionSummary, ReplayError> {
    let state = SessionState::fold(journal, session, &mut RecordedPrices::default())?;
    let Some(created) = state.created.as_deref() else {
        return Err(JournalError::NoSession(session).into());
    };
    Ok(SessionSummary {
        session,
        status: state.status,
        records: state.records,
        steps: state.used.steps,
        tool_calls: state.used.tool_calls,
        input_tokens: state.used.input_tokens,
        output_tokens: state.used.output_tokens,
        cost_usd: state.used.cost_usd,
        started_unix_millis: state.created_unix_millis,
        last_unix_millis: state.last_unix_millis,
        model: created.model.clone(),
        policy_hash: created.policy_hash.clone(),
        head: state.head.as_ref().map(hex).unwrap_or_default(),
        parent: created.parent.as_ref().map(|p| p.session),
    })
}
