//! What every store, and the journal on it, must do: the same tests run on
//! each implementation (segment files and sled on a temporary directory,
//! PostgreSQL in a private cluster, memory).

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use longrun_journal::{
    Journal, JournalError, Location, MemoryStore, PostgresStore, RecordKind, SegmentStore,
    SledStore, Store, StoreError,
};
use longrun_test_postgres::Cluster;

/// What keeps a store's storage alive while it is used: a temporary
/// directory, a PostgreSQL cluster, or nothing.
type Keep = Option<Box<dyn Any>>;

/// A PostgreSQL cluster of the test's own, with an empty database.
fn postgres() -> (Cluster, String) {
    let cluster = Cluster::start().unwrap();
    let url = cluster.create_database("journal").unwrap();
    (cluster, url)
}

/// A store of each kind, fresh.
fn stores() -> Vec<(&'static str, Arc<dyn Store>, Keep)> {
    let segments_dir = tempfile::tempdir().unwrap();
    let segments = SegmentStore::open(segments_dir.path()).unwrap();
    let sled_dir = tempfile::tempdir().unwrap();
    let sled = SledStore::open(sled_dir.path(), 8 << 20).unwrap();
    let (cluster, url) = postgres();
    let postgres = PostgresStore::open(&url).unwrap();
    vec![
        ("segments", Arc::new(segments), Some(Box::new(segments_dir))),
        ("sled", Arc::new(sled), Some(Box::new(sled_dir))),
        ("postgres", Arc::new(postgres), Some(Box::new(cluster))),
        ("memory", Arc::new(MemoryStore::new()), None),
    ]
}

fn journals() -> Vec<(&'static str, Arc<Journal>, Keep)> {
    let segments = tempfile::tempdir().unwrap();
    let sled = tempfile::tempdir().unwrap();
    let (cluster, url) = postgres();
    let open = |location| Journal::open_location(&location, Default::default()).unwrap();
    vec![
        (
            "segments",
            open(Location::Segments(segments.path().into())),
            Some(Box::new(segments)),
        ),
        (
            "sled",
            open(Location::Sled(sled.path().into())),
            Some(Box::new(sled)),
        ),
        (
            "postgres",
            open(Location::Postgres(url)),
            Some(Box::new(cluster)),
        ),
        ("memory", Journal::in_memory().unwrap(), None),
    ]
}

