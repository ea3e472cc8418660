//! The journal: hash-chained sessions on a [`Store`], with group commit,
//! acknowledged heads, loss detection and durable-only readers.
//!
//! Durability: [`SessionWriter::append`] writes a record to the store;
//! [`SessionWriter::append_durable`] also waits until it is durable.
//! Durable appends of all sessions share syncs: one background committer
//! syncs the store once for everything pending, writes each advanced
//! session's acknowledged head ([`crate::heads`]), and every append that
//! was waiting returns together (group commit).
//!
//! Readers see only what is durable: [`Journal::records`],
//! [`Journal::record`] and [`Journal::watch`] stop at a session's durable
//! head while this process writes it, so nothing a crash could still take
//! back is ever shown to a client, a model or a tool.
//!
//! Loss is named: on open, a session whose stored records end before its
//! acknowledged head has lost records ([`Loss`]); it is listed, its writer
//! is refused (a person decides: [`Journal::accept_loss`]) and
//! [`Journal::verify`] fails naming the missing records.
//!
//! Failure is quick and sticky: once a write or sync fails (a full disk),
//! every later append and durable wait fails with the same error, and
//! dropping the journal waits at most [`CLOSE_DEADLINE`] for the last sync
//! before giving up on it, so a host can report the error and exit.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::heads::{Head, HeadsFile};
use crate::payload::{Payload, SteeringRequest};
use crate::record::{
    self, Appended, EncodeError, Hash, Record, RecordKind, SessionId, decode, decode_unchecked,
    genesis, hash_bytes, hash_matches, hex,
};
use crate::store::memory::MemoryStore;
use crate::store::postgres::PostgresStore;
use crate::store::segments::{SegmentStore, is_segment_store};
use crate::store::sled::{SledStore, is_sled_store};
use crate::store::{Acquired, Fenced, Lease, RecordIter, Store, StoreError};

/// Who takes the leases of the sessions a journal creates and takes over,
/// and for how long at a time: one host of several that share a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lessee {
    /// The host's name, unique among the hosts.
    pub owner: String,
    /// How long a lease lasts unless renewed.
    pub ttl: Duration,
}

/// A lease this journal holds, and when it was last taken or renewed by
/// this process's clock (a lease it could not renew for `ttl` is given up).
struct HeldLease {
    lease: Lease,
    renewed: std::time::Instant,
}

/// How long dropping a journal waits for its last sync before it gives up
/// on it (and on the store's own flush on drop) with an error in the log.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal storage: {0}")]
    Storage(StoreError),
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
    #[error("cannot encode a record: {0}")]
    Encode(#[from] EncodeError),
    /// Acknowledged records are gone: the session is not written again
    /// until a person accepts the loss.
    #[error("{0}; the session is not resumed automatically (see `longrun replay verify`)")]
    Lost(Loss),
    /// A write or sync failed earlier; the journal takes no more records.
    #[error("the journal stopped taking records after a write failed: {0}")]
    Failed(String),
    /// Another host took this session's lease over: this host's records
    /// for it were refused and it must stop running it.
    #[error("{0}")]
    Fenced(Fenced),
    #[error("the journal's committer has stopped")]
    CommitterGone,
    #[error("the acknowledged-heads file: {0}")]
    Heads(std::io::Error),
}

impl From<StoreError> for JournalError {
    fn from(e: StoreError) -> JournalError {
        match e {
            StoreError::Locked(path) => JournalError::Locked(path),
            other => JournalError::Storage(other),
        }
    }
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

/// Records that were acknowledged as durable and are not in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub session: SessionId,
    /// The last record acknowledged.
    pub acknowledged: u64,
    /// The first record that is not as acknowledged: missing, or (when it is
    /// the acknowledged head itself) stored with other contents.
    pub first_missing: u64,
    /// The last of the run of missing records that starts at
    /// `first_missing`: the acknowledged head when the store lost its tail,
    /// less when records after a damaged stretch survived.
    pub last_missing: u64,
    /// Whether the store holds a different record at the acknowledged head
    /// (rather than ending before it).
    pub changed: bool,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Loss {
            session,
            acknowledged,
            first_missing,
            last_missing,
            changed,
        } = self;
        if *changed {
            write!(
                f,
                "record {acknowledged} of session {session} is not the one acknowledged as durable"
            )
        } else if first_missing == last_missing {
            write!(f, "record {first_missing} of session {session} is missing")
        } else {
            write!(
                f,
                "records {first_missing}..{last_missing} of session {session} are missing"
            )
        }
    }
}

/// How a journal is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    /// The page cache the store may keep in memory, in bytes.
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

/// Where a journal lives, as a configuration string names it: a directory
/// (a plain path: the store already there, or a new segment store;
/// `segments:DIR`; `sled:DIR`), a PostgreSQL database
/// (`postgres://user@host:port/db`) or `memory:` (nothing kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The journal in this directory, whichever store it is; a new one is a
    /// segment store.
    Dir(std::path::PathBuf),
    Segments(std::path::PathBuf),
    Sled(std::path::PathBuf),
    /// The connection address, as given (it may hold a password: show a
    /// location with [`std::fmt::Display`], which leaves it out).
    Postgres(String),
    Memory,
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Location, String> {
        match text.split_once(':') {
            Some(("postgres" | "postgresql", rest)) if rest.starts_with("//") => {
                Ok(Location::Postgres(text.into()))
            }
            Some(("memory", "")) => Ok(Location::Memory),
            Some(("sled", dir)) if !dir.is_empty() => Ok(Location::Sled(dir.into())),
            Some(("segments", dir)) if !dir.is_empty() => Ok(Location::Segments(dir.into())),
            Some((scheme, _)) if scheme.len() > 1 && !scheme.contains('/') => Err(format!(
                "unknown journal store {scheme:?}: use a directory, segments:DIR, sled:DIR, postgres://... or memory:"
            )),
            _ if text.is_empty() => Err("an empty journal location".into()),
            _ => Ok(Location::Dir(text.into())),
        }
    }
}

