//! The step journal: one append-only, hash-chained log per session, on sled.
//!
//! Each record carries its sequence number, a timestamp, the hash of the
//! record before it and its own BLAKE3 hash, so a changed, deleted or
//! reordered record is found by [`Journal::verify`], which names the first
//! bad one. Large payloads are content-addressed blobs, stored once and
//! referenced by hash from the record (the references are part of what the
//! record's hash covers, and each blob is checked against its hash).
//!
//! Blobs are stored under sequential numbers, with an index from hash to
//! number: sled's memory grows with the pages that random-key inserts of
//! large values touch (measured: about 2.7 KB per 4 KB blob keyed by hash,
//! nothing once keyed in order), and a host must run for days.
//!
//! Durability: [`SessionWriter::append`] puts a record in sled's memory;
//! [`SessionWriter::append_durable`] also waits until it is on disk. Durable
//! appends of all sessions share flushes: one background flusher writes
//! everything pending in one `flush`, and every append that was waiting for
//! it returns together (group commit).
//!
//! The record format (little-endian), which [`Journal::verify`] reads without
//! parsing any payload:
//!
//! ```text
//! version u8 | kind u8 | seq u64 | unix_millis u64 | prev_hash [32]
//! | blob_count u16 | blob_hash [32] * blob_count | payload_len u32 | payload
//! | hash [32] = BLAKE3(session_id u64 | everything before the hash)
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const FORMAT_VERSION: u8 = 1;
const HASH_LEN: usize = 32;

const FIXED_HEADER: usize = 1 + 1 + 8 + 8 + HASH_LEN + 2;

/// A session's identifier, unique within one journal.
pub type SessionId = u64;

/// A BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];

/// What a record is about. The payload's shape depends on the kind; the
/// journal stores it as opaque bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    SessionCreated = 1,
    ModelRequest = 2,
    ModelResponse = 3,
    ToolIntent = 4,
    ToolResult = 5,
    PolicyDecision = 6,
    BudgetEvent = 7,
    ApprovalAsked = 8,
    ApprovalGiven = 9,
    Compaction = 10,
    Error = 11,
    SessionEnded = 12,
    /// A person's message to the model, added while the session runs.
    UserMessage = 13,
    /// A person paused or resumed the session.
    Control = 14,
    /// A new session was forked from this one (`longrun replay fork`): the
    /// parent's side of the link (the child's first record holds the other).
    Forked = 15,
    /// The session went on under another policy than the one recorded
    /// before (a host resumed it with a changed policy file).
    PolicyChanged = 16,
}

impl RecordKind {
    pub const ALL: [RecordKind; 16] = [
        RecordKind::SessionCreated,
        RecordKind::ModelRequest,
        RecordKind::ModelResponse,
        RecordKind::ToolIntent,
        RecordKind::ToolResult,
        RecordKind::PolicyDecision,
        RecordKind::BudgetEvent,
        RecordKind::ApprovalAsked,
        RecordKind::ApprovalGiven,
        RecordKind::Compaction,
        RecordKind::Error,
        RecordKind::SessionEnded,
        RecordKind::UserMessage,
        RecordKind::Control,
        RecordKind::Forked,
        RecordKind::PolicyChanged,
    ];

    /// The kind's name in exports and APIs (`snake_case`), stable.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::SessionCreated => "session_created",
            RecordKind::ModelRequest => "model_request",
            RecordKind::ModelResponse => "model_response",
            RecordKind::ToolIntent => "tool_intent",
            RecordKind::ToolResult => "tool_result",
            RecordKind::PolicyDecision => "policy_decision",
            RecordKind::BudgetEvent => "budget_event",
            RecordKind::ApprovalAsked => "approval_asked",
            RecordKind::ApprovalGiven => "approval_given",
            RecordKind::Compaction => "compaction",
            RecordKind::Error => "error",
            RecordKind::SessionEnded => "session_ended",
            RecordKind::UserMessage => "user_message",
            RecordKind::Control => "control",
            RecordKind::Forked => "forked",
            RecordKind::PolicyChanged => "policy_changed",
        }
    }

    /// The kind [`RecordKind::as_str`] names.
    pub fn from_name(name: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    fn from_u8(v: u8) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| *k as u8 == v)
    }
}

