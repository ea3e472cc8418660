//! The storage interface under the journal, and its implementations.
//!
//! A [`Store`] keeps encoded records by (session, sequence number) and
//! blobs by hash. It knows nothing of hash chains, payloads or sessions'
//! meaning: the [`crate::Journal`] above it encodes, chains, verifies, groups
//! durable syncs and decides what readers may see. What a store must
//! guarantee:
//!
//! - [`Store::append`] writes a batch of one session's records at an
//!   expected sequence number, or nothing: it is refused
//!   ([`StoreError::Conflict`]) when that number is taken or the one before
//!   it is missing, so two writers of one session can never interleave (a
//!   shared store adds its lease epoch to the same check);
//! - what was written before [`Store::sync`] returned `Ok` survives a crash
//!   of the process;
//! - reads give back exactly the bytes written (or an error), never a
//!   record under another key.
//!
//! Implementations, picked by a location string ([`crate::Location`]):
//! [`segments`] (the embedded default: append-only files in a directory),
//! [`sled`] (a sled database in a directory: journals written before the
//! segment store, and anyone who asks for it), [`postgres`] (a PostgreSQL
//! database: journals that outlive one machine) and [`memory`] (unit
//! tests; nothing survives the process).

pub mod memory;
pub mod postgres;
pub mod segments;
pub mod sled;

use crate::record::{Hash, SessionId};

/// A store's failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage itself failed (I/O, a full disk, a damaged file).
    #[error("{0}")]
    Io(String),
    #[error(
        "the journal in {} is open elsewhere (another longrun process holds its lock)",
        .0.display()
    )]
    Locked(std::path::PathBuf),
    /// An append at a sequence number that is taken, or that does not
    /// follow the session's last record.
    #[error("session {session}: record {seq} {why}")]
    Conflict {
        session: SessionId,
        seq: u64,
        why: &'static str,
    },
    /// The store was opened read-only.
    #[error("the journal was opened read-only")]
    ReadOnly,
    /// Leases need a store that several hosts share.
    #[error("this journal store has no session leases (they need a shared store: PostgreSQL)")]
    NoLeases,
}

/// A session's lease in a store that several hosts share: which host runs
/// the session, under which epoch, until when. Epochs only grow: each
/// taking of a lease (a takeover, or the same owner starting again) gets
/// the next one, and the store refuses an append whose writer holds an
/// older one ([`Synced::fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub session: SessionId,
    pub owner: String,
    pub epoch: u64,
    /// When it lapses unless renewed, by the store's clock (Unix ms).
    pub expires_unix_ms: u64,
}

/// What [`Store::acquire_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is this caller's now, under a new epoch.
    Taken(Lease),
    /// Another owner holds it and it has not lapsed.
    HeldBy(Lease),
}

/// A session whose records a sync refused because its writer's lease is
/// not the current one: another host took the session over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "session {session}: fenced: this host's lease (epoch {held}) was taken over by {owner} (epoch {current}); its records from this sync were refused"
)]
pub struct Fenced {
    pub session: SessionId,
    /// The epoch this writer held (0: none).
    pub held: u64,
    pub current: u64,
    pub owner: String,
}

/// What a sync did besides making the rest durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Sessions whose queued records were refused, and nothing else of
    /// theirs written.
    pub fenced: Vec<Fenced>,
}

/// What [`Store::listen`] calls: a session's new last sequence number, or
/// `None` for "anything may have changed".
pub type CommitListener = Box<dyn Fn(Option<(SessionId, u64)>) + Send + Sync>;

/// For implementations: a store opened read-only refuses every write with
/// [`StoreError::ReadOnly`].
pub fn writable(read_only: bool) -> Result<(), StoreError> {
    if read_only {
        Err(StoreError::ReadOnly)
    } else {
        Ok(())
    }
}

/// The rule of [`Store::append`], for implementations: `count` records of
/// `session` may be written from `first_seq` on only if the record before
/// `first_seq` is stored (or it is 0) and none of their numbers is taken.
/// `stored(seq)` says whether the store holds record `seq` of `session`.
pub fn check_append(
    session: SessionId,
    first_seq: u64,
    count: usize,
    mut stored: impl FnMut(u64) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    let conflict = |seq, why| StoreError::Conflict { session, seq, why };
    if first_seq > 0 && !stored(first_seq - 1)? {
        return Err(conflict(
            first_seq,
            "does not follow the session's last record",
        ));
    }
    for seq in first_seq..first_seq + count as u64 {
        if stored(seq)? {
            return Err(conflict(seq, "is already stored"));
        }
    }
    Ok(())
}

/// The rule of [`Store::missing`], for implementations: the first run of
/// numbers in `0..=upto` absent from `seqs` (a session's stored record
/// numbers, in order), as (first, last).
pub fn first_gap(
    seqs: impl IntoIterator<Item = Result<u64, StoreError>>,
    upto: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let mut expected = 0u64;
    for seq in seqs {
        if expected > upto {
            break;
        }
        let seq = seq?;
        if seq != expected {
            return Ok(Some((expected, (seq - 1).min(upto))));
        }
        expected = seq + 1;
    }
    Ok(None)
}

/// One stored record: its sequence number (from the key) and its bytes.
pub type StoredRecord = (u64, Vec<u8>);

