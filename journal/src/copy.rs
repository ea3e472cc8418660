//! Copying a journal from one store to another (a directory into
//! PostgreSQL, or back): every session under its own id, every record's
//! bytes as they are (so the hash chains are the same chains), every blob a
//! record names; then both sides verified.
//!
//! The target must not hold any of the sessions already: a copy never
//! merges into or overwrites a session. Session ids handed out by the
//! target afterwards come after the copied ones.

use std::collections::HashSet;
use std::sync::Arc;

use crate::journal::{Journal, JournalError, VerifyError};
use crate::record::{Hash, SessionId, decode};

/// What a copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Copied {
    pub sessions: u64,
    pub records: u64,
    pub blobs: u64,
}

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("session {0} is already in the target journal: a copy goes into an empty one")]
    Exists(SessionId),
    #[error("the source journal does not verify, so it is not copied: {0}")]
    SourceBad(VerifyError),
    #[error("session {session} was copied but the copy does not match: {why}")]
    Mismatch { session: SessionId, why: String },
}

/// Copy every session of `from` into `to`, and verify both.
pub fn copy(from: &Journal, to: &Arc<Journal>) -> Result<Copied, CopyError> {
    let sessions = from.sessions()?;
    let existing: HashSet<SessionId> = to.sessions()?.into_iter().collect();
    if let Some(taken) = sessions.iter().find(|s| existing.contains(s)) {
        return Err(CopyError::Exists(*taken));
    }
    let mut copied = Copied::default();
    let mut blobs_copied: HashSet<Hash> = HashSet::new();
    for &session in &sessions {
        let expected = from.verify(session).map_err(CopyError::SourceBad)?;
        let mut records = Vec::new();
        for stored in from.raw_records(session) {
            let (seq, bytes) = stored?;
            let record = decode(session, &bytes).map_err(|why| JournalError::Corrupt {
                session,
                seq,
                why,
            })?;
            for blob in &record.blobs {
                if blobs_copied.insert(*blob) {
                    let bytes = from.blob(blob)?;
                    to.put_blob(&bytes)?;
                    copied.blobs += 1;
                }
            }
            records.push((seq, bytes, record.hash));
        }
        copied.records += records.len() as u64;
        to.import_session(session, records)?;
        copied.sessions += 1;
        // The copy verifies on its own and ends where the source does.
        let verified = to.verify(session).map_err(|e| CopyError::Mismatch {
            session,
            why: e.to_string(),
        })?;
        if verified != expected {
            return Err(CopyError::Mismatch {
                session,
                why: format!("{verified} records verify, the source has {expected}"),
            });
        }
    }
    Ok(copied)
}