/// Where the journal is, for messages: a database address without its
/// password.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Dir(dir) => write!(f, "{}", dir.display()),
            Location::Segments(dir) => write!(f, "segments:{}", dir.display()),
            Location::Sled(dir) => write!(f, "sled:{}", dir.display()),
            Location::Postgres(url) => f.write_str(&without_password(url)),
            Location::Memory => f.write_str("memory:"),
        }
    }
}

/// `scheme://user:secret@host/db` as `scheme://user:***@host/db`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _secret)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.into(),
        },
        None => url.into(),
    }
}

/// How many blobs verification checks in one store call.
const BLOBS_PER_CHECK: usize = 512;

/// A journal: sessions of hash-chained records on a store.
pub struct Journal {
    shared: Arc<Shared>,
    /// Set once a host shares the store with others.
    lessee: std::sync::OnceLock<Lessee>,
    writers: Mutex<HashSet<SessionId>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Says when the committer thread has finished (see `Drop`).
    committer_done: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// What the journal's users and its committer thread share.
struct Shared {
    store: Arc<dyn Store>,
    heads: Option<Mutex<HeadsFile>>,
    state: Mutex<State>,
    /// Serializes commits (the committer's and [`Journal::flush_now`]'s).
    commit: Mutex<()>,
    wake: Condvar,
    /// The ticket of the last commit that finished.
    done: tokio::sync::watch::Sender<u64>,
    watchers: Mutex<HashMap<SessionId, tokio::sync::watch::Sender<u64>>>,
    commits: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    /// Heads appended since the last commit began.
    pending: HashMap<SessionId, Head>,
    /// For sessions written by this process: how many records readers may
    /// see (the durable head + 1); for a read-only journal, the
    /// acknowledged head when it was opened + 1.
    visible: HashMap<SessionId, u64>,
    /// Sessions that lost acknowledged records.
    losses: HashMap<SessionId, Loss>,
    /// Sessions whose lease another host took: their writers are refused.
    fenced: HashMap<SessionId, Fenced>,
    /// The leases this journal holds (only with a [`Lessee`]).
    leases: HashMap<SessionId, HeldLease>,
    requested: u64,
    stop: bool,
    failed: Option<String>,
}

impl Shared {
    fn state(&self) -> Result<MutexGuard<'_, State>, JournalError> {
        self.state.lock().map_err(|_| JournalError::CommitterGone)
    }

    fn failed(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.failed.clone())
    }

    fn fail(&self, why: String) -> JournalError {
        tracing::error!("journal: {why}");
        if let Ok(mut state) = self.state.lock()
            && state.failed.is_none()
        {
            state.failed = Some(why.clone());
        }
        JournalError::Failed(why)
    }

    /// Make everything appended so far durable, record the new heads, and
    /// let readers see them.
    fn commit(&self) -> Result<(), JournalError> {
        let _one_at_a_time = self
            .commit
            .lock()
            .map_err(|_| JournalError::CommitterGone)?;
        let pending = {
            let mut state = self.state()?;
            if let Some(why) = &state.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            std::mem::take(&mut state.pending)
        };
        let synced = match self.store.sync() {
            Ok(synced) => synced,
            Err(e) => return Err(self.fail(format!("syncing the store: {e}"))),
        };
        // A fenced session's records were refused: nothing of it becomes
        // visible or acknowledged, and its writer takes no more (the host
        // that took it over writes it now).
        let mut pending = pending;
        if !synced.fenced.is_empty() {
            let mut state = self.state()?;
            for fenced in synced.fenced {
                tracing::error!("journal: {fenced}");
                pending.remove(&fenced.session);
                state.leases.remove(&fenced.session);
                state.fenced.insert(fenced.session, fenced);
            }
        }
        {
            // A fenced session's writer takes nothing more, so once a commit
            // is over, everything it appended is durable or refused: its
            // readers now read the store as it is, where the host that took
            // it over writes.
            let mut state = self.state()?;
            let state = &mut *state;
            for session in state.fenced.keys() {
                if !state.pending.contains_key(session) {
                    state.visible.remove(session);
                }
            }
        }
        let heads: Vec<(SessionId, Head)> = pending.into_iter().collect();
        if let Some(file) = &self.heads {
            let mut file = file.lock().map_err(|_| JournalError::CommitterGone)?;
            if let Err(e) = file.record(&heads) {
                return Err(self.fail(format!("writing the acknowledged heads: {e}")));
            }
        }
        self.commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut state = self.state()?;
            for (session, head) in &heads {
                let visible = state.visible.entry(*session).or_insert(0);
                *visible = (*visible).max(head.seq + 1);
            }
        }
        if let Ok(watchers) = self.watchers.lock() {
            for (session, head) in &heads {
                if let Some(tx) = watchers.get(session) {
                    tx.send_replace(head.seq);
                }
            }
        }
        Ok(())
    }

    /// The committer thread: sleeps until someone waits, commits once for
    /// all of them, and tells them; on stop, commits what is left.
    fn run_committer(&self) {
        let mut completed = 0u64;
        loop {
            let (target, stopping) = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                while state.requested == completed && !state.stop {
                    match self.wake.wait(state) {
                        Ok(s) => state = s,
                        Err(_) => return,
                    }
                }
                (state.requested, state.stop && state.requested == completed)
            };
            // An error is kept in the state (sticky): waiters read it there.
            let _ = self.commit();
            completed = target;
            self.done.send_replace(completed);
            if stopping {
                return;
            }
        }
    }

    /// Commit on the caller's thread when nobody else is committing or
    /// waiting for a commit: then the caller's group is itself, and handing
    /// the commit to the committer thread would only add two thread
    /// wake-ups to its wait. Only on a multi-threaded runtime, whose other
    /// tasks move to another worker meanwhile (`block_in_place`); `None`
    /// when the caller should join the committer's next group instead.
    fn commit_alone(&self) -> Option<Result<(), JournalError>> {
        let multi_threaded = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if !multi_threaded {
            return None;
        }
        let idle = {
            let state = self.state.lock().ok()?;
            state.failed.is_none() && state.requested == *self.done.borrow()
        };
        if !idle || self.commit.try_lock().is_err() {
            return None;
        }
        Some(tokio::task::block_in_place(|| self.commit()))
    }

    /// Wake the watchers of a session another process committed records
    /// of (`None`: of every session, as commits may have been missed).
    fn announce(&self, commit: Option<(SessionId, u64)>) {
        let Ok(watchers) = self.watchers.lock() else {
            return;
        };
        match commit {
            Some((session, seq)) => {
                if let Some(tx) = watchers.get(&session) {
                    tx.send_if_modified(|last| {
                        let newer = seq > *last;
                        if newer {
                            *last = seq;
                        }
                        newer
                    });
                }
            }
            None => watchers.values().for_each(|tx| tx.send_modify(|_| {})),
        }
    }

    /// Why `session`'s writer is refused, if another host took it over.
    fn fenced(&self, session: SessionId) -> Option<Fenced> {
        self.state.lock().ok()?.fenced.get(&session).cloned()
    }

    /// How many of `session`'s records readers may see, if this process
    /// writes it (otherwise everything stored is as durable as it gets).
    fn visible(&self, session: SessionId) -> Option<u64> {
        self.state.lock().ok()?.visible.get(&session).copied()
    }
}

