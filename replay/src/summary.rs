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
    /// The session it was forked from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<SessionId>,
    /// The session that started it, for a child session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawned_by: Option<SessionId>,
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
        spawned_by: created.spawned_by.as_ref().map(|s| s.session),
    })
}

/// A session with its summary, or why it has none.
pub type SummaryOf<E> = (SessionId, Result<SessionSummary, E>);

/// `summaries` (each session with its summary, or why it has none) in tree
/// order: each session that started none of the others' first, then the
/// sessions it started beneath it, depth first; with each one's depth.
pub fn tree_order<E>(summaries: &[SummaryOf<E>]) -> Vec<(usize, &SummaryOf<E>)> {
    let known: std::collections::BTreeSet<SessionId> = summaries.iter().map(|(s, _)| *s).collect();
    let parent_of = |entry: &SummaryOf<E>| {
        entry
            .1
            .as_ref()
            .ok()
            .and_then(|s| s.spawned_by)
            .filter(|p| known.contains(p) && *p != entry.0)
    };
    let mut children: std::collections::BTreeMap<SessionId, Vec<usize>> = Default::default();
    let mut roots = Vec::new();
    for (i, entry) in summaries.iter().enumerate() {
        match parent_of(entry) {
            Some(parent) => children.entry(parent).or_default().push(i),
            None => roots.push(i),
        }
    }
    let mut out = Vec::with_capacity(summaries.len());
    let mut placed = vec![false; summaries.len()];
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|i| (i, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut placed[i], true) {
            continue;
        }
        out.push((depth, &summaries[i]));
        if let Some(under) = children.get(&summaries[i].0) {
            stack.extend(under.iter().rev().map(|c| (*c, depth + 1)));
        }
    }
    // Sessions on a loop of links (a damaged journal) still show, flat.
    for (i, entry) in summaries.iter().enumerate() {
        if !placed[i] {
            out.push((0, entry));
        }
    }
    out
}