/// One record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub session: SessionId,
    pub seq: u64,
    pub unix_millis: u64,
    pub kind: RecordKind,
    pub prev_hash: Hash,
    pub blobs: Vec<Hash>,
    pub payload: Vec<u8>,
    pub hash: Hash,
}

impl Record {
    /// The bytes this record takes in the journal (before storage overhead).
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER + self.blobs.len() * HASH_LEN + 4 + self.payload.len() + HASH_LEN
    }
}

/// Where a new record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: Hash,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(#[from] sled::Error),
    #[error(
        "the journal in {} is open elsewhere (another longrun process holds its lock)",
        .0.display()
    )]
    Locked(std::path::PathBuf),
    #[error("no session {0} in the journal")]
    NoSession(SessionId),
    #[error("session {0} already has a writer")]
    WriterTaken(SessionId),
    #[error("record {seq} of session {session} is unreadable: {why}")]
    Corrupt {
        session: SessionId,
        seq: u64,
        why: String,
    },
    #[error("the record references blob {} that is not stored", hex(.0))]
    MissingBlob(Hash),
    #[error("blob {} does not match its hash", hex(.0))]
    CorruptBlob(Hash),
    #[error("the journal's flusher has stopped")]
    FlusherGone,
}

/// Why verification failed: the first bad record and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session {session}: record {seq} is bad: {why}")]
pub struct VerifyError {
    pub session: SessionId,
    /// The sequence number at which the chain first breaks.
    pub seq: u64,
    pub why: String,
}

/// A journal: sled trees for records, blobs and session heads.
pub struct Journal {
    db: sled::Db,
    records: sled::Tree,
    /// Blob bytes by blob number (in the order they were first stored).
    blob_data: sled::Tree,
    /// Blob number by blob hash.
    blob_index: sled::Tree,
    writers: Mutex<HashSet<SessionId>>,
    /// Who waits for new records, by session (see [`Journal::watch`]).
    watchers: Mutex<HashMap<SessionId, tokio::sync::watch::Sender<u64>>>,
    flusher: Arc<Flusher>,
    flush_thread: Option<std::thread::JoinHandle<()>>,
}

/// How a journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// The page cache sled may keep in memory, in bytes.
    pub cache_bytes: u64,
}

impl JournalOptions {
    /// For a host that runs sessions: the journal is written far more than
    /// read (reads are resumes, which stream), so a small page cache keeps a
    /// host that runs for days at a flat memory (sled's default is 1 GiB;
    /// 32 MiB already grows the resident set by its size over a session's
    /// first hours).
    pub const HOST: JournalOptions = JournalOptions {
        cache_bytes: 8 << 20,
    };

    /// For reading a whole journal (verify, replay): a larger cache, since
    /// blobs are looked up in hash order.
    pub const AUDIT: JournalOptions = JournalOptions {
        cache_bytes: 256 << 20,
    };
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions::HOST
    }
}

