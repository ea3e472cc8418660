//! What an auditor does with a journal, without the model and without
//! trusting the operator: `longrun replay` is a thin command line over this.
//!
//! - [`copy`]: a journal opened read-only in place (from a private copy
//!   only when a running host holds it).
//! - [`summary`]: one line of facts per session (`list`).
//! - [`export`]: the stable JSON Lines export of records (`show --jsonl`),
//!   which parses back into the very records.
//! - [`timeline`]: the readable timeline (`show`).
//! - [`audit`]: the hash chain, the blobs, and every tool call re-checked
//!   against the policy recorded at the session's start (`verify`).
//! - [`reexecute`]: every recorded tool call run again in the sandbox,
//!   against a scratch copy of the mounts rebuilt from the journal.
//! - [`fork`]: a new session that starts from a parent's state at a record.
//! - [`stats`]: steps per tool, time per tool, tokens and cost over time.
//!
//! Positions in a session are record sequence numbers (the journal's
//! "steps"), as in the HTTP API.

pub mod audit;
pub mod copy;
pub mod export;
pub mod fork;
pub mod reexecute;
pub mod stats;
pub mod summary;
pub mod timeline;

use longrun_host::agent::{AgentError, SessionCreated};
use longrun_host::journal::{Journal, JournalError, Record, RecordKind, SessionId};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("session {session}, record {seq}: {why}")]
    Record {
        session: SessionId,
        seq: u64,
        why: String,
    },
    #[error("session {session} has no record {seq} (its last is {last})")]
    NoRecord {
        session: SessionId,
        seq: u64,
        last: u64,
    },
    #[error("cannot read the journal in {}: {source}", path.display())]
    Copy {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the scratch directory: {0}")]
    Scratch(std::io::Error),
    #[error("the recorded policy: {0}")]
    Policy(#[from] longrun_host::PolicyError),
    #[error(transparent)]
    Snapshot(#[from] longrun_host::snapshot::SnapshotError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    State(#[from] longrun_host::journal::StateError),
}

/// A record's payload as `T`, or an error that names the record.
pub fn payload<T: serde::de::DeserializeOwned>(record: &Record) -> Result<T, ReplayError> {
    serde_json::from_slice(&record.payload).map_err(|e| ReplayError::Record {
        session: record.session,
        seq: record.seq,
        why: format!("its {} payload does not parse: {e}", record.kind.as_str()),
    })
}

/// A session's first record and what it says.
pub fn created(
    journal: &Journal,
    session: SessionId,
) -> Result<(Record, SessionCreated), ReplayError> {
    let first = journal
        .record(session, 0)?
        .ok_or(JournalError::NoSession(session))?;
    if first.kind != RecordKind::SessionCreated {
        return Err(ReplayError::Record {
            session,
            seq: 0,
            why: format!(
                "the first record is {}, not session_created",
                first.kind.as_str()
            ),
        });
    }
    let created = payload(&first)?;
    Ok((first, created))
}

/// The records of `session` from `from` to `to` (inclusive), in order.
pub fn records_between(
    journal: &Journal,
    session: SessionId,
    from: u64,
    to: Option<u64>,
) -> impl Iterator<Item = Result<Record, ReplayError>> + '_ {
    journal
        .records_from(session, from)
        .take_while(move |r| match (r, to) {
            (Ok(r), Some(to)) => r.seq <= to,
            _ => true,
        })
        .map(|r| r.map_err(ReplayError::from))
}

/// A progress bar on the terminal for `len` items (hidden when standard
/// error is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "{{spinner}} {what} {{bar:30}} {{pos}}/{{len}} ({{per_sec}}, {{eta}} left)"
    )) {
        bar.set_style(style);
    }
    bar
}
