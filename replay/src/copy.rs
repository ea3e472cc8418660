//! A journal opened from a private copy of its directory.
//!
//! sled has no read-only mode: opening takes the directory's lock and may
//! write (recovery, a new snapshot of its page table). An auditor must never
//! change the journal they were handed, and must be able to read one that a
//! running host holds open, so every read-only command opens a copy. A copy
//! taken while a host writes holds a consistent prefix of what was written
//! (sled recovers a torn tail on open).

use std::path::Path;
use std::sync::Arc;

use longrun_host::journal::{Journal, JournalOptions};

use crate::ReplayError;

/// A journal opened from a copy that is removed when this is dropped.
pub struct JournalCopy {
    // Dropped after the journal (fields drop in order).
    pub journal: Arc<Journal>,
    _dir: tempfile::TempDir,
}

/// Open a copy of the journal in `dir`.
pub fn open_copy(dir: &Path) -> Result<JournalCopy, ReplayError> {
    let copy_err = |source| ReplayError::Copy {
        path: dir.to_owned(),
        source,
    };
    if !dir.join("conf").is_file() {
        return Err(copy_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no journal there",
        )));
    }
    let scratch = tempfile::Builder::new()
        .prefix("longrun-replay-")
        .tempdir()
        .map_err(ReplayError::Scratch)?;
    let into = scratch.path().join("journal");
    copy_dir(dir, &into).map_err(copy_err)?;
    let journal = Journal::open_with(&into, JournalOptions::AUDIT)?;
    Ok(JournalCopy {
        journal,
        _dir: scratch,
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
