//! `fork`: a new session that starts from a parent's state at one of its
//! records, for a what-if run.
//!
//! The child's records up to the fork point are the parent's (same kinds,
//! payloads and blobs, in a chain of its own), except that its first
//! record also names the parent, the record and that record's hash. The
//! parent gets a `forked` record that names the child, so each side of the
//! link can be checked from the other. The mounts are rebuilt as they were
//! at the fork point (the snapshot, then the recorded calls run again up to
//! there) in a workspace of the fork's own; the child then runs there, on
//! whatever model the caller gives it, and never touches the parent's files.

use std::path::Path;
use std::sync::Arc;

use longrun_host::agent::{ForkPoint, Forked, SessionCreated};
use longrun_host::journal::{Journal, RecordKind, SessionId, hex};
use longrun_host::sandbox::Toolbox;

use crate::reexecute::{Reexecuted, reexecute};
use crate::{ReplayError, payload};

/// A fork, made and ready to run.
pub struct Fork {
    pub child: SessionId,
    /// The rebuilding of the mounts: its `scratch_policy` is the policy the
    /// child must run under, and its differences say where the rebuilt
    /// state may not be the parent's.
    pub rebuilt: Reexecuted,
}

/// Fork `parent` at record `at`, rebuilding its mounts under `workspace`.
pub async fn fork(
    journal: &Arc<Journal>,
    parent: SessionId,
    at: u64,
    toolbox: &Toolbox,
    workspace: &Path,
) -> Result<Fork, ReplayError> {
    let records: Vec<_> = journal
        .records(parent)
        .take_while(|r| r.as_ref().map_or(true, |r| r.seq <= at))
        .collect::<Result<_, _>>()?;
    let Some(point) = records.last().filter(|r| r.seq == at) else {
        let last = journal
            .records(parent)
            .last()
            .transpose()?
            .map_or(0, |r| r.seq);
        return Err(ReplayError::NoRecord {
            session: parent,
            seq: at,
            last,
        });
    };
    let point = ForkPoint {
        session: parent,
        at,
        hash: hex(&point.hash),
    };
    // The rebuild never repeats an effect on the world: a what-if run must
    // not post, pay or send again what its parent already did.
    let rebuilt = reexecute(
        journal,
        parent,
        toolbox,
        0,
        Some(at),
        workspace,
        &crate::reexecute::LiveEffects::Recorded,
    )
    .await?;

    let mut child = journal.create_session()?;
    for record in &records {
        let bytes = if record.kind == RecordKind::SessionCreated {
            let mut created: SessionCreated = payload(record)?;
            created.parent = Some(point.clone());
            serde_json::to_vec(&created).map_err(|e| ReplayError::Record {
                session: parent,
                seq: record.seq,
                why: e.to_string(),
            })?
        } else {
            record.payload.clone()
        };
        child.append(record.kind, &bytes, &record.blobs)?;
    }
    let child_id = child.session();
    drop(child);
    let mut parent_writer = journal.open_session(parent)?;
    let link = serde_json::to_vec(&Forked {
        child: child_id,
        at,
    })
    .map_err(|e| ReplayError::Record {
        session: parent,
        seq: parent_writer.next_seq(),
        why: e.to_string(),
    })?;
    parent_writer
        .append_durable(RecordKind::Forked, &link, &[])
        .await?;
    Ok(Fork {
        child: child_id,
        rebuilt,
    })
}