#[test]
fn a_store_appends_only_at_the_next_sequence_number() {
    for (name, store, _dir) in stores() {
        let s = store.new_session_id().unwrap();
        store.append(s, 0, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        let taken = store.append(s, 1, &[b"x".to_vec()]).unwrap_err();
        assert!(
            matches!(taken, StoreError::Conflict { seq: 1, .. }),
            "{name}: {taken}"
        );
        let gap = store.append(s, 3, &[b"x".to_vec()]).unwrap_err();
        assert!(
            matches!(gap, StoreError::Conflict { seq: 3, .. }),
            "{name}: {gap}"
        );
        // A batch that runs into a stored record writes nothing.
        let other = store.new_session_id().unwrap();
        store.append(other, 0, &[b"0".to_vec()]).unwrap();
        assert!(store.append(s, 2, &[b"c".to_vec()]).is_ok(), "{name}");
        assert_eq!(store.last(s).unwrap(), Some((2, b"c".to_vec())), "{name}");
        let read: Vec<_> = store.range(s, 1, 9).map(Result::unwrap).collect();
        assert_eq!(read, vec![(1, b"b".to_vec()), (2, b"c".to_vec())], "{name}");
        assert_eq!(store.get(s, 0).unwrap(), Some(b"a".to_vec()), "{name}");
        assert_eq!(store.get(s, 7).unwrap(), None, "{name}");
        assert_eq!(store.sessions().unwrap(), vec![s, other], "{name}");
    }
}

#[test]
fn a_store_hands_out_each_session_id_once_and_keeps_blobs_by_hash() {
    for (name, store, _dir) in stores() {
        let ids: std::collections::HashSet<_> =
            (0..100).map(|_| store.new_session_id().unwrap()).collect();
        assert_eq!(ids.len(), 100, "{name}");
        let hash = [3u8; 32];
        assert!(!store.has_blob(&hash).unwrap(), "{name}");
        store.put_blob(&hash, b"first").unwrap();
        store.put_blob(&hash, b"second").unwrap();
        assert_eq!(
            store.blob(&hash).unwrap(),
            Some(b"first".to_vec()),
            "{name}"
        );
        store.sync().unwrap();
    }
}

#[tokio::test]
async fn readers_see_a_record_only_once_it_is_durable() {
    for (name, journal, _dir) in journals() {
        let mut writer = journal.create_session().unwrap();
        let session = writer.session();
        let mut watch = journal.watch(session);
        writer
            .append(RecordKind::SessionCreated, b"{}", &[])
            .unwrap();
        writer.append(RecordKind::ModelRequest, b"{}", &[]).unwrap();
        assert_eq!(journal.records(session).count(), 0, "{name}");
        assert_eq!(journal.record(session, 0).unwrap(), None, "{name}");
        assert!(!watch.has_changed().unwrap(), "{name}");
        writer
            .append_durable(RecordKind::ModelResponse, b"{}", &[])
            .await
            .unwrap();
        assert!(watch.has_changed().unwrap(), "{name}");
        assert_eq!(*watch.borrow_and_update(), 2, "{name}");
        assert_eq!(journal.records(session).count(), 3, "{name}");
        assert_eq!(journal.verify(session), Ok(3), "{name}");
    }
}

#[tokio::test]
async fn concurrent_durable_appends_share_commits() {
    for (name, journal, _dir) in journals() {
        let before = journal.flush_count();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let mut writer = journal.create_session().unwrap();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    writer
                        .append_durable(RecordKind::ToolResult, b"{}", &[])
                        .await
                        .unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let commits = journal.flush_count() - before;
        assert!(commits < 320, "{name}: {commits} commits for 320 appends");
    }
}

/// A store whose writes start failing on demand, as a full disk makes them.
struct FailingStore {
    inner: MemoryStore,
    failing: std::sync::atomic::AtomicBool,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Io(
                "No space left on device (os error 28)".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for FailingStore {
    fn new_session_id(&self) -> Result<u64, StoreError> {
        self.inner.new_session_id()
    }
    fn advance_session_ids(&self, past: u64) -> Result<(), StoreError> {
        self.inner.advance_session_ids(past)
    }
    fn append(&self, s: u64, first: u64, records: &[Vec<u8>]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.append(s, first, records)
    }
    fn get(&self, s: u64, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(s, seq)
    }
    fn last(&self, s: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.last(s)
    }
    fn range(&self, s: u64, from: u64, to: u64) -> longrun_journal::store::RecordIter<'_> {
        self.inner.range(s, from, to)
    }
    fn sessions(&self) -> Result<Vec<u64>, StoreError> {
        self.inner.sessions()
    }
    fn put_blob(&self, hash: &[u8; 32], bytes: &[u8]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_blob(hash, bytes)
    }
    fn has_blob(&self, hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.inner.has_blob(hash)
    }
    fn blob(&self, hash: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.blob(hash)
    }
    fn sync(&self) -> Result<longrun_journal::Synced, StoreError> {
        self.check().map(|()| Default::default())
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn read_only(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_failed_sync_fails_every_later_write_and_closing_does_not_wait_for_it() {
    let store = Arc::new(FailingStore {
        inner: MemoryStore::new(),
        failing: false.into(),
    });
    let journal = Journal::on_store(store.clone(), None).unwrap();
    let mut writer = journal.create_session().unwrap();
    let session = writer.session();
    writer
        .append_durable(RecordKind::SessionCreated, b"{}", &[])
        .await
        .unwrap();
    store
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = writer
        .append_durable(RecordKind::ToolIntent, b"{}", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    // Sticky: even with the store writable again, nothing more is taken
    // from this journal (a new open decides what is there).
    store
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        writer.append(RecordKind::ToolResult, b"{}", &[]),
        Err(JournalError::Failed(_))
    ));
    assert!(matches!(
        journal.put_blob(b"x"),
        Err(JournalError::Failed(_))
    ));
    assert!(matches!(journal.sync().await, Err(JournalError::Failed(_))));
    // Readers saw only what was durable.
    assert_eq!(journal.records(session).count(), 1);
    drop(writer);
    let started = Instant::now();
    drop(journal);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn records_chain_from_the_genesis_of_their_session() {
    for (name, journal, _dir) in journals() {
        let mut writer = journal.create_session().unwrap();
        let session = writer.session();
        for _ in 0..5 {
            writer.append(RecordKind::ToolResult, b"{}", &[]).unwrap();
        }
        journal.flush_now().unwrap();
        let records: Vec<_> = journal.records(session).map(Result::unwrap).collect();
        assert_eq!(records.len(), 5, "{name}");
        for pair in records.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "{name}");
        }
        // A second writer of the same session is refused while one exists.
        assert!(matches!(
            journal.open_session(session),
            Err(JournalError::WriterTaken(s)) if s == session
        ));
    }
}
