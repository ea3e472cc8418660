//! A journal opened for an auditor: read in place, every write refused
//! ([`Journal::open_read_only`]), without copying it.
//!
//! A segment journal is read in place even while a host writes it. A sled
//! journal that a running host holds open (sled's lock is taken) cannot
//! be: it is read from a private copy instead, with a note
//! on standard error. A copy taken while a host writes holds a consistent
//! prefix of what was written (sled recovers a torn tail on open); the
//! acknowledged heads are copied first, so that the host's later writes
//! only put the store ahead of them, never behind. A PostgreSQL journal is
//! read in place, in read-only transactions.

use std::path::Path;
use std::sync::Arc;

use longrun_host::journal::store::segments::is_segment_store;
use longrun_host::journal::store::sled::is_sled_store;
use longrun_host::journal::{Journal, JournalError, JournalOptions, Location};

use crate::ReplayError;

/// A journal opened for reading; a copy, if one was needed, is removed
/// when this is dropped.
pub struct JournalCopy {
    // Dropped before the copy (fields drop in order).
    pub journal: Arc<Journal>,
    _copy: Option<tempfile::TempDir>,
}

/// Open the journal at `location` for reading: in place, or (a sled
/// directory that a running host holds) from a copy.
pub fn open_read_only(location: &Location) -> Result<JournalCopy, ReplayError> {
    let dir = match location {
        Location::Dir(dir) | Location::Segments(dir) | Location::Sled(dir) => dir,
        Location::Postgres(_) | Location::Memory => {
            return Ok(JournalCopy {
                journal: Journal::open_location_read_only(location, JournalOptions::AUDIT)?,
                _copy: None,
            });
        }
    };
    match Journal::open_read_only(dir, JournalOptions::AUDIT) {
        Ok(journal) => Ok(JournalCopy {
            journal,
            _copy: None,
        }),
        Err(JournalError::Locked(_)) => {
            eprintln!(
                "note: the journal in {} is in use by a running host: reading a copy of it",
                dir.display()
            );
            open_copy(dir)
        }
        Err(JournalError::Storage(_)) if !is_sled_store(dir) && !is_segment_store(dir) => {
            Err(ReplayError::Copy {
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no journal there"),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Open a private copy of the journal in `dir`.
pub fn open_copy(dir: &Path) -> Result<JournalCopy, ReplayError> {
    let copy_err = |source| ReplayError::Copy {
        path: dir.to_owned(),
        source,
    };
    if !is_sled_store(dir) {
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
    std::fs::create_dir_all(&into).map_err(copy_err)?;
    // The acknowledged heads before the store: a host writing meanwhile
    // only moves the store ahead of them, never behind (which would read as
    // lost records).
    let heads = dir.join(longrun_host::journal::heads::FILE_NAME);
    if heads.is_file() {
        std::fs::copy(&heads, into.join(longrun_host::journal::heads::FILE_NAME))
            .map_err(copy_err)?;
    }
    copy_dir(dir, &into).map_err(copy_err)?;
    let journal = Journal::open_with(&into, JournalOptions::AUDIT)?;
    Ok(JournalCopy {
        journal,
        _copy: Some(scratch),
    })
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if entry.file_name() == longrun_host::journal::heads::FILE_NAME {
            continue;
        }
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
