//! A session and the child sessions it started (and theirs), walked through
//! the links the records hold: each node's status, what it spent itself
//! and with its children, and totals per model (a planner's against its
//! workers'). The HTTP API's `children` route, `replay list --tree`,
//! `replay show --follow` and `replay stats` all read a tree through this.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::journal::Journal;
use crate::payload::SpawnedBy;
use crate::record::SessionId;
use crate::state::{Pricing, SessionState, StateError, Status, Used};

/// One session of a tree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    pub session: SessionId,
    /// 0 for the session the tree was read from, 1 for its children, ...
    pub depth: usize,
    /// The parent and its `child_started` record (none for a root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spawned_by: Option<SpawnedBy>,
    pub goal: String,
    pub model: String,
    pub status: Status,
    /// What the session used itself: its own steps, calls and tokens.
    pub own: Used,
    /// What its budgets count: its own, and what its children spent (or
    /// have reserved while they run).
    pub total: Used,
    /// The children it started, in the order it started them.
    pub children: Vec<SessionId>,
}

/// The tree under `root`, depth first, `root` first; each child follows
/// its parent and precedes its parent's next child.
pub fn tree(
    journal: &Journal,
    root: SessionId,
    pricing: &mut dyn Pricing,
) -> Result<Vec<Node>, StateError> {
    let mut nodes = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(root, 0)];
    while let Some((session, depth)) = stack.pop() {
        // A link that loops back is not followed twice (the audit names it).
        if !seen.insert(session) {
            continue;
        }
        let state = SessionState::fold(journal, session, pricing)?;
        let mut children: Vec<(u64, SessionId)> = state
            .children
            .values()
            .map(|c| (c.started_at, c.started.child))
            .collect();
        children.sort();
        let children: Vec<SessionId> = children.into_iter().map(|(_, c)| c).collect();
        stack.extend(children.iter().rev().map(|c| (*c, depth + 1)));
        let created = state.created.as_deref();
        nodes.push(Node {
            session,
            depth,
            spawned_by: created.and_then(|c| c.spawned_by.clone()),
            goal: created.map(|c| c.goal.clone()).unwrap_or_default(),
            model: created.map(|c| c.model.clone()).unwrap_or_default(),
            status: state.status,
            own: state.own_used(),
            total: state.used.clone(),
            children,
        });
    }
    Ok(nodes)
}

/// What the nodes used themselves, summed per model.
pub fn by_model(nodes: &[Node]) -> BTreeMap<String, Used> {
    let mut models: BTreeMap<String, Used> = BTreeMap::new();
    for node in nodes {
        models
            .entry(node.model.clone())
            .or_default()
            .plus(&node.own);
    }
    models
}