impl Journal {
    /// Open (or create) the journal in `dir`, for a host: the store found
    /// there, or a new segment store.
    pub fn open(dir: &Path) -> Result<Arc<Journal>, JournalError> {
        Journal::open_with(dir, JournalOptions::HOST)
    }

    /// Open (or create) the journal in `dir`: the store found there, or a
    /// new segment store.
    pub fn open_with(dir: &Path, options: JournalOptions) -> Result<Arc<Journal>, JournalError> {
        Journal::open_location(&Location::Dir(dir.to_owned()), options)
    }

    /// Open the existing journal in `dir` to read it, in place: nothing is
    /// written to it. A segment store is read beside a host that writes it;
    /// a sled journal that a running host holds is
    /// [`JournalError::Locked`] (see [`SledStore::open_read_only`]).
    pub fn open_read_only(
        dir: &Path,
        options: JournalOptions,
    ) -> Result<Arc<Journal>, JournalError> {
        // The heads before the store: a host writing meanwhile syncs its
        // store before its heads, so the store read after them is never
        // behind them (which would read as lost records).
        let heads = HeadsFile::open_read_only(dir).map_err(JournalError::Heads)?;
        let store: Arc<dyn Store> = if is_sled_store(dir) {
            Arc::new(SledStore::open_read_only(dir, options.cache_bytes)?)
        } else {
            Arc::new(SegmentStore::open_read_only(dir)?)
        };
        Journal::on_store(store, heads)
    }

    /// Open (or create) the journal a [`Location`] names.
    pub fn open_location(
        location: &Location,
        options: JournalOptions,
    ) -> Result<Arc<Journal>, JournalError> {
        let (dir, store): (&Path, Arc<dyn Store>) = match location {
            Location::Memory => return Journal::in_memory(),
            // The database is its own authority on what it acknowledged:
            // there is no heads file beside it.
            Location::Postgres(url) => {
                return Journal::on_store(Arc::new(PostgresStore::open(url)?), None);
            }
            Location::Dir(dir) if is_sled_store(dir) => {
                (dir, Arc::new(SledStore::open(dir, options.cache_bytes)?))
            }
            Location::Sled(dir) if is_segment_store(dir) => {
                return Err(JournalError::Storage(StoreError::Io(format!(
                    "{} holds a segment journal, not a sled one",
                    dir.display()
                ))));
            }
            Location::Sled(dir) => (dir, Arc::new(SledStore::open(dir, options.cache_bytes)?)),
            Location::Segments(dir) if is_sled_store(dir) => {
                return Err(JournalError::Storage(StoreError::Io(format!(
                    "{} holds a sled journal, not a segment one",
                    dir.display()
                ))));
            }
            Location::Dir(dir) | Location::Segments(dir) => {
                (dir, Arc::new(SegmentStore::open(dir)?))
            }
        };
        let heads = HeadsFile::open(dir).map_err(JournalError::Heads)?;
        Journal::on_store(store, Some(heads))
    }

    /// Open the existing journal a [`Location`] names to read it, in
    /// place (see [`Journal::open_read_only`]).
    pub fn open_location_read_only(
        location: &Location,
        options: JournalOptions,
    ) -> Result<Arc<Journal>, JournalError> {
        match location {
            Location::Postgres(url) => {
                Journal::on_store(Arc::new(PostgresStore::open_read_only(url)?), None)
            }
            Location::Memory => Err(JournalError::Storage(StoreError::Io(
                "a journal in memory has nothing to read".into(),
            ))),
            Location::Dir(dir) | Location::Segments(dir) | Location::Sled(dir) => {
                Journal::open_read_only(dir, options)
            }
        }
    }

    /// A journal in memory (nothing survives the process).
    pub fn in_memory() -> Result<Arc<Journal>, JournalError> {
        Journal::on_store(Arc::new(MemoryStore::new()), None)
    }