/// How long opening waits for the storage's lock before it reports the
/// journal as open elsewhere.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Open sled's storage as `config` says, waiting up to [`LOCK_WAIT`] for its
/// lock file.
///
/// Why wait: sled takes an exclusive lock on its file when opened, and a
/// dropped `sled::Db` gives it up only when sled's own background writers,
/// which hold the file too, have finished, a moment later. Reopening a
/// journal in the same process (a host restarting a session, a test, an
/// auditor after a writer) must not fail on that moment; another process
/// that really holds the journal still gets [`JournalError::Locked`].
#[doc(hidden)]
pub fn open_storage(config: sled::Config) -> Result<sled::Db, JournalError> {
    set_aside_unfinished_snapshots(&config.path);
    let started = Instant::now();
    loop {
        match config.open() {
            Err(sled::Error::Io(e)) if is_lock_contention(&e) => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(JournalError::Locked(config.path.clone()));
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

/// sled 0.34 reports a held lock only as an `Other` I/O error with this
/// message (its `Config::try_lock`).
fn is_lock_contention(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().starts_with("could not acquire lock")
}

impl Journal {
    /// Open (or create) the journal in `dir`, for a host.
    pub fn open(dir: &Path) -> Result<Arc<Journal>, JournalError> {
        Journal::open_with(dir, JournalOptions::HOST)
    }

    /// Open (or create) the journal in `dir`.
    pub fn open_with(dir: &Path, options: JournalOptions) -> Result<Arc<Journal>, JournalError> {
        let db = open_storage(
            sled::Config::new()
                .path(dir)
                .cache_capacity(options.cache_bytes)
                // Durability comes from explicit flushes, never from a timer.
                .flush_every_ms(None),
        )?;
        let records = db.open_tree("records")?;
        let blob_data = db.open_tree("blob_data")?;
        let blob_index = db.open_tree("blob_index")?;
        let flusher = Flusher::new();
        let flush_thread = {
            let (flusher, db) = (flusher.clone(), db.clone());
            std::thread::Builder::new()
                .name("longrun-journal-flush".into())
                .spawn(move || flusher.run(&db))
                .map_err(sled::Error::Io)?
        };
        Ok(Arc::new(Journal {
            db,
            records,
            blob_data,
            blob_index,
            writers: Mutex::new(HashSet::new()),
            watchers: Mutex::new(HashMap::new()),
            flusher,
            flush_thread: Some(flush_thread),
        }))
    }

    /// A new session; its writer appends its first record.
    pub fn create_session(self: &Arc<Self>) -> Result<SessionWriter, JournalError> {
        let session = self.db.generate_id()?;
        self.writer(session, None)
    }

    /// The writer of an existing session, to go on appending (after a
    /// restart, say). Only one writer per session exists at a time.
    pub fn open_session(
        self: &Arc<Self>,
        session: SessionId,
    ) -> Result<SessionWriter, JournalError> {
        let last = self
            .records
            .scan_prefix(session.to_be_bytes())
            .next_back()
            .transpose()?
            .ok_or(JournalError::NoSession(session))?;
        let record = decode(session, &last.1).map_err(|why| JournalError::Corrupt {
            session,
            seq: key_seq(&last.0),
            why,
        })?;
        self.writer(session, Some((record.seq + 1, record.hash)))
    }

    fn writer(
        self: &Arc<Self>,
        session: SessionId,
        head: Option<(u64, Hash)>,
    ) -> Result<SessionWriter, JournalError> {
        let mut writers = self.writers.lock().map_err(|_| JournalError::FlusherGone)?;
        if !writers.insert(session) {
            return Err(JournalError::WriterTaken(session));
        }
        let (next_seq, prev_hash) = head.unwrap_or((0, genesis(session)));
        Ok(SessionWriter {
            journal: self.clone(),
            session,
            next_seq,
            prev_hash,
        })
    }

    /// A receiver that sees a change each time a record of `session` is
    /// appended (the value is the new record's sequence number). It is a
    /// wake-up, not a queue: a reader reads the records themselves from the
    /// journal after the last one it has, so none is missed or repeated.
    pub fn watch(&self, session: SessionId) -> tokio::sync::watch::Receiver<u64> {
        let Ok(mut watchers) = self.watchers.lock() else {
            // A poisoned map: a receiver that never changes; readers that
            // also poll still make progress.
            return tokio::sync::watch::channel(0).1;
        };
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers
            .entry(session)
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// The sessions in the journal, in creation order.
    pub fn sessions(&self) -> Result<Vec<SessionId>, JournalError> {
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

    /// Every record of a session, in order.
    pub fn records(
        &self,
        session: SessionId,
    ) -> impl Iterator<Item = Result<Record, JournalError>> + '_ {
        self.records_from(session, 0)
    }

    /// The records of a session from sequence number `from` on, in order.
    pub fn records_from(
        &self,
        session: SessionId,
        from: u64,
    ) -> impl Iterator<Item = Result<Record, JournalError>> + '_ {
        self.records
            .range(record_key(session, from)..=record_key(session, u64::MAX))
            .map(move |kv| {
                let (key, value) = kv?;
                decode(session, &value).map_err(|why| JournalError::Corrupt {
                    session,
                    seq: key_seq(&key),
                    why,
                })
            })
    }

    /// One record of a session, if it exists.
    pub fn record(&self, session: SessionId, seq: u64) -> Result<Option<Record>, JournalError> {
        let Some(value) = self.records.get(record_key(session, seq))? else {
            return Ok(None);
        };
        decode(session, &value)
            .map(Some)
            .map_err(|why| JournalError::Corrupt { session, seq, why })
    }

    /// A blob's bytes, checked against its hash.
    pub fn blob(&self, hash: &Hash) -> Result<Vec<u8>, JournalError> {
        let bytes = self
            .blob_bytes(hash)?
            .ok_or(JournalError::MissingBlob(*hash))?;
        if blake3::hash(&bytes).as_bytes() != hash {
            return Err(JournalError::CorruptBlob(*hash));
        }
        Ok(bytes.to_vec())
    }

    /// The size of a stored blob, if it is stored.
    pub fn blob_len(&self, hash: &Hash) -> Result<Option<u64>, JournalError> {
        Ok(self.blob_bytes(hash)?.map(|b| b.len() as u64))
    }

    /// A blob's stored bytes, unchecked.
    fn blob_bytes(&self, hash: &Hash) -> Result<Option<sled::IVec>, JournalError> {
        match self.blob_index.get(hash)? {
            Some(number) => Ok(self.blob_data.get(number)?),
            None => Ok(None),
        }
    }

    /// Store a blob once, by its hash; returns the hash.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Hash, JournalError> {
        let hash = *blake3::hash(bytes).as_bytes();
        if !self.blob_index.contains_key(hash)? {
            // The bytes first: a crash between the two leaves an unindexed
            // blob (wasted bytes), never an index entry without bytes.
            let number = self.db.generate_id()?.to_be_bytes();
            self.blob_data.insert(number, bytes)?;
            self.blob_index.insert(hash, &number)?;
        }
        Ok(hash)
    }

    /// Wait until everything appended so far is on disk (a group commit).
    pub async fn sync(&self) -> Result<(), JournalError> {
        self.flusher.wait(self.flusher.request()?).await
    }

    /// Check a session's hash chain and blobs. Returns the number of
    /// records verified, or the first bad record.
    pub fn verify(&self, session: SessionId) -> Result<u64, VerifyError> {
        self.verify_with(session, |_| Ok(()))
    }

    /// [`Journal::verify`], and also `check` on each record whose hash,
    /// place in the chain and blobs hold, in order: the first error it
    /// returns fails verification at that record. (The record is handed
    /// over, so a check may go on with it on another thread.)
    pub fn verify_with(
        &self,
        session: SessionId,
        mut check: impl FnMut(Record) -> Result<(), String>,
    ) -> Result<u64, VerifyError> {
        let bad = |seq: u64, why: String| VerifyError { session, seq, why };
        let mut expected_seq = 0u64;
        let mut prev = genesis(session);
        let mut checked_blobs: HashSet<Hash> = HashSet::new();
        for kv in self.records.scan_prefix(session.to_be_bytes()) {
            let (key, value) = kv.map_err(|e| bad(expected_seq, format!("unreadable: {e}")))?;
            let key_seq = key_seq(&key);
            if key_seq != expected_seq {
                return Err(bad(
                    expected_seq,
                    format!("missing: the next record stored is {key_seq}"),
                ));
            }
            let mut record = decode_unchecked(&value).map_err(|why| bad(expected_seq, why))?;
            record.session = session;
            if record.seq != expected_seq {
                return Err(bad(
                    expected_seq,
                    format!("out of place: it says it is record {}", record.seq),
                ));
            }
            let body = &value[..value.len() - HASH_LEN];
            if hash_record(session, body) != record.hash {
                return Err(bad(
                    expected_seq,
                    "its contents do not match its hash".into(),
                ));
            }
            if record.prev_hash != prev {
                return Err(bad(
                    expected_seq,
                    "its previous-hash does not match the record before it".into(),
                ));
            }
            for blob in &record.blobs {
                if checked_blobs.insert(*blob) {
                    match self.blob_bytes(blob) {
                        Ok(Some(bytes)) if blake3::hash(&bytes).as_bytes() == blob => {}
                        Ok(Some(_)) => {
                            return Err(bad(
                                expected_seq,
                                format!("blob {} does not match its hash", hex(blob)),
                            ));
                        }
                        Ok(None) => {
                            return Err(bad(
                                expected_seq,
                                format!("blob {} is missing", hex(blob)),
                            ));
                        }
                        Err(e) => {
                            return Err(bad(
                                expected_seq,
                                format!("blob {} unreadable: {e}", hex(blob)),
                            ));
                        }
                    }
                }
            }
            prev = record.hash;
            check(record).map_err(|why| bad(expected_seq, why))?;
            expected_seq += 1;
        }
        Ok(expected_seq)
    }

    /// Flush now, on this thread, without grouping with anyone (the
    /// baseline that group commit is measured against).
    pub fn flush_now(&self) -> Result<(), JournalError> {
        self.db.flush()?;
        Ok(())
    }

    /// How many group-commit flushes have run since the journal was opened.
    pub fn flush_count(&self) -> u64 {
        self.flusher
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the journal takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The one writer of a session.
pub struct SessionWriter {
    journal: Arc<Journal>,
    session: SessionId,
    next_seq: u64,
    prev_hash: Hash,
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        if let Ok(mut w) = self.journal.writers.lock() {
            w.remove(&self.session);
        }
    }
}

impl SessionWriter {
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Append a record (in memory; see [`Self::append_durable`]). Every blob
    /// it references must already be stored with [`Journal::put_blob`].
    pub fn append(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        for blob in blobs {
            if !self.journal.blob_index.contains_key(blob)? {
                return Err(JournalError::MissingBlob(*blob));
            }
        }
        let unix_millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seq = self.next_seq;
        let mut bytes = Vec::with_capacity(
            FIXED_HEADER + blobs.len() * HASH_LEN + 4 + payload.len() + HASH_LEN,
        );
        bytes.push(FORMAT_VERSION);
        bytes.push(kind as u8);
        bytes.extend_from_slice(&seq.to_le_bytes());
        bytes.extend_from_slice(&unix_millis.to_le_bytes());
        bytes.extend_from_slice(&self.prev_hash);
        let blob_count = u16::try_from(blobs.len()).map_err(|_| JournalError::Corrupt {
            session: self.session,
            seq,
            why: "more than 65535 blobs in one record".into(),
        })?;
        bytes.extend_from_slice(&blob_count.to_le_bytes());
        for blob in blobs {
            bytes.extend_from_slice(blob);
        }
        let payload_len = u32::try_from(payload.len()).map_err(|_| JournalError::Corrupt {
            session: self.session,
            seq,
            why: "payload over 4 GiB: store it as a blob".into(),
        })?;
        bytes.extend_from_slice(&payload_len.to_le_bytes());
        bytes.extend_from_slice(payload);
        let hash = hash_record(self.session, &bytes);
        bytes.extend_from_slice(&hash);
        self.journal
            .records
            .insert(record_key(self.session, seq), bytes)?;
        self.next_seq += 1;
        self.prev_hash = hash;
        if let Ok(watchers) = self.journal.watchers.lock()
            && let Some(tx) = watchers.get(&self.session)
        {
            tx.send_replace(seq);
        }
        Ok(Appended { seq, hash })
    }

    /// Append a record and wait until it is on disk. Concurrent durable
    /// appends of all sessions share flushes.
    pub async fn append_durable(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        let appended = self.append(kind, payload, blobs)?;
        self.journal.sync().await?;
        Ok(appended)
    }
}

fn genesis(session: SessionId) -> Hash {
    *blake3::hash(
        &[
            b"longrun-journal-genesis".as_slice(),
            &session.to_le_bytes(),
        ]
        .concat(),
    )
    .as_bytes()
}

fn hash_record(session: SessionId, body: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&session.to_le_bytes());
    h.update(body);
    *h.finalize().as_bytes()
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

/// A hash as lowercase hex, as records and exports write it.
pub fn hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// The hash that [`hex`] wrote, if `text` is one.
pub fn parse_hex(text: &str) -> Option<Hash> {
    blake3::Hash::from_hex(text).ok().map(|h| *h.as_bytes())
}

/// Decode and check a record's own hash.
fn decode(session: SessionId, bytes: &[u8]) -> Result<Record, String> {
    let mut record = decode_unchecked(bytes)?;
    record.session = session;
    if hash_record(session, &bytes[..bytes.len() - HASH_LEN]) != record.hash {
        return Err("its contents do not match its hash".into());
    }
    Ok(record)
}

/// Decode a record's fields without checking its hash.
fn decode_unchecked(bytes: &[u8]) -> Result<Record, String> {
    let short = || format!("truncated ({} bytes)", bytes.len());
    if bytes.len() < FIXED_HEADER + 4 + HASH_LEN {
        return Err(short());
    }
    if bytes[0] != FORMAT_VERSION {
        return Err(format!("unknown format version {}", bytes[0]));
    }
    let kind =
        RecordKind::from_u8(bytes[1]).ok_or_else(|| format!("unknown record kind {}", bytes[1]))?;
    let u64_at = |at: usize| -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let seq = u64_at(2);
    let unix_millis = u64_at(10);
    let mut prev_hash = [0u8; HASH_LEN];
    prev_hash.copy_from_slice(&bytes[18..18 + HASH_LEN]);
    let blob_count = u16::from_le_bytes([bytes[50], bytes[51]]) as usize;
    let mut at = FIXED_HEADER;
    let blobs_end = at + blob_count * HASH_LEN;
    if bytes.len() < blobs_end + 4 + HASH_LEN {
        return Err(short());
    }
    let blobs = bytes[at..blobs_end]
        .chunks_exact(HASH_LEN)
        .map(|c| {
            let mut h = [0u8; HASH_LEN];
            h.copy_from_slice(c);
            h
        })
        .collect();
    at = blobs_end;
    let payload_len =
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
    at += 4;
    if bytes.len() != at + payload_len + HASH_LEN {
        return Err(format!(
            "its length {} does not match its payload length {payload_len}",
            bytes.len()
        ));
    }
    let payload = bytes[at..at + payload_len].to_vec();
    let mut hash = [0u8; HASH_LEN];
    hash.copy_from_slice(&bytes[at + payload_len..]);
    Ok(Record {
        session: 0,
        seq,
        unix_millis,
        kind,
        prev_hash,
        blobs,
        payload,
        hash,
    })
}

/// The group-commit flusher: a thread that flushes sled whenever someone is
/// waiting, covering every append made before the flush began.
struct Flusher {
    flushes: std::sync::atomic::AtomicU64,
    state: Mutex<FlushState>,
    wake: Condvar,
    done: tokio::sync::watch::Sender<u64>,
}

struct FlushState {
    requested: u64,
    stop: bool,
    failed: Option<String>,
}

impl Flusher {
    fn new() -> Arc<Flusher> {
        let (done, _) = tokio::sync::watch::channel(0u64);
        Arc::new(Flusher {
            flushes: std::sync::atomic::AtomicU64::new(0),
            state: Mutex::new(FlushState {
                requested: 0,
                stop: false,
                failed: None,
            }),
            wake: Condvar::new(),
            done,
        })
    }

    /// The flusher thread: sleeps until someone waits, flushes once for all
    /// of them, and tells them.
    fn run(&self, db: &sled::Db) {
        let mut completed = 0u64;
        loop {
            let target = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                while state.requested == completed && !state.stop {
                    match self.wake.wait(state) {
                        Ok(s) => state = s,
                        Err(_) => return,
                    }
                }
                if state.stop && state.requested == completed {
                    return;
                }
                state.requested
            };
            if let Err(e) = db.flush()
                && let Ok(mut state) = self.state.lock()
            {
                state.failed = Some(e.to_string());
            }
            self.flushes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            completed = target;
            self.done.send_replace(completed);
        }
    }

    /// A ticket: the flush that covers everything appended before now.
    fn request(&self) -> Result<u64, JournalError> {
        let mut state = self.state.lock().map_err(|_| JournalError::FlusherGone)?;
        state.requested += 1;
        self.wake.notify_one();
        Ok(state.requested)
    }

    async fn wait(&self, ticket: u64) -> Result<(), JournalError> {
        let mut rx = self.done.subscribe();
        rx.wait_for(|done| *done >= ticket)
            .await
            .map_err(|_| JournalError::FlusherGone)?;
        match self.state.lock() {
            Ok(state) => match &state.failed {
                Some(e) => Err(JournalError::Storage(sled::Error::ReportableBug(e.clone()))),
                None => Ok(()),
            },
            Err(_) => Err(JournalError::FlusherGone),
        }
    }
}

impl Drop for Journal {
    /// Flushes what is pending and stops the flusher, so the journal can be
    /// opened again as soon as this returns.
    fn drop(&mut self) {
        if let Ok(mut state) = self.flusher.state.lock() {
            state.stop = true;
        }
        self.flusher.wake.notify_all();
        if let Some(thread) = self.flush_thread.take() {
            let _ = thread.join();
        }
        let _ = self.db.flush();
    }
}
