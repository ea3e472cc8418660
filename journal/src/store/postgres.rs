//! A store in a PostgreSQL database, for journals that must outlive one
//! machine: records in `longrun_records` keyed by (session, seq), blobs in
//! `longrun_blobs` by hash, session identifiers from a sequence. The bytes
//! are the same encoded, hash-chained records as every other store's, so
//! the journal above checks them the same way; rows changed with plain SQL
//! are caught by [`crate::Journal::verify`].
//!
//! The schema belongs to the host: [`PostgresStore::open`] creates it and
//! applies the [`MIGRATIONS`] it lacks, under an advisory lock so that
//! hosts starting together migrate once; a database migrated by a newer
//! longrun is refused rather than written in a format this one does not
//! know.
//!
//! Group commit: [`Store::append`] checks a batch against what this store
//! holds and queues it; [`Store::sync`] writes everything queued, every
//! session's records and the blobs they name, in one transaction, which
//! PostgreSQL makes durable at its commit (so one WAL flush serves every
//! session that waited). The table's primary key is the check that holds
//! across processes: a batch that collides with a record another writer
//! stored fails the whole transaction with [`StoreError::Conflict`].
//!
//! The client is `tokio-postgres` with a `deadpool` pool on a small runtime
//! of the store's own: the [`Store`] interface is blocking, and its callers
//! may or may not be inside a runtime of theirs.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use super::{
    Acquired, CommitListener, Fenced, Lease, RecordIter, Store, StoreError, StoredRecord, Synced,
    check_append, writable,
};
use crate::record::{Hash, SessionId};

/// The schema, as numbered steps: step N is applied once, in order, and
/// recorded in `longrun_schema`. A released step is never edited; a change
/// is a new step.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE SEQUENCE longrun_session_ids AS bigint MINVALUE 0 START WITH 0;
     CREATE TABLE longrun_sessions (
         session bigint PRIMARY KEY
     );
     CREATE TABLE longrun_records (
         session bigint NOT NULL,
         seq bigint NOT NULL,
         bytes bytea NOT NULL,
         PRIMARY KEY (session, seq)
     );
     CREATE TABLE longrun_blobs (
         hash bytea PRIMARY KEY,
         bytes bytea NOT NULL
     );",
    ),
    (
        2,
        "CREATE TABLE longrun_leases (
         session bigint PRIMARY KEY,
         owner text NOT NULL,
         epoch bigint NOT NULL,
         expires_at timestamptz NOT NULL
     );",
    ),
    (
        3,
        "CREATE TABLE longrun_requests (
         id bigserial PRIMARY KEY,
         session bigint NOT NULL,
         bytes bytea NOT NULL
     );
     CREATE INDEX longrun_requests_by_session ON longrun_requests (session);",
    ),
];

/// The advisory lock key that serializes migrations ("longrun!" as bytes).
const MIGRATION_LOCK: i64 = 0x6c6f_6e67_7275_6e21;

/// When a retired lease (an ended session's) expires: never, in practice
/// (not `infinity`, which has no Unix time).
const RETIRED: &str = "9999-12-31 00:00:00+00";

/// The channel commits are announced on: a payload is a space-separated
/// list of `session:seq`, each the session's last record in the commit.
const COMMITS_CHANNEL: &str = "longrun_commits";

/// The longest payload of one notification (PostgreSQL's limit is 8,000
/// bytes).
const NOTIFY_PAYLOAD: usize = 7_000;

/// Rows per query when a session is read in order.
const PAGE: i64 = 2048;

pub struct PostgresStore {
    /// Always `Some` until dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    /// Where a connection of its own listens for other hosts' commits.
    listen_config: tokio_postgres::Config,
    read_only: bool,
    queue: Mutex<Queue>,
}