    /// A journal on `store`, with its acknowledged heads kept in `heads`
    /// (none for a store that cannot outlive the process).
    pub fn on_store(
        store: Arc<dyn Store>,
        heads: Option<HeadsFile>,
    ) -> Result<Arc<Journal>, JournalError> {
        let mut losses = HashMap::new();
        if let Some(heads) = &heads {
            for (session, head) in heads.heads() {
                if let Some(loss) = find_loss(store.as_ref(), session, head)? {
                    tracing::error!("journal: {loss}");
                    losses.insert(session, loss);
                }
            }
        }
        // A reader beside a live writer sees what was acknowledged when it
        // opened, never records the writer could still lose.
        let visible = match (&heads, store.read_only()) {
            (Some(heads), true) => heads
                .heads()
                .map(|(session, head)| (session, head.seq + 1))
                .collect(),
            _ => HashMap::new(),
        };
        let (done, _) = tokio::sync::watch::channel(0u64);
        let shared = Arc::new(Shared {
            store,
            heads: heads.map(Mutex::new),
            state: Mutex::new(State {
                losses,
                visible,
                ..State::default()
            }),
            commit: Mutex::new(()),
            wake: Condvar::new(),
            done,
            watchers: Mutex::new(HashMap::new()),
            commits: std::sync::atomic::AtomicU64::new(0),
        });
        let (finished, committer_done) = std::sync::mpsc::channel();
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("longrun-journal-commit".into())
                .spawn(move || {
                    shared.run_committer();
                    let _ = finished.send(());
                })
                .map_err(|e| StoreError::Io(format!("starting the committer: {e}")))?
        };
        // Other hosts' commits wake this journal's watchers.
        let listening = Arc::downgrade(&shared);
        shared.store.listen(Box::new(move |commit| {
            if let Some(shared) = listening.upgrade() {
                shared.announce(commit);
            }
        }))?;
        Ok(Arc::new(Journal {
            shared,
            lessee: std::sync::OnceLock::new(),
            writers: Mutex::new(HashSet::new()),
            committer: Mutex::new(Some(committer)),
            committer_done: Mutex::new(Some(committer_done)),
        }))
    }

    fn store(&self) -> &dyn Store {
        self.shared.store.as_ref()
    }

    /// A new session; its writer appends its first record.
    pub fn create_session(self: &Arc<Self>) -> Result<SessionWriter, JournalError> {
        let session = self.reserve_session_id()?;
        self.create_reserved_session(session)
    }

    /// A new session's id, for a session whose first record is written
    /// later (a child, named in its parent's records before it exists).
    pub fn reserve_session_id(&self) -> Result<SessionId, JournalError> {
        Ok(self.store().new_session_id()?)
    }

    /// The writer of session `session`, reserved and still without records
    /// (refused once it has one: a second writer would start it twice).
    pub fn create_reserved_session(
        self: &Arc<Self>,
        session: SessionId,
    ) -> Result<SessionWriter, JournalError> {
        if self.store().last(session)?.is_some() {
            return Err(JournalError::Storage(StoreError::Conflict {
                session,
                seq: 0,
                why: "the session was started already",
            }));
        }
        // Leased before its first record exists, so that no other host can
        // find it unleased and take it.
        if self.lessee.get().is_some() {
            match self.take_over(session)? {
                Acquired::Taken(_) => {}
                Acquired::HeldBy(lease) => {
                    return Err(JournalError::Fenced(Fenced {
                        session,
                        held: 0,
                        current: lease.epoch,
                        owner: lease.owner,
                    }));
                }
            }
        }
        self.writer(session, None)
    }

    /// The writer of an existing session, to go on appending (after a
    /// restart, say). Only one writer per session exists at a time, and none
    /// for a session that lost acknowledged records.
    pub fn open_session(
        self: &Arc<Self>,
        session: SessionId,
    ) -> Result<SessionWriter, JournalError> {
        if let Some(loss) = self.loss(session) {
            return Err(JournalError::Lost(loss));
        }
        let record = self.last_stored(session)?;
        self.writer(session, Some((record.seq + 1, record.hash)))
    }

    /// Take `session`'s one writer slot (given back by the writer's drop,
    /// or by an import when it ends). No writer at all on a read-only
    /// journal, rather than one whose every append fails.
    fn claim_writer(&self, session: SessionId) -> Result<(), JournalError> {
        if self.store().read_only() {
            return Err(JournalError::Storage(StoreError::ReadOnly));
        }
        let mut writers = self
            .writers
            .lock()
            .map_err(|_| JournalError::CommitterGone)?;
        if !writers.insert(session) {
            return Err(JournalError::WriterTaken(session));
        }
        Ok(())
    }

    fn writer(
        self: &Arc<Self>,
        session: SessionId,
        head: Option<(u64, Hash)>,
    ) -> Result<SessionWriter, JournalError> {
        self.claim_writer(session)?;
        let (next_seq, prev_hash) = head.unwrap_or((0, genesis(session)));
        self.shared
            .state()?
            .visible
            .entry(session)
            .or_insert(next_seq);
        Ok(SessionWriter {
            journal: self.clone(),
            session,
            next_seq,
            prev_hash,
        })
    }

    /// A receiver that sees a change each time records of `session` become
    /// durable (the value is the last durable record's sequence number). It
    /// is a wake-up, not a queue: a reader reads the records themselves
    /// after the last one it has, so none is missed or repeated.
    pub fn watch(&self, session: SessionId) -> tokio::sync::watch::Receiver<u64> {
        let Ok(mut watchers) = self.shared.watchers.lock() else {
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

    /// The sessions in the journal, in creation order, with any session
    /// whose records were all lost.
    pub fn sessions(&self) -> Result<Vec<SessionId>, JournalError> {
        let mut sessions = self.store().sessions()?;
        let lost: Vec<SessionId> = self.shared.state()?.losses.keys().copied().collect();
        for session in lost {
            if !sessions.contains(&session) {
                sessions.push(session);
            }
        }
        sessions.sort_unstable();
        Ok(sessions)
    }

    /// Acknowledged records of `session` that are not in the store, if any
    /// (found when the journal was opened).
    pub fn loss(&self, session: SessionId) -> Option<Loss> {
        self.shared.state().ok()?.losses.get(&session).cloned()
    }

    /// Every session's loss (see [`Journal::loss`]).
    pub fn losses(&self) -> Vec<Loss> {
        let mut losses: Vec<Loss> = match self.shared.state() {
            Ok(state) => state.losses.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        losses.sort_by_key(|l| l.session);
        losses
    }

    /// A person's decision to go on with `session` as stored, accepting the
    /// loss of the records after its last stored one: the acknowledged head
    /// becomes that record, durably.
    pub fn accept_loss(&self, session: SessionId) -> Result<(), JournalError> {
        let Some(file) = &self.shared.heads else {
            return Ok(());
        };
        let record = self.last_stored(session)?;
        file.lock()
            .map_err(|_| JournalError::CommitterGone)?
            .reset(
                session,
                Head {
                    seq: record.seq,
                    hash: record.hash,
                },
            )
            .map_err(JournalError::Heads)?;
        self.shared.state()?.losses.remove(&session);
        Ok(())
    }

    /// Every record of a session readers may see, in order.
    pub fn records(
        &self,
        session: SessionId,
    ) -> impl Iterator<Item = Result<Record, JournalError>> + '_ {
        self.records_from(session, 0)
    }

    /// The records of a session from sequence number `from` on, in order,
    /// up to its durable head.
    pub fn records_from(
        &self,
        session: SessionId,
        from: u64,
    ) -> impl Iterator<Item = Result<Record, JournalError>> + '_ {
        self.stored_from(session, from).map(move |kv| {
            let (seq, bytes) = kv?;
            decode_stored(session, seq, &bytes)
        })
    }

    /// One record of a session, if it exists and readers may see it.
    pub fn record(&self, session: SessionId, seq: u64) -> Result<Option<Record>, JournalError> {
        if self
            .shared
            .visible(session)
            .is_some_and(|visible| seq >= visible)
        {
            return Ok(None);
        }
        let Some(bytes) = self.store().get(session, seq)? else {
            return Ok(None);
        };
        decode_stored(session, seq, &bytes).map(Some)
    }

    /// The last record the store holds of `session`, whether or not readers
    /// may see it yet.
    fn last_stored(&self, session: SessionId) -> Result<Record, JournalError> {
        let (seq, bytes) = self
            .store()
            .last(session)?
            .ok_or(JournalError::NoSession(session))?;
        decode_stored(session, seq, &bytes)
    }

    /// A blob's bytes, checked against its hash.
    pub fn blob(&self, hash: &Hash) -> Result<Vec<u8>, JournalError> {
        let bytes = self
            .store()
            .blob(hash)?
            .ok_or(JournalError::MissingBlob(*hash))?;
        if &hash_bytes(&bytes) != hash {
            return Err(JournalError::CorruptBlob(*hash));
        }
        Ok(bytes)
    }

    /// A session's readable records as stored, undecoded (for a copy).
    pub fn raw_records(
        &self,
        session: SessionId,
    ) -> impl Iterator<Item = Result<(u64, Vec<u8>), JournalError>> + '_ {
        self.stored_from(session, 0)
            .map(|kv| kv.map_err(JournalError::from))
    }

    /// `session`'s stored records from `from` on that readers may see.
    fn stored_from(&self, session: SessionId, from: u64) -> RecordIter<'_> {
        let to = match self.shared.visible(session) {
            Some(0) => None,
            Some(visible) => Some(visible - 1),
            None => Some(u64::MAX),
        };
        match to {
            Some(to) if from <= to => self.store().range(session, from, to),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Write a whole session copied from another journal, under its own
    /// id: `records` are (seq, stored bytes, hash) from 0 on, in order.
    /// Refused if the session exists here. Durable when this returns.
    pub fn import_session(
        &self,
        session: SessionId,
        records: Vec<(u64, Vec<u8>, Hash)>,
    ) -> Result<(), JournalError> {
        self.claim_writer(session)?;
        let imported = self.import_records(session, &records);
        if let Ok(mut writers) = self.writers.lock() {
            writers.remove(&session);
        }
        imported?;
        self.flush_now()
    }

    fn import_records(
        &self,
        session: SessionId,
        records: &[(u64, Vec<u8>, Hash)],
    ) -> Result<(), JournalError> {
        self.store().advance_session_ids(session)?;
        for batch in records.chunks(1024) {
            let Some((first_seq, _, _)) = batch.first() else {
                continue;
            };
            let bytes: Vec<Vec<u8>> = batch.iter().map(|(_, bytes, _)| bytes.clone()).collect();
            self.store().append(session, *first_seq, &bytes)?;
            if let Some((seq, _, hash)) = batch.last() {
                self.shared.state()?.pending.insert(
                    session,
                    Head {
                        seq: *seq,
                        hash: *hash,
                    },
                );
            }
        }
        Ok(())
    }

    /// The size of a stored blob, if it is stored.
    pub fn blob_len(&self, hash: &Hash) -> Result<Option<u64>, JournalError> {
        Ok(self.store().blob(hash)?.map(|b| b.len() as u64))
    }

    /// Store a blob once, by its hash; returns the hash.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Hash, JournalError> {
        if let Some(why) = self.shared.failed() {
            return Err(JournalError::Failed(why));
        }
        let hash = hash_bytes(bytes);
        match self.store().put_blob(&hash, bytes) {
            Ok(()) => {}
            Err(StoreError::ReadOnly) => return Err(StoreError::ReadOnly.into()),
            Err(e) => return Err(self.shared.fail(format!("storing a blob: {e}"))),
        }
        Ok(hash)
    }

    /// Wait until everything appended so far is durable (a group commit).
    pub async fn sync(&self) -> Result<(), JournalError> {
        if let Some(done) = self.shared.commit_alone() {
            return done;
        }
        let ticket = {
            let mut state = self.shared.state()?;
            if let Some(why) = &state.failed {
                return Err(JournalError::Failed(why.clone()));
            }
            state.requested += 1;
            self.shared.wake.notify_one();
            state.requested
        };
        let mut done = self.shared.done.subscribe();
        done.wait_for(|done| *done >= ticket)
            .await
            .map_err(|_| JournalError::CommitterGone)?;
        match self.shared.failed() {
            Some(why) => Err(JournalError::Failed(why)),
            None => Ok(()),
        }
    }

    /// Check a session's hash chain, blobs and acknowledged head. Returns the
    /// number of records verified, or the first bad record.
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
        // Records in order first (the first bad one is named), then the
        // end of the chain against the acknowledged head.
        let acknowledged = self.acknowledged(session);
        let mut expected_seq = 0u64;
        let mut prev = genesis(session);
        let mut checked_blobs: HashSet<Hash> = HashSet::new();
        // Blobs are checked in batches (one query for many, on a database),
        // always before an error at a later record is returned, so the
        // first bad record is still the one named.
        let mut deferred: Vec<(u64, Hash)> = Vec::new();
        let to = self
            .shared
            .visible(session)
            .map_or(u64::MAX, |v| v.saturating_sub(1));
        let mut walk = || -> Result<(), VerifyError> {
            for kv in self.store().range(session, 0, to) {
                let (key_seq, value) =
                    kv.map_err(|e| bad(expected_seq, format!("unreadable: {e}")))?;
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
                if !hash_matches(session, &value) {
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
                if let Some(head) = acknowledged
                    && head.seq == expected_seq
                    && head.hash != record.hash
                {
                    return Err(bad(
                        expected_seq,
                        format!(
                            "record {expected_seq} of session {session} is not the one acknowledged as durable"
                        ),
                    ));
                }
                for blob in &record.blobs {
                    if checked_blobs.insert(*blob) {
                        deferred.push((expected_seq, *blob));
                    }
                }
                if deferred.len() >= BLOBS_PER_CHECK {
                    self.check_blobs(&mut deferred, &bad)?;
                }
                prev = record.hash;
                check(record).map_err(|why| bad(expected_seq, why))?;
                expected_seq += 1;
            }
            Ok(())
        };
        let walked = walk();
        // A bad blob is always at or before the record a walk stopped at
        // (the walk defers a record's blobs, then checks the record), so
        // it is the first bad record.
        self.check_blobs(&mut deferred, &bad)?;
        walked?;
        if let Some(head) = acknowledged
            && head.seq >= expected_seq
        {
            let loss = Loss {
                session,
                acknowledged: head.seq,
                first_missing: expected_seq,
                last_missing: head.seq,
                changed: false,
            };
            return Err(bad(expected_seq, loss.to_string()));
        }
        Ok(expected_seq)
    }

    /// Check the deferred blobs in one store call; the first bad one fails
    /// at the record that named it.
    fn check_blobs(
        &self,
        deferred: &mut Vec<(u64, Hash)>,
        bad: &impl Fn(u64, String) -> VerifyError,
    ) -> Result<(), VerifyError> {
        if deferred.is_empty() {
            return Ok(());
        }
        let hashes: Vec<Hash> = deferred.iter().map(|(_, hash)| *hash).collect();
        let first_seq = deferred[0].0;
        let found = self
            .store()
            .blobs(&hashes)
            .map_err(|e| bad(first_seq, format!("blobs unreadable: {e}")))?;
        for ((seq, blob), bytes) in deferred.drain(..).zip(found) {
            match bytes {
                Some(bytes) if hash_bytes(&bytes) == blob => {}
                Some(_) => {
                    return Err(bad(
                        seq,
                        format!("blob {} does not match its hash", hex(&blob)),
                    ));
                }
                None => return Err(bad(seq, format!("blob {} is missing", hex(&blob)))),
            }
        }
        Ok(())
    }

    /// Why the journal stopped taking records, once a write or sync failed
    /// (it takes none after that: see [`JournalError::Failed`]).
    pub fn failure(&self) -> Option<String> {
        self.shared.failed()
    }

    /// The last record of `session` acknowledged as durable, as the
    /// acknowledged-heads file holds it.
    pub fn acknowledged(&self, session: SessionId) -> Option<Head> {
        self.shared.heads.as_ref()?.lock().ok()?.head(session)
    }

    /// Take `session`'s lease for `owner` (see [`Store::acquire_lease`]);
    /// once taken, this journal may write the session again even if it was
    /// fenced before.
    pub fn acquire_lease(
        &self,
        session: SessionId,
        owner: &str,
        ttl: Duration,
    ) -> Result<Acquired, JournalError> {
        let acquired = self.store().acquire_lease(session, owner, ttl)?;
        if let Acquired::Taken(_) = &acquired {
            self.shared.state()?.fenced.remove(&session);
        }
        Ok(acquired)
    }

    /// Extend a lease; `None` when another host has taken it over.
    pub fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>, JournalError> {
        Ok(self.store().renew_lease(lease, ttl)?)
    }

    /// Let a lease lapse now.
    pub fn release_lease(&self, lease: &Lease) -> Result<(), JournalError> {
        Ok(self.store().release_lease(lease)?)
    }

    /// From now on, lease every session this journal creates or takes over
    /// to `lessee`, and keep those leases ([`Journal::renew_leases`]). Only
    /// on a store that has leases; set once.
    pub fn lease_as(&self, lessee: Lessee) -> Result<(), JournalError> {
        // Asks the store whether it has leases at all.
        self.store().lapsed_leases()?;
        self.lessee
            .set(lessee)
            .map_err(|_| JournalError::Storage(StoreError::Io("the lessee is set once".into())))
    }

    /// Who this journal leases sessions to, if anyone.
    pub fn lessee(&self) -> Option<&Lessee> {
        self.lessee.get()
    }

    /// Take `session`'s lease for this journal's lessee if it is free,
    /// lapsed or already the lessee's: then this journal may write the
    /// session (again), and keeps the lease until it is lost, released or
    /// retired.
    pub fn take_over(&self, session: SessionId) -> Result<Acquired, JournalError> {
        let lessee = self.lessee.get().ok_or(StoreError::NoLeases)?;
        let acquired = self.acquire_lease(session, &lessee.owner, lessee.ttl)?;
        if let Acquired::Taken(lease) = &acquired {
            let mut state = self.shared.state()?;
            // What this journal last saw of the session as its writer is
            // stale: the next writer starts from the store's head.
            state.visible.remove(&session);
            state.leases.insert(
                session,
                HeldLease {
                    lease: lease.clone(),
                    renewed: std::time::Instant::now(),
                },
            );
        }
        Ok(acquired)
    }

    /// `session`'s lease, if this journal holds it.
    pub fn held_lease(&self, session: SessionId) -> Option<Lease> {
        let state = self.shared.state().ok()?;
        state.leases.get(&session).map(|held| held.lease.clone())
    }

    /// Renew every lease this journal holds. Returns the ones it lost: taken
    /// over by another host, or not renewed for a whole `ttl` (the store was
    /// out of reach) and so possibly taken. Their writers are refused from
    /// now on, as if the store had fenced them; a [`Journal::sync`] after
    /// this lets their readers see the store again.
    pub fn renew_leases(&self) -> Result<Vec<Fenced>, JournalError> {
        let Some(lessee) = self.lessee.get() else {
            return Ok(Vec::new());
        };
        let held: Vec<(Lease, std::time::Instant)> = self
            .shared
            .state()?
            .leases
            .values()
            .map(|held| (held.lease.clone(), held.renewed))
            .collect();
        let mut lost = Vec::new();
        // A journal that stopped taking records cannot run its sessions:
        // it renews nothing, so that other hosts take them over.
        let failed = self.shared.failed();
        for (lease, renewed) in held {
            let now = std::time::Instant::now();
            let renewal = match &failed {
                Some(why) => Err(StoreError::Io(format!("this host's journal failed: {why}"))),
                None => self.store().renew_lease(&lease, lessee.ttl),
            };
            let fenced = match renewal {
                Ok(Some(renewed)) => {
                    if let Some(held) = self.shared.state()?.leases.get_mut(&lease.session) {
                        held.lease = renewed;
                        held.renewed = now;
                    }
                    continue;
                }
                Ok(None) => {
                    let current = self.store().lease(lease.session).ok().flatten();
                    Fenced {
                        session: lease.session,
                        held: lease.epoch,
                        current: current.as_ref().map_or(0, |l| l.epoch),
                        owner: current.map_or_else(|| "another host".to_owned(), |l| l.owner),
                    }
                }
                Err(e) if now.duration_since(renewed) >= lessee.ttl => Fenced {
                    session: lease.session,
                    held: lease.epoch,
                    current: lease.epoch,
                    owner: format!("any host (the lease lapsed: it could not be renewed: {e})"),
                },
                Err(e) => {
                    tracing::warn!(
                        "journal: renewing the lease of session {}: {e}",
                        lease.session
                    );
                    continue;
                }
            };
            tracing::error!("journal: {fenced}");
            let mut state = self.shared.state()?;
            state.leases.remove(&lease.session);
            state.fenced.insert(lease.session, fenced.clone());
            lost.push(fenced);
        }
        Ok(lost)
    }

    /// `session` ended: retire its lease (see [`Store::retire_lease`]).
    pub fn retire_lease(&self, session: SessionId) -> Result<(), JournalError> {
        let held = self.shared.state()?.leases.remove(&session);
        match held {
            Some(held) => Ok(self.store().retire_lease(&held.lease)?),
            None => Ok(()),
        }
    }

    /// Let every lease this journal holds lapse now (a host stopping), so
    /// that other hosts take its sessions over at once.
    pub fn release_leases(&self) -> Result<(), JournalError> {
        let held: Vec<HeldLease> = self
            .shared
            .state()?
            .leases
            .drain()
            .map(|(_, h)| h)
            .collect();
        for held in held {
            self.store().release_lease(&held.lease)?;
        }
        Ok(())
    }

    /// `session`'s lease as the store holds it now.
    pub fn lease(&self, session: SessionId) -> Result<Option<Lease>, JournalError> {
        Ok(self.store().lease(session)?)
    }

    /// Leave `request` for the host that runs `session`.
    pub fn post_request(
        &self,
        session: SessionId,
        request: &SteeringRequest,
    ) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec(request)
            .map_err(|e| StoreError::Io(format!("encoding a request: {e}")))?;
        Ok(self.store().post_request(session, &bytes)?)
    }

    /// Take the requests left for the sessions whose lease this journal
    /// holds, in the order they were posted. One that does not decode (a
    /// newer host's, say) is named in the log and dropped.
    pub fn take_requests(&self) -> Result<Vec<(SessionId, SteeringRequest)>, JournalError> {
        let held: Vec<SessionId> = self.shared.state()?.leases.keys().copied().collect();
        let taken = self.store().take_requests(&held)?;
        Ok(taken
            .into_iter()
            .filter_map(|(session, bytes)| match serde_json::from_slice(&bytes) {
                Ok(request) => Some((session, request)),
                Err(e) => {
                    tracing::error!(
                        "journal: a request for session {session} does not decode: {e}"
                    );
                    None
                }
            })
            .collect())
    }

    /// Sessions whose lease lapsed (see [`Store::lapsed_leases`]).
    pub fn lapsed_leases(&self) -> Result<Vec<SessionId>, JournalError> {
        Ok(self.store().lapsed_leases()?)
    }

    /// Commit now, on this thread, without grouping with anyone (the
    /// baseline that group commit is measured against, and a host's last
    /// commit at shutdown).
    pub fn flush_now(&self) -> Result<(), JournalError> {
        self.shared.commit()
    }

    /// How many commits have run since the journal was opened.
    pub fn flush_count(&self) -> u64 {
        self.shared
            .commits
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes the journal takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, JournalError> {
        Ok(self.store().size_on_disk()?)
    }
}