/// Records read in order.
pub type RecordIter<'a> = Box<dyn Iterator<Item = Result<StoredRecord, StoreError>> + Send + 'a>;

/// Where records and blobs are kept. See the module documentation for what
/// an implementation guarantees.
pub trait Store: Send + Sync {
    /// A session identifier never handed out before by this store.
    fn new_session_id(&self) -> Result<SessionId, StoreError>;

    /// Make sure [`Store::new_session_id`] never hands out `past` or an id
    /// below it from now on (a journal copied in keeps its sessions' ids).
    fn advance_session_ids(&self, past: SessionId) -> Result<(), StoreError>;

    /// Write `records` of `session`, the first at `first_seq`, the rest
    /// following, or none of them: refused when `first_seq` is taken or,
    /// for `first_seq > 0`, record `first_seq - 1` is not stored.
    fn append(
        &self,
        session: SessionId,
        first_seq: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError>;

    /// One record's bytes.
    fn get(&self, session: SessionId, seq: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// A session's last stored record.
    fn last(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError>;

    /// A session's records with sequence numbers in `from..=to`, in order
    /// (as stored: a gap shows as a jump in the numbers).
    fn range(&self, session: SessionId, from: u64, to: u64) -> RecordIter<'_>;

    /// The first run of record numbers in `0..=upto` that `session` does not
    /// hold, as (first, last), if any ([`first_gap`] over the stored
    /// numbers; the default reads them through [`Store::range`]).
    fn missing(&self, session: SessionId, upto: u64) -> Result<Option<(u64, u64)>, StoreError> {
        first_gap(
            self.range(session, 0, u64::MAX)
                .map(|stored| stored.map(|(seq, _)| seq)),
            upto,
        )
    }

    /// Every session with at least one record, in creation order.
    fn sessions(&self) -> Result<Vec<SessionId>, StoreError>;

    /// Store a blob under its hash (a blob already stored is left as it is).
    fn put_blob(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError>;

    fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError>;

    /// A blob's bytes as stored, unchecked.
    fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError>;

    /// Several blobs' bytes, in the order asked (one query on a database;
    /// the default asks one at a time).
    fn blobs(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        hashes.iter().map(|hash| self.blob(hash)).collect()
    }

    /// Make everything written so far durable, except the records of
    /// sessions whose lease this store no longer holds (a shared store's
    /// fencing): those are refused, in the same transaction, and named.
    fn sync(&self) -> Result<Synced, StoreError>;

    /// Take `session`'s lease for `owner` for `ttl` if it is free, lapsed
    /// or already `owner`'s (a new epoch either way). Only shared stores
    /// have leases; a local one is guarded by its directory's lock.
    fn acquire_lease(
        &self,
        session: SessionId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Acquired, StoreError> {
        let _ = (session, owner, ttl);
        Err(StoreError::NoLeases)
    }

    /// Extend a lease this caller holds; `None` when it is no longer the
    /// current one (taken over).
    fn renew_lease(
        &self,
        lease: &Lease,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let _ = (lease, ttl);
        Err(StoreError::NoLeases)
    }

    /// Let a lease lapse now (a session ended or a host stopping), so that
    /// another host need not wait for it to expire.
    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let _ = lease;
        Err(StoreError::NoLeases)
    }

    /// `session`'s lease as the store holds it now, if it has one.
    fn lease(&self, session: SessionId) -> Result<Option<Lease>, StoreError> {
        let _ = session;
        Err(StoreError::NoLeases)
    }

    /// Sessions whose lease has lapsed (their host stopped renewing it): a
    /// host of the same store may take them over. Retired leases
    /// ([`Store::retire_lease`]) never lapse.
    fn lapsed_leases(&self) -> Result<Vec<SessionId>, StoreError> {
        Err(StoreError::NoLeases)
    }

    /// The session ended: nobody runs it again. Its lease is kept, under
    /// its epoch, so that an older holder stays fenced, but it never lapses.
    fn retire_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let _ = lease;
        Err(StoreError::NoLeases)
    }

    /// Leave a request for the host that runs `session` (a shared store:
    /// a host that does not run a session steers it this way).
    fn post_request(&self, session: SessionId, bytes: &[u8]) -> Result<(), StoreError> {
        let _ = (session, bytes);
        Err(StoreError::NoLeases)
    }

    /// Take (and remove) the requests left for `sessions`, in the order
    /// they were posted: each is taken once, by one host.
    fn take_requests(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, Vec<u8>)>, StoreError> {
        let _ = sessions;
        Err(StoreError::NoLeases)
    }

    /// Call `on_commit` with (session, last sequence number) each time
    /// another process sharing this store commits records, and with `None`
    /// when commits may have been missed (the listening connection was
    /// lost): a wake-up for readers, who read the records themselves. The
    /// default does nothing: a local store has no other writer.
    fn listen(&self, on_commit: CommitListener) -> Result<(), StoreError> {
        let _ = on_commit;
        Ok(())
    }

    /// Bytes the store takes on disk (0 in memory).
    fn size_on_disk(&self) -> Result<u64, StoreError>;

    /// Whether the store refuses writes.
    fn read_only(&self) -> bool;
}
