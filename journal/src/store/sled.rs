//! The embedded default store: a sled database in one directory.
//!
//! Three trees: `records` (key: session and sequence number, big-endian, so
//! a session's records are one ordered range), `blob_data` (blob bytes by a
//! sequential number) and `blob_index` (that number by the blob's hash).
//! Blobs are numbered in order rather than keyed by hash because sled's
//! memory grows with the pages that random-key inserts of large values
//! touch (measured: about 2.7 KB per 4 KB blob keyed by hash, nothing once
//! keyed in order), and a host must run for days.
//!
//! This layout is the on-disk format of every journal written so far; it
//! must keep opening.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    RecordIter, Store, StoreError, StoredRecord, Synced, check_append, first_gap, writable,
};
use crate::record::{Hash, SessionId};

/// A sled database holding a journal.
pub struct SledStore {
    db: sled::Db,
    records: sled::Tree,
    blob_data: sled::Tree,
    blob_index: sled::Tree,
    dir: PathBuf,
    read_only: bool,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> StoreError {
        match e {
            // sled's own text for these is its Debug form ("Os { code: 28,
            // kind: StorageFull, .. }"); the system's words read better.
            sled::Error::Io(io) => StoreError::Io(match io.kind() {
                // sled keeps the first I/O error it met and hands out copies
                // whose text is the original's debug form.
                std::io::ErrorKind::StorageFull => "No space left on device".into(),
                _ => io.to_string(),
            }),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Whether `dir` holds a sled journal (sled writes its `conf` first).
pub fn is_sled_store(dir: &Path) -> bool {
    dir.join("conf").is_file()
}

/// How long opening waits for the storage's lock before it reports the
/// journal as open elsewhere.
const LOCK_WAIT: Duration = Duration::from_secs(5);

impl SledStore {
    /// Open (or create) the store in `dir`, with a page cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, cache_bytes, false, LOCK_WAIT)
    }

    /// Open the existing store in `dir` for reading, in place: every write
    /// is refused. sled has no read-only mode, so this takes the
    /// directory's lock like a writer (a journal held by a running host is
    /// [`StoreError::Locked`] after a short wait), and sled's own
    /// bookkeeping on open still happens: a new snapshot of its page table
    /// (`snap.*`, an index of the log) when the log has grown since the last
    /// one, and, after a crash, zeroing the torn end of the log, as the next
    /// writer would. No record, blob or acknowledged head is added or
    /// changed.
    pub fn open_read_only(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        if !is_sled_store(dir) {
            return Err(StoreError::Io(format!("no journal in {}", dir.display())));
        }
        SledStore::open_with(dir, cache_bytes, true, Duration::from_millis(300))
    }

    fn open_with(
        dir: &Path,
        cache_bytes: u64,
        read_only: bool,
        lock_wait: Duration,
    ) -> Result<SledStore, StoreError> {
        let db = open_storage_waiting(
            sled::Config::new()
                .path(dir)
                .cache_capacity(cache_bytes)
                // Durability comes from explicit syncs, never from a timer.
                .flush_every_ms(None),
            lock_wait,
        )?;
        Ok(SledStore {
            records: db.open_tree("records")?,
            blob_data: db.open_tree("blob_data")?,
            blob_index: db.open_tree("blob_index")?,
            db,
            dir: dir.to_owned(),
            read_only,
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Store for SledStore {
    fn new_session_id(&self) -> Result<SessionId, StoreError> {
        writable(self.read_only)?;
        Ok(self.db.generate_id()?)
    }

    fn advance_session_ids(&self, past: SessionId) -> Result<(), StoreError> {
        writable(self.read_only)?;
        // sled's id counter only counts up, one at a time: far ahead is
        // refused rather than counted to.
        for _ in 0..1_000_000u32 {
            if self.db.generate_id()? >= past {
                return Ok(());
            }
        }
        Err(StoreError::Io(format!(
            "session id {past} is too far ahead of this sled journal's counter"
        )))
    }

    fn append(
        &self,
        session: SessionId,
        first_seq: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        writable(self.read_only)?;
        check_append(session, first_seq, records.len(), |seq| {
            Ok(self.records.contains_key(record_key(session, seq))?)
        })?;
        let mut batch = sled::Batch::default();
        for (seq, bytes) in (first_seq..).zip(records) {
            batch.insert(&record_key(session, seq), bytes.as_slice());
        }
        // One batch: all of them or none, even across a crash.
        self.records.apply_batch(batch)?;
        Ok(())
    }

    fn get(&self, session: SessionId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .records
            .get(record_key(session, seq))?
            .map(|v| v.to_vec()))
    }

    fn last(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError> {
        match self
            .records
            .scan_prefix(session.to_be_bytes())
            .next_back()
            .transpose()?
        {
            Some((key, value)) => Ok(Some((key_seq(&key), value.to_vec()))),
            None => Ok(None),
        }
    }

    fn range(&self, session: SessionId, from: u64, to: u64) -> RecordIter<'_> {
        Box::new(
            self.records
                .range(record_key(session, from)..=record_key(session, to))
                .map(|kv| {
                    let (key, value) = kv?;
                    Ok((key_seq(&key), value.to_vec()))
                }),
        )
    }

    fn missing(&self, session: SessionId, upto: u64) -> Result<Option<(u64, u64)>, StoreError> {
        // The keys alone: every open asks this of each session.
        let keys = self
            .records
            .range(record_key(session, 0)..=record_key(session, u64::MAX))
            .keys()
            .map(|key| Ok(key_seq(&key?)));
        first_gap(keys, upto)
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        let mut out = Vec::new();
        let mut from = 0u64;
        // Jump from session to session instead of reading every record.
        while let Some(kv) = self.records.range(from.to_be_bytes()..).next() {
            let (key, _) = kv?;
            let session = key_session(&key);
            out.push(session);
            match session.checked_add(1) {
                Some(next) => from = next,
                None => break,
            }
        }
        Ok(out)
    }

    fn put_blob(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        writable(self.read_only)?;
        if !self.blob_index.contains_key(hash)? {
            // The bytes first: a crash between the two leaves an unindexed
            // blob (wasted bytes), never an index entry without bytes.
            let number = self.db.generate_id()?.to_be_bytes();
            self.blob_data.insert(number, bytes)?;
            self.blob_index.insert(hash, &number)?;
        }
        Ok(())
    }

    fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.blob_index.contains_key(hash)?)
    }

    fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        match self.blob_index.get(hash)? {
            Some(number) => Ok(self.blob_data.get(number)?.map(|b| b.to_vec())),
            None => Ok(None),
        }
    }

    fn sync(&self) -> Result<Synced, StoreError> {
        if !self.read_only {
            self.db.flush()?;
        }
        Ok(Synced::default())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Open sled's storage as `config` says, waiting up to [`LOCK_WAIT`] for its
/// lock file, after setting aside an unfinished snapshot file.
///
/// Why wait: sled takes an exclusive lock on its file when opened, and a
/// dropped `sled::Db` gives it up only when sled's own background writers,
/// which hold the file too, have finished, a moment later. Reopening a
/// journal in the same process (a host restarting a session, a test, an
/// auditor after a writer) must not fail on that moment; another process
/// that really holds the journal still gets [`StoreError::Locked`].
#[doc(hidden)]
pub fn open_storage(config: sled::Config) -> Result<sled::Db, StoreError> {
    open_storage_waiting(config, LOCK_WAIT)
}

fn open_storage_waiting(config: sled::Config, wait: Duration) -> Result<sled::Db, StoreError> {
    set_aside_unfinished_snapshots(&config.path);
    let started = Instant::now();
    let mut rebuilt = false;
    loop {
        match config.open() {
            // A damaged log that ends before what sled's snapshot says it
            // held: sled refuses to open at all. The snapshot is only an
            // index of the log; set aside, sled rebuilds it from the log as
            // far as the log is whole, and what was lost past the damage is
            // then named by the acknowledged heads.
            Err(sled::Error::Corruption { .. })
                if !rebuilt && set_aside_snapshots(&config.path) =>
            {
                rebuilt = true;
            }
            Err(sled::Error::Io(e)) if is_lock_contention(&e) => {
                if started.elapsed() >= wait {
                    return Err(StoreError::Locked(config.path.clone()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// The prefix an unfinished snapshot file is renamed with: sled no longer
/// sees it, and a person can still look at it.
pub const SET_ASIDE_PREFIX: &str = "unfinished-";

/// Work around sled 0.34's snapshot reader (spacejam/sled#1527): it takes
/// the last `snap.*` file by name, and a process killed while writing a
/// snapshot leaves `snap.LSN.generating` behind (empty, or cut short),
/// which it then reads as corrupt, and every later open fails until a
/// person deletes the file. sled writes a snapshot under that name and
/// renames it when it is whole, so a `.generating` file is never a
/// finished snapshot: it is set aside, renamed with [`SET_ASIDE_PREFIX`],
/// with a warning, and sled rebuilds its snapshot from the log.
fn set_aside_unfinished_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("snap.") && name.ends_with(".generating")) {
            continue;
        }
        let aside = dir.join(format!("{SET_ASIDE_PREFIX}{name}"));
        match std::fs::rename(entry.path(), &aside) {
            Ok(()) => tracing::warn!(
                "journal {}: an unfinished snapshot file {name} (left by a process killed while writing it) was set aside as {}",
                dir.display(),
                aside.display()
            ),
            Err(e) => tracing::warn!(
                "journal {}: cannot set aside the unfinished snapshot file {name}: {e}",
                dir.display()
            ),
        }
    }
}

/// Set every finished snapshot file aside (see [`SET_ASIDE_PREFIX`]);
/// whether there was one.
fn set_aside_snapshots(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut any = false;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("snap.") {
            continue;
        }
        let aside = dir.join(format!("{SET_ASIDE_PREFIX}{name}"));
        match std::fs::rename(entry.path(), &aside) {
            Ok(()) => {
                any = true;
                tracing::warn!(
                    "journal {}: sled's snapshot {name} does not match its log (the log is damaged): set aside as {}; the index is rebuilt from the log",
                    dir.display(),
                    aside.display()
                );
            }
            Err(e) => tracing::warn!(
                "journal {}: cannot set aside the snapshot file {name}: {e}",
                dir.display()
            ),
        }
    }
    any
}

/// sled 0.34 reports a held lock only as an `Other` I/O error with this
/// message (its `Config::try_lock`).
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock")
}

fn record_key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&session.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn key_session(key: &[u8]) -> SessionId {
    key.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}

fn key_seq(key: &[u8]) -> u64 {
    key.get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(u64::MAX)
}