/// Decode the record the store keeps of `session` under `seq`, checking its
/// hash.
fn decode_stored(session: SessionId, seq: u64, bytes: &[u8]) -> Result<Record, JournalError> {
    decode(session, bytes).map_err(|why| JournalError::Corrupt { session, seq, why })
}

/// Compare a session's stored records with its acknowledged head.
fn find_loss(
    store: &dyn Store,
    session: SessionId,
    head: Head,
) -> Result<Option<Loss>, StoreError> {
    let last = store.last(session)?.map(|(seq, _)| seq);
    let loss = |first_missing, last_missing, changed| Loss {
        session,
        acknowledged: head.seq,
        first_missing,
        last_missing,
        changed,
    };
    let at_head = match last {
        None => return Ok(Some(loss(0, head.seq, false))),
        Some(last) if last < head.seq => {
            // The tail is gone; an earlier stretch may be too.
            return Ok(Some(match store.missing(session, last)? {
                Some((first, last_gap)) => loss(first, last_gap, false),
                None => loss(last + 1, head.seq, false),
            }));
        }
        Some(_) => match store.get(session, head.seq)? {
            Some(bytes) if decode_unchecked(&bytes).is_ok_and(|r| r.hash == head.hash) => None,
            Some(_) => Some(loss(head.seq, head.seq, true)),
            None => Some(loss(head.seq, head.seq, false)),
        },
    };
    // Records missing before the head: a store that keeps what follows a
    // damaged stretch (the segment store does) has a hole there, which a
    // resume must not step over any more than over a lost tail.
    match store.missing(session, head.seq)? {
        Some((first, last_gap)) => Ok(Some(loss(first, last_gap, false))),
        None => Ok(at_head),
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

    /// Append a record (readers see it once it is durable; see
    /// [`Self::append_durable`]). Every blob it references must already be
    /// stored with [`Journal::put_blob`].
    pub fn append(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        let shared = &self.journal.shared;
        if let Some(why) = shared.failed() {
            return Err(JournalError::Failed(why));
        }
        if let Some(fenced) = shared.fenced(self.session) {
            return Err(JournalError::Fenced(fenced));
        }
        for blob in blobs {
            if !shared.store.has_blob(blob)? {
                return Err(JournalError::MissingBlob(*blob));
            }
        }
        let seq = self.next_seq;
        let (bytes, hash) =
            record::encode(self.session, seq, kind, &self.prev_hash, blobs, payload)?;
        match shared.store.append(self.session, seq, &[bytes]) {
            Ok(()) => {}
            Err(e @ (StoreError::Conflict { .. } | StoreError::ReadOnly)) => return Err(e.into()),
            Err(e) => {
                return Err(shared.fail(format!(
                    "appending record {seq} of session {}: {e}",
                    self.session
                )));
            }
        }
        self.next_seq += 1;
        self.prev_hash = hash;
        shared
            .state()?
            .pending
            .insert(self.session, Head { seq, hash });
        Ok(Appended { seq, hash })
    }

    /// Append a record holding `payload` (see [`Self::append`]).
    pub fn append_payload(
        &mut self,
        payload: &Payload,
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        self.append(payload.kind(), &payload.encode(), blobs)
    }

    /// Append a record holding `payload` and wait until it is durable.
    pub async fn append_payload_durable(
        &mut self,
        payload: &Payload,
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        self.append_durable(payload.kind(), &payload.encode(), blobs)
            .await
    }

    /// Append a record and wait until it is durable. Concurrent durable
    /// appends of all sessions share syncs.
    pub async fn append_durable(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        blobs: &[Hash],
    ) -> Result<Appended, JournalError> {
        let appended = self.append(kind, payload, blobs)?;
        self.journal.sync().await?;
        match self.journal.shared.fenced(self.session) {
            Some(fenced) => Err(JournalError::Fenced(fenced)),
            None => Ok(appended),
        }
    }
}

impl Drop for Journal {
    /// Commits what is pending and stops the committer, waiting at most
    /// [`CLOSE_DEADLINE`]; the journal can be opened again as soon as this
    /// returns. After a failed write, or past the deadline, the store is
    /// left unclosed (its own flush on close is what would hang) and the
    /// process's exit releases it.
    fn drop(&mut self) {
        if let Ok(mut state) = self.shared.state.lock() {
            state.stop = true;
        }
        self.shared.wake.notify_all();
        let finished = self
            .committer_done
            .lock()
            .ok()
            .and_then(|mut done| done.take())
            .is_some_and(|done| done.recv_timeout(CLOSE_DEADLINE).is_ok());
        if finished {
            if let Some(thread) = self.committer.lock().ok().and_then(|mut t| t.take()) {
                let _ = thread.join();
            }
        } else {
            tracing::error!(
                "journal: the last commit did not finish within {CLOSE_DEADLINE:?}; closing without it"
            );
        }
        if !finished || self.shared.failed().is_some() {
            std::mem::forget(self.shared.store.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_shown_leaves_out_the_database_password() {
        let location: Location = "postgres://longrun:s3cret@db:5432/journal".parse().unwrap();
        assert_eq!(
            location.to_string(),
            "postgres://longrun:***@db:5432/journal"
        );
        assert!(!format!("{location}").contains("s3cret"));
        let no_password: Location = "postgres://longrun@db/journal".parse().unwrap();
        assert_eq!(no_password.to_string(), "postgres://longrun@db/journal");
    }

    #[test]
    fn a_location_string_picks_the_store() {
        assert_eq!("memory:".parse(), Ok(Location::Memory));
        assert_eq!("sled:/x/y".parse(), Ok(Location::Sled("/x/y".into())));
        assert_eq!("segments:x".parse(), Ok(Location::Segments("x".into())));
        assert_eq!("journal".parse(), Ok(Location::Dir("journal".into())));
        assert_eq!("./a:b".parse(), Ok(Location::Dir("./a:b".into())));
        assert_eq!(
            "postgres://u@h:5/db".parse(),
            Ok(Location::Postgres("postgres://u@h:5/db".into()))
        );
        assert!("postgres:db".parse::<Location>().is_err());
        assert!("".parse::<Location>().is_err());
    }
}