/// What was appended and not yet synced, and each written session's last
/// sequence number (so that an append is checked without a query).
#[derive(Default)]
struct Queue {
    records: BTreeMap<(SessionId, u64), Vec<u8>>,
    blobs: HashMap<Hash, Vec<u8>>,
    /// The next free sequence number of each session this store appended
    /// to or looked up, counting queued records.
    next: HashMap<SessionId, u64>,
    /// The lease epoch this store holds for each session it took one of.
    held: HashMap<SessionId, u64>,
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user@host:port/db`),
    /// creating or migrating the schema.
    pub fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(url, false)?;
        store.run(migrate(store.pool.clone()))?;
        Ok(store)
    }

    /// Connect to read an existing journal: every session in the database
    /// uses read-only transactions, so nothing can be written, by this
    /// store or by mistake.
    pub fn open_read_only(url: &str) -> Result<PostgresStore, StoreError> {
        let store = PostgresStore::connect(url, true)?;
        store.run(check_schema(store.pool.clone()))?;
        Ok(store)
    }

    fn connect(url: &str, read_only: bool) -> Result<PostgresStore, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Io(format!("the PostgreSQL address: {e}")))?;
        config.application_name("longrun");
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        let listen_config = config.clone();
        // A host stopped inside a commit (SIGSTOP, a VM paused) holds its
        // sessions' lease rows locked, and a takeover would wait for it
        // for ever: the server ends such a transaction after 5 s, and the
        // stopped host's commit fails when it wakes.
        config.options(if read_only {
            "-c default_transaction_read_only=on -c idle_in_transaction_session_timeout=5000"
        } else {
            "-c idle_in_transaction_session_timeout=5000"
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("longrun-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("starting the PostgreSQL client: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(8)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Io(format!("the PostgreSQL pool: {e}")))?;
        let store = PostgresStore {
            runtime: Some(runtime),
            pool,
            listen_config,
            read_only,
            queue: Mutex::default(),
        };
        // Fail at open, with the server's reason, rather than at first use.
        let pool = store.pool.clone();
        store.run(async move { pool.get().await.map(drop).map_err(pool_error) })?;
        Ok(store)
    }

    /// Run `work` on the store's runtime and wait for it on this thread
    /// (which may be a worker of another runtime: it blocks, as any other
    /// store's disk I/O does).
    fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Io("the PostgreSQL client stopped".into()));
        };
        runtime.spawn(async move {
            let _ = tx.send(work.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Io("the PostgreSQL client stopped".into()))?
    }

    fn queue(&self) -> Result<MutexGuard<'_, Queue>, StoreError> {
        self.queue
            .lock()
            .map_err(|_| StoreError::Io("the PostgreSQL store's queue was poisoned".into()))
    }

    /// The last stored record of `session` in the database (queued ones
    /// aside).
    fn last_stored(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT seq, bytes FROM longrun_records WHERE session = $1 \
                     ORDER BY seq DESC LIMIT 1",
                    &[&key(session)?],
                )
                .await
                .map_err(pg_error)?;
            row.map(|row| Ok((seq_of(row.get(0))?, row.get(1))))
                .transpose()
        })
    }

    /// One page of `session`'s stored records in `from..=to`.
    fn page(
        &self,
        session: SessionId,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT seq, bytes FROM longrun_records \
                     WHERE session = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                    &[
                        &key(session)?,
                        &key(from)?,
                        &key(to.min(i64::MAX as u64))?,
                        &PAGE,
                    ],
                )
                .await
                .map_err(pg_error)?;
            rows.into_iter()
                .map(|row| Ok((seq_of(row.get(0))?, row.get(1))))
                .collect()
        })
    }
}

impl Store for PostgresStore {
    fn new_session_id(&self) -> Result<SessionId, StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT nextval('longrun_session_ids')", &[])
                .await
                .map_err(pg_error)?;
            seq_of(row.get(0))
        })
    }

    fn advance_session_ids(&self, past: SessionId) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            // After setval(v) the next id is v + 1.
            client
                .execute(
                    "SELECT setval('longrun_session_ids', \
                     GREATEST((SELECT last_value FROM longrun_session_ids), $1))",
                    &[&key(past)?],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn append(
        &self,
        session: SessionId,
        first_seq: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let known = self.queue()?.next.get(&session).copied();
        let next = match known {
            Some(next) => next,
            // First append to this session by this store: ask the database
            // once, then count.
            None => {
                let next = self.last_stored(session)?.map_or(0, |(seq, _)| seq + 1);
                *self.queue()?.next.entry(session).or_insert(next)
            }
        };
        check_append(session, first_seq, records.len(), |seq| Ok(seq < next))?;
        let mut queue = self.queue()?;
        if queue.next.get(&session) != Some(&next) {
            return Err(StoreError::Conflict {
                session,
                seq: first_seq,
                why: "was appended meanwhile by another writer in this process",
            });
        }
        for (seq, bytes) in (first_seq..).zip(records) {
            queue.records.insert((session, seq), bytes.clone());
        }
        queue.next.insert(session, first_seq + records.len() as u64);
        Ok(())
    }

    fn get(&self, session: SessionId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.queue()?.records.get(&(session, seq)) {
            return Ok(Some(bytes.clone()));
        }
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT bytes FROM longrun_records WHERE session = $1 AND seq = $2",
                    &[&key(session)?, &key(seq)?],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.map(|row| row.get(0)))
        })
    }

    fn last(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError> {
        let queued = self
            .queue()?
            .records
            .range((session, 0)..=(session, u64::MAX))
            .next_back()
            .map(|((_, seq), bytes)| (*seq, bytes.clone()));
        match queued {
            Some(record) => Ok(Some(record)),
            None => self.last_stored(session),
        }
    }

    fn range(&self, session: SessionId, from: u64, to: u64) -> RecordIter<'_> {
        // Queued records follow every stored one of their session (appends
        // are checked against both), so they come after the pages.
        let queued: Vec<StoredRecord> = match self.queue() {
            Ok(queue) => queue
                .records
                .range((session, from)..=(session, to))
                .map(|((_, seq), bytes)| (*seq, bytes.clone()))
                .collect(),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(Pages {
            store: self,
            session,
            from: Some(from),
            to,
            page: Vec::new().into_iter(),
            queued: queued.into_iter(),
        })
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        let pool = self.pool.clone();
        let mut sessions: Vec<SessionId> = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query("SELECT session FROM longrun_sessions ORDER BY session", &[])
                .await
                .map_err(pg_error)?;
            rows.into_iter().map(|row| seq_of(row.get(0))).collect()
        })?;
        let queue = self.queue()?;
        sessions.extend(queue.records.keys().map(|(session, _)| *session));
        sessions.sort_unstable();
        sessions.dedup();
        Ok(sessions)
    }

    fn put_blob(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        writable(self.read_only)?;
        self.queue()?
            .blobs
            .entry(*hash)
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        if self.queue()?.blobs.contains_key(hash) {
            return Ok(true);
        }
        Ok(self.stored_blob(hash, false)?.is_some())
    }

    fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(bytes) = self.queue()?.blobs.get(hash) {
            return Ok(Some(bytes.clone()));
        }
        self.stored_blob(hash, true)
    }

    fn blobs(&self, hashes: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut found: HashMap<Hash, Vec<u8>> = {
            let queue = self.queue()?;
            hashes
                .iter()
                .filter_map(|hash| queue.blobs.get(hash).map(|bytes| (*hash, bytes.clone())))
                .collect()
        };
        let wanted: Vec<Vec<u8>> = hashes
            .iter()
            .filter(|hash| !found.contains_key(*hash))
            .map(|hash| hash.to_vec())
            .collect();
        if !wanted.is_empty() {
            let pool = self.pool.clone();
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self.run(async move {
                let client = pool.get().await.map_err(pool_error)?;
                let rows = client
                    .query(
                        "SELECT hash, bytes FROM longrun_blobs WHERE hash = ANY($1)",
                        &[&wanted],
                    )
                    .await
                    .map_err(pg_error)?;
                Ok(rows
                    .into_iter()
                    .map(|row| (row.get(0), row.get(1)))
                    .collect())
            })?;
            for (hash, bytes) in rows {
                if let Ok(hash) = Hash::try_from(hash.as_slice()) {
                    found.insert(hash, bytes);
                }
            }
        }
        Ok(hashes.iter().map(|hash| found.get(hash).cloned()).collect())
    }

    fn sync(&self) -> Result<Synced, StoreError> {
        if self.read_only {
            return Ok(Synced::default());
        }
        let (records, blobs) = {
            let mut queue = self.queue()?;
            (
                std::mem::take(&mut queue.records),
                std::mem::take(&mut queue.blobs),
            )
        };
        if records.is_empty() && blobs.is_empty() {
            return Ok(Synced::default());
        }
        let held = self.queue()?.held.clone();
        let pool = self.pool.clone();
        let written = self.run(write_batch(pool, records, blobs, held));
        match &written {
            Ok(synced) => {
                let mut queue = self.queue()?;
                for fenced in &synced.fenced {
                    queue.next.remove(&fenced.session);
                    queue.held.remove(&fenced.session);
                }
            }
            // What this store believed about each session's end may be
            // wrong now: ask the database again on the next append.
            Err(_) => self.queue()?.next.clear(),
        }
        written
    }

    fn acquire_lease(
        &self,
        session: SessionId,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<Acquired, StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        let owner = owner.to_owned();
        let ttl = millis(ttl);
        let acquired = self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            // Free, lapsed or already ours: taken under the next epoch.
            // The database's clock decides what has lapsed, so hosts'
            // clocks need not agree.
            let taken = client
                .query_opt(
                    "INSERT INTO longrun_leases AS l (session, owner, epoch, expires_at) \
                     VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond') \
                     ON CONFLICT (session) DO UPDATE \
                     SET owner = EXCLUDED.owner, epoch = l.epoch + 1, expires_at = EXCLUDED.expires_at \
                     WHERE l.expires_at < now() OR l.owner = EXCLUDED.owner \
                     RETURNING owner, epoch, (extract(epoch FROM expires_at) * 1000)::bigint",
                    &[&key(session)?, &owner, &ttl],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = taken {
                return Ok(Acquired::Taken(lease_of(session, &row)?));
            }
            let held = client
                .query_one(
                    "SELECT owner, epoch, (extract(epoch FROM expires_at) * 1000)::bigint \
                     FROM longrun_leases WHERE session = $1",
                    &[&key(session)?],
                )
                .await
                .map_err(pg_error)?;
            Ok(Acquired::HeldBy(lease_of(session, &held)?))
        })?;
        if let Acquired::Taken(lease) = &acquired {
            let mut queue = self.queue()?;
            queue.held.insert(session, lease.epoch);
            // Another host may have written since this store last looked.
            queue.next.remove(&session);
        }
        Ok(acquired)
    }

    fn renew_lease(
        &self,
        lease: &Lease,
        ttl: std::time::Duration,
    ) -> Result<Option<Lease>, StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        let (session, owner, epoch, ttl) = (
            lease.session,
            lease.owner.clone(),
            key(lease.epoch)?,
            millis(ttl),
        );
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "UPDATE longrun_leases SET expires_at = now() + $4::bigint * interval '1 millisecond' \
                     WHERE session = $1 AND owner = $2 AND epoch = $3 \
                     RETURNING owner, epoch, (extract(epoch FROM expires_at) * 1000)::bigint",
                    &[&key(session)?, &owner, &epoch, &ttl],
                )
                .await
                .map_err(pg_error)?;
            row.map(|row| lease_of(session, &row)).transpose()
        })
    }

    fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        let (session, owner, epoch) = (lease.session, lease.owner.clone(), key(lease.epoch)?);
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "UPDATE longrun_leases SET expires_at = now() \
                     WHERE session = $1 AND owner = $2 AND epoch = $3",
                    &[&key(session)?, &owner, &epoch],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })?;
        self.queue()?.held.remove(&lease.session);
        Ok(())
    }

    fn lease(&self, session: SessionId) -> Result<Option<Lease>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt(
                    "SELECT owner, epoch, (extract(epoch FROM expires_at) * 1000)::bigint \
                     FROM longrun_leases WHERE session = $1",
                    &[&key(session)?],
                )
                .await
                .map_err(pg_error)?;
            row.map(|row| lease_of(session, &row)).transpose()
        })
    }

    fn lapsed_leases(&self) -> Result<Vec<SessionId>, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT session FROM longrun_leases WHERE expires_at < now() ORDER BY session",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            rows.into_iter().map(|row| seq_of(row.get(0))).collect()
        })
    }

    fn retire_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        let (session, owner, epoch) = (lease.session, lease.owner.clone(), key(lease.epoch)?);
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    &format!(
                        "UPDATE longrun_leases SET expires_at = '{RETIRED}' \
                         WHERE session = $1 AND owner = $2 AND epoch = $3"
                    ),
                    &[&key(session)?, &owner, &epoch],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })?;
        self.queue()?.held.remove(&lease.session);
        Ok(())
    }

    fn post_request(&self, session: SessionId, bytes: &[u8]) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let pool = self.pool.clone();
        let bytes = bytes.to_vec();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO longrun_requests (session, bytes) VALUES ($1, $2)",
                    &[&key(session)?, &bytes],
                )
                .await
                .map_err(pg_error)?;
            Ok(())
        })
    }

    fn take_requests(
        &self,
        sessions: &[SessionId],
    ) -> Result<Vec<(SessionId, Vec<u8>)>, StoreError> {
        writable(self.read_only)?;
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        let pool = self.pool.clone();
        let sessions = sessions
            .iter()
            .map(|s| key(*s))
            .collect::<Result<Vec<i64>, _>>()?;
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "DELETE FROM longrun_requests WHERE session = ANY($1) \
                     RETURNING id, session, bytes",
                    &[&sessions],
                )
                .await
                .map_err(pg_error)?;
            let mut taken: Vec<(i64, SessionId, Vec<u8>)> = rows
                .into_iter()
                .map(|row| Ok((row.get(0), seq_of(row.get(1))?, row.get(2))))
                .collect::<Result<_, StoreError>>()?;
            // In the order they were posted.
            taken.sort_by_key(|(id, _, _)| *id);
            Ok(taken
                .into_iter()
                .map(|(_, session, bytes)| (session, bytes))
                .collect())
        })
    }

    fn listen(&self, on_commit: CommitListener) -> Result<(), StoreError> {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Io("the PostgreSQL client stopped".into()));
        };
        runtime.spawn(listen_for_commits(self.listen_config.clone(), on_commit));
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT pg_total_relation_size('longrun_records') \
                          + pg_total_relation_size('longrun_blobs') \
                          + pg_total_relation_size('longrun_sessions')",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            let bytes: i64 = row.get(0);
            Ok(bytes.max(0) as u64)
        })
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

impl PostgresStore {
    /// A stored blob's bytes (or only whether it is there).
    fn stored_blob(&self, hash: &Hash, with_bytes: bool) -> Result<Option<Vec<u8>>, StoreError> {
        let pool = self.pool.clone();
        let hash = hash.to_vec();
        self.run(async move {
            let client = pool.get().await.map_err(pool_error)?;
            let query = if with_bytes {
                "SELECT bytes FROM longrun_blobs WHERE hash = $1"
            } else {
                "SELECT ''::bytea FROM longrun_blobs WHERE hash = $1"
            };
            let row = client.query_opt(query, &[&hash]).await.map_err(pg_error)?;
            Ok(row.map(|row| row.get(0)))
        })
    }
}

/// A runtime dropped the plain way waits for its tasks, which tokio
/// forbids inside another runtime's task (where a journal may well be
/// dropped); the client's connections need no goodbye.
impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A session's records in order: pages from the database, then the queued
/// records.
struct Pages<'a> {
    store: &'a PostgresStore,
    session: SessionId,
    /// Where the next page starts; `None` once the database has no more.
    from: Option<u64>,
    to: u64,
    page: std::vec::IntoIter<StoredRecord>,
    queued: std::vec::IntoIter<StoredRecord>,
}

impl Iterator for Pages<'_> {
    type Item = Result<StoredRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.page.next() {
                return Some(Ok(record));
            }
            let Some(from) = self.from.filter(|from| *from <= self.to) else {
                return self.queued.next().map(Ok);
            };
            match self.store.page(self.session, from, self.to) {
                Ok(page) => {
                    self.from = match page.last() {
                        Some((seq, _)) if page.len() as i64 == PAGE => seq.checked_add(1),
                        _ => None,
                    };
                    self.page = page.into_iter();
                }
                Err(e) => {
                    self.from = None;
                    self.queued = Vec::new().into_iter();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Write a batch of records and blobs in one transaction, fenced: the
/// leases of the batch's sessions are read and locked in the same
/// transaction (a takeover waits for it to commit), and the records of a
/// session whose lease is not the epoch this store holds are left out and
/// named. Sessions that nobody leases (a single host's) are written as
/// they come.
async fn write_batch(
    pool: Pool,
    records: BTreeMap<(SessionId, u64), Vec<u8>>,
    blobs: HashMap<Hash, Vec<u8>>,
    held: HashMap<SessionId, u64>,
) -> Result<Synced, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    let mut in_batch: Vec<i64> = Vec::new();
    for (session, _) in records.keys() {
        let session = key(*session)?;
        if in_batch.last() != Some(&session) {
            in_batch.push(session);
        }
    }
    let mut synced = Synced::default();
    if !in_batch.is_empty() {
        let leases = tx
            .query(
                "SELECT session, owner, epoch FROM longrun_leases \
                 WHERE session = ANY($1) ORDER BY session FOR SHARE",
                &[&in_batch],
            )
            .await
            .map_err(pg_error)?;
        for row in leases {
            let session = seq_of(row.get(0))?;
            let current = seq_of(row.get(2))?;
            let mine = held.get(&session).copied().unwrap_or(0);
            if mine != current {
                synced.fenced.push(Fenced {
                    session,
                    held: mine,
                    current,
                    owner: row.get(1),
                });
            }
        }
    }
    let fenced: std::collections::HashSet<SessionId> =
        synced.fenced.iter().map(|f| f.session).collect();
    let mut sessions = Vec::with_capacity(records.len());
    let mut seqs = Vec::with_capacity(records.len());
    let mut bytes = Vec::with_capacity(records.len());
    let mut first_records = Vec::new();
    for ((session, seq), record) in records {
        if fenced.contains(&session) {
            continue;
        }
        if seq == 0 {
            first_records.push(key(session)?);
        }
        sessions.push(key(session)?);
        seqs.push(key(seq)?);
        bytes.push(record);
    }
    let (hashes, blob_bytes): (Vec<Vec<u8>>, Vec<Vec<u8>>) = blobs
        .into_iter()
        .map(|(hash, bytes)| (hash.to_vec(), bytes))
        .unzip();
    if !hashes.is_empty() {
        tx.execute(
            "INSERT INTO longrun_blobs (hash, bytes) \
             SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) ON CONFLICT (hash) DO NOTHING",
            &[&hashes, &blob_bytes],
        )
        .await
        .map_err(pg_error)?;
    }
    if !first_records.is_empty() {
        tx.execute(
            "INSERT INTO longrun_sessions (session) SELECT UNNEST($1::bigint[]) \
             ON CONFLICT (session) DO NOTHING",
            &[&first_records],
        )
        .await
        .map_err(pg_error)?;
    }
    if !sessions.is_empty() {
        // The records and the announcement of their sessions' new heads in
        // one statement (one round trip); a notification is delivered
        // when, and only if, the transaction commits.
        let payloads = commit_payloads(&sessions, &seqs);
        let inserted = tx
            .execute(
                &format!(
                    "WITH inserted AS (\
                       INSERT INTO longrun_records (session, seq, bytes) \
                       SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[])) \
                     SELECT pg_notify('{COMMITS_CHANNEL}', p) FROM UNNEST($4::text[]) AS p"
                ),
                &[&sessions, &seqs, &bytes, &payloads],
            )
            .await;
        if let Err(e) = inserted {
            if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
                return Err(StoreError::Conflict {
                    session: sessions[0] as SessionId,
                    seq: seqs[0] as u64,
                    why: "collides with a record another writer stored (the batch was not written)",
                });
            }
            return Err(pg_error(e));
        }
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(synced)
}

/// The notifications of a commit: each session's last sequence number, as
/// `session:seq` words, in payloads under PostgreSQL's limit. `sessions`
/// and `seqs` are in (session, seq) order.
fn commit_payloads(sessions: &[i64], seqs: &[i64]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut payload = String::new();
    for (i, (session, seq)) in sessions.iter().zip(seqs).enumerate() {
        if sessions.get(i + 1) == Some(session) {
            continue;
        }
        if payload.len() > NOTIFY_PAYLOAD {
            payloads.push(std::mem::take(&mut payload));
        }
        if !payload.is_empty() {
            payload.push(' ');
        }
        payload.push_str(&format!("{session}:{seq}"));
    }
    if !payload.is_empty() {
        payloads.push(payload);
    }
    payloads
}

/// Listen for other hosts' commits on a connection of its own, for as long
/// as the store lives, connecting again (after a second) when the
/// connection is lost; each new connection first reports `None`, since
/// commits made while nobody listened were missed.
async fn listen_for_commits(config: tokio_postgres::Config, on_commit: CommitListener) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_owned()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::debug!("journal: the commit listener's connection: {e}");
                                break;
                            }
                        }
                    }
                });
                if let Err(e) = client
                    .batch_execute(&format!("LISTEN {COMMITS_CHANNEL}"))
                    .await
                {
                    tracing::debug!("journal: LISTEN {COMMITS_CHANNEL}: {e}");
                } else {
                    on_commit(None);
                    while let Some(payload) = rx.recv().await {
                        for head in payload.split(' ') {
                            match head.split_once(':').map(|(s, q)| (s.parse(), q.parse())) {
                                Some((Ok(session), Ok(seq))) => on_commit(Some((session, seq))),
                                _ => on_commit(None),
                            }
                        }
                    }
                }
                drop(client);
                driver.abort();
            }
            Err(e) => tracing::debug!("journal: connecting the commit listener: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn lease_of(session: SessionId, row: &tokio_postgres::Row) -> Result<Lease, StoreError> {
    Ok(Lease {
        session,
        owner: row.get(0),
        epoch: seq_of(row.get(1))?,
        expires_unix_ms: seq_of(row.get::<_, i64>(2).max(0))?,
    })
}

/// A duration in whole milliseconds, for the database's intervals.
fn millis(ttl: std::time::Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// Create the schema or bring it up to date, once across hosts.
async fn migrate(pool: Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS longrun_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg_error)?;
    let applied = applied_version(&tx).await?;
    known_version(applied)?;
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql).await.map_err(|e| {
            StoreError::Io(format!(
                "migrating the journal schema to version {version}: {}",
                describe(&e)
            ))
        })?;
        tx.execute(
            "INSERT INTO longrun_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg_error)?;
        tracing::info!("journal: PostgreSQL schema migrated to version {version}");
    }
    tx.commit().await.map_err(pg_error)
}

/// A read-only store's check: the schema is there, and one this longrun
/// knows.
async fn check_schema(pool: Pool) -> Result<(), StoreError> {
    let client = pool.get().await.map_err(pool_error)?;
    let exists = client
        .query_one("SELECT to_regclass('longrun_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?;
    if !exists.get::<_, bool>(0) {
        return Err(StoreError::Io(
            "this database holds no longrun journal (no longrun_schema table)".into(),
        ));
    }
    let applied = applied_version(&client).await?;
    known_version(applied)?;
    if applied < latest_version() {
        return Err(StoreError::Io(format!(
            "the journal schema is at version {applied}, this longrun reads {}: \
             open it once for writing to migrate it",
            latest_version()
        )));
    }
    Ok(())
}

async fn applied_version(
    client: &impl deadpool_postgres::GenericClient,
) -> Result<i32, StoreError> {
    let row = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM longrun_schema", &[])
        .await
        .map_err(pg_error)?;
    Ok(row.get(0))
}

fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

fn known_version(applied: i32) -> Result<(), StoreError> {
    if applied > latest_version() {
        return Err(StoreError::Io(format!(
            "the journal schema is at version {applied}, written by a newer longrun; \
             this one knows versions up to {}",
            latest_version()
        )));
    }
    Ok(())
}

/// A session id or sequence number as PostgreSQL's `bigint`.
fn key(n: u64) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Io(format!("{n} is beyond PostgreSQL's bigint")))
}

/// A `bigint` read back: never negative in a journal this store wrote.
fn seq_of(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Io(format!("a negative key {n} in the journal")))
}

/// A client error with the server's own message when there is one.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Io(format!("PostgreSQL: {}", describe(&e)))
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg_error(e),
        other => StoreError::Io(format!("PostgreSQL: {other}")),
    }
}
