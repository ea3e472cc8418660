//! The PostgreSQL store beyond what every store does (`conformance.rs`):
//! rows changed with plain SQL are caught and named, the schema is the
//! host's to create and migrate, a read-only journal writes nothing, two
//! writers of one session never interleave, and acknowledged records
//! survive the database server's crash. Each test runs a private cluster.

use longrun_journal::{Journal, Location, PostgresStore, RecordKind, SessionId, Store, StoreError};
use longrun_test_postgres::Cluster;

fn cluster() -> (Cluster, Location) {
    let cluster = Cluster::start().unwrap();
    let url = cluster.create_database("journal").unwrap();
    (cluster, Location::Postgres(url))
}

/// A session of `n` durable records, written and closed.
fn write_session(location: &Location, n: usize) -> SessionId {
    let journal = Journal::open_location(location, Default::default()).unwrap();
    let mut writer = journal.create_session().unwrap();
    let blob = journal.put_blob(b"a tool's output").unwrap();
    for i in 0..n {
        let payload = format!("{{\"step\":{i}}}");
        writer
            .append(RecordKind::ToolResult, payload.as_bytes(), &[blob])
            .unwrap();
    }
    journal.flush_now().unwrap();
    writer.session()
}

fn verify(location: &Location, session: SessionId) -> Result<u64, longrun_journal::VerifyError> {
    Journal::open_location_read_only(location, Default::default())
        .unwrap()
        .verify(session)
}

#[test]
fn a_payload_byte_changed_with_sql_is_named() {
    let (cluster, location) = cluster();
    let session = write_session(&location, 5);
    assert_eq!(verify(&location, session), Ok(5));
    cluster
        .psql(
            "journal",
            &format!(
                "UPDATE longrun_records \
                 SET bytes = set_byte(bytes, length(bytes) - 3, get_byte(bytes, length(bytes) - 3) # 1) \
                 WHERE session = {session} AND seq = 2"
            ),
        )
        .unwrap();
    let bad = verify(&location, session).unwrap_err();
    assert_eq!((bad.session, bad.seq), (session, 2), "{bad}");
}

#[test]
fn a_record_deleted_with_sql_is_named() {
    let (cluster, location) = cluster();
    let session = write_session(&location, 5);
    cluster
        .psql(
            "journal",
            &format!("DELETE FROM longrun_records WHERE session = {session} AND seq = 2"),
        )
        .unwrap();
    let bad = verify(&location, session).unwrap_err();
    assert_eq!(bad.seq, 2, "{bad}");
    assert!(bad.why.contains("missing"), "{bad}");
}

#[test]
fn records_reordered_with_sql_are_named() {
    let (cluster, location) = cluster();
    let session = write_session(&location, 5);
    cluster
        .psql(
            "journal",
            &format!(
                "UPDATE longrun_records r SET bytes = o.bytes FROM longrun_records o \
                 WHERE r.session = {session} AND o.session = {session} \
                 AND ((r.seq = 2 AND o.seq = 3) OR (r.seq = 3 AND o.seq = 2))"
            ),
        )
        .unwrap();
    let bad = verify(&location, session).unwrap_err();
    assert_eq!(bad.seq, 2, "{bad}");
    assert!(bad.why.contains("out of place"), "{bad}");
}

#[test]
fn a_blob_changed_with_sql_is_named() {
    let (cluster, location) = cluster();
    let session = write_session(&location, 3);
    cluster
        .psql(
            "journal",
            "UPDATE longrun_blobs SET bytes = 'another output'::bytea",
        )
        .unwrap();
    let bad = verify(&location, session).unwrap_err();
    assert_eq!(bad.seq, 0, "{bad}");
    assert!(bad.why.contains("does not match its hash"), "{bad}");
}

#[test]
fn the_schema_is_created_once_and_a_newer_one_is_refused() {
    let (cluster, location) = cluster();
    let Location::Postgres(url) = &location else {
        unreachable!()
    };
    // Hosts starting together migrate once.
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresStore::open(&url).map(drop))
        })
        .collect();
    for open in opens {
        open.join().unwrap().unwrap();
    }
    assert_eq!(
        cluster
            .psql(
                "journal",
                "SELECT string_agg(version::text, ',' ORDER BY version) FROM longrun_schema"
            )
            .unwrap(),
        longrun_journal::store::postgres::MIGRATIONS
            .iter()
            .map(|(version, _)| version.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    cluster
        .psql(
            "journal",
            "INSERT INTO longrun_schema (version) VALUES (99)",
        )
        .unwrap();
    for opened in [PostgresStore::open(url), PostgresStore::open_read_only(url)] {
        let err = opened.err().expect("a newer schema is refused").to_string();
        assert!(err.contains("newer longrun"), "{err}");
    }
}

#[test]
fn a_read_only_journal_writes_nothing() {
    let (cluster, location) = cluster();
    let session = write_session(&location, 2);
    let count = || {
        cluster
            .psql(
                "journal",
                "SELECT (SELECT count(*) FROM longrun_records) || '/' || nextval('longrun_session_ids')",
            )
            .unwrap()
    };
    let before = count();
    let journal = Journal::open_location_read_only(&location, Default::default()).unwrap();
    assert!(journal.create_session().is_err());
    assert!(journal.open_session(session).is_err());
    assert!(journal.put_blob(b"x").is_err());
    assert_eq!(journal.verify(session), Ok(2));
    drop(journal);
    // The sequence moved once, for `count` itself.
    let after = count();
    assert_eq!(before.split('/').next(), after.split('/').next());
    assert_eq!(
        before.split('/').nth(1).unwrap().parse::<u64>().unwrap() + 1,
        after.split('/').nth(1).unwrap().parse::<u64>().unwrap()
    );
    // And a database with no journal in it is not one to read.
    cluster.create_database("empty").unwrap();
    let err = PostgresStore::open_read_only(&cluster.url("empty"))
        .err()
        .expect("no journal there")
        .to_string();
    assert!(err.contains("no longrun journal"), "{err}");
}

#[test]
fn two_stores_never_interleave_one_session() {
    let (_cluster, location) = cluster();
    let Location::Postgres(url) = &location else {
        unreachable!()
    };
    let first = PostgresStore::open(url).unwrap();
    let second = PostgresStore::open(url).unwrap();
    let session = first.new_session_id().unwrap();
    first
        .append(session, 0, &[b"a0".to_vec(), b"a1".to_vec()])
        .unwrap();
    // The second store checks against the database, which does not hold
    // the first one's queued records yet: it takes the batch...
    second
        .append(
            session,
            0,
            &[b"b0".to_vec(), b"b1".to_vec(), b"b2".to_vec()],
        )
        .unwrap();
    first.sync().unwrap();
    // ...and the database refuses it as a whole.
    let refused = second.sync().unwrap_err();
    assert!(
        matches!(refused, StoreError::Conflict { session: s, .. } if s == session),
        "{refused}"
    );
    let stored: Vec<_> = first
        .range(session, 0, u64::MAX)
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored, vec![(0, b"a0".to_vec()), (1, b"a1".to_vec())]);
    // A store that lost a race learns the session's end again.
    assert!(matches!(
        second.append(session, 2, &[b"b2".to_vec()]),
        Ok(())
    ));
    second.sync().unwrap();
    assert_eq!(first.last(session).unwrap(), Some((2, b"b2".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_a_crash_of_the_database_server() {
    let (mut cluster, location) = cluster();
    let journal = Journal::open_location(&location, Default::default()).unwrap();
    let mut writer = journal.create_session().unwrap();
    let session = writer.session();
    for i in 0..50 {
        writer
            .append_durable(RecordKind::ToolResult, format!("{i}").as_bytes(), &[])
            .await
            .unwrap();
    }
    // Not acknowledged: may be lost, and must not break the chain.
    writer.append(RecordKind::ToolResult, b"50", &[]).unwrap();
    cluster.crash();
    let after_crash = writer
        .append_durable(RecordKind::ToolResult, b"51", &[])
        .await;
    assert!(after_crash.is_err(), "a commit to a dead server fails");
    drop(writer);
    drop(journal);
    cluster.restart().unwrap();
    let verified = verify(&location, session).unwrap();
    assert_eq!(verified, 50, "the 50 acknowledged records, nothing after");
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let (cluster, location) = cluster();
    drop(cluster);
    let err = Journal::open_location(&location, Default::default())
        .err()
        .expect("nobody listens there")
        .to_string();
    assert!(err.contains("PostgreSQL"), "{err}");
}

/// Host A runs a session under a lease, stops renewing it (paused, or cut
/// off), host B takes it over and writes; A's next durable append is
/// refused in the same transaction that would have written it, A's
/// journal says why, and the session's chain has exactly one writer per
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_lost_its_lease_is_fenced_and_never_writes_again() {
    use longrun_journal::{Acquired, JournalError};
    use std::time::Duration;
    let (_cluster, location) = cluster();
    let host_a = Journal::open_location(&location, Default::default()).unwrap();
    let host_b = Journal::open_location(&location, Default::default()).unwrap();
    let ttl = Duration::from_millis(300);

    let mut a = host_a.create_session().unwrap();
    let session = a.session();
    let Acquired::Taken(lease_a) = host_a.acquire_lease(session, "host-a", ttl).unwrap() else {
        panic!("a free lease is taken")
    };
    for i in 0..3 {
        a.append_durable(RecordKind::ToolResult, format!("a{i}").as_bytes(), &[])
            .await
            .unwrap();
    }
    // While A's lease runs, B cannot take it.
    let Acquired::HeldBy(held) = host_b.acquire_lease(session, "host-b", ttl).unwrap() else {
        panic!("a live lease is not taken over")
    };
    assert_eq!((held.owner.as_str(), held.epoch), ("host-a", lease_a.epoch));

    // A is paused past its lease; B takes over under the next epoch and
    // goes on from what the store holds.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    let Acquired::Taken(lease_b) = host_b.acquire_lease(session, "host-b", ttl).unwrap() else {
        panic!("a lapsed lease is taken over")
    };
    assert_eq!(lease_b.epoch, lease_a.epoch + 1);

    // A wakes up before B has written anything (so no record of B's is in
    // the way: only the lease can refuse it). Its renewal fails, and so
    // does its next append, however it tries.
    assert_eq!(host_a.renew_lease(&lease_a, ttl).unwrap(), None);
    let refused = a
        .append_durable(RecordKind::ToolResult, b"a3", &[])
        .await
        .unwrap_err();
    let JournalError::Fenced(fenced) = &refused else {
        panic!("fenced, not {refused}")
    };
    assert_eq!(
        (
            fenced.session,
            fenced.held,
            fenced.current,
            fenced.owner.as_str()
        ),
        (session, lease_a.epoch, lease_b.epoch, "host-b")
    );
    assert!(
        refused.to_string().contains("taken over by host-b"),
        "{refused}"
    );
    assert!(matches!(
        a.append(RecordKind::ToolResult, b"a4", &[]),
        Err(JournalError::Fenced(_))
    ));
    // Other sessions of host A go on.
    let mut other = host_a.create_session().unwrap();
    other
        .append_durable(RecordKind::ToolResult, b"other", &[])
        .await
        .unwrap();

    // B goes on from what the store holds; the chain holds A's three
    // records and then B's.
    let mut b = host_b.open_session(session).unwrap();
    for payload in [b"b3", b"b4"] {
        b.append_durable(RecordKind::ToolResult, payload, &[])
            .await
            .unwrap();
    }
    drop((a, b, other));
    drop((host_a, host_b));
    let reader = Journal::open_location_read_only(&location, Default::default()).unwrap();
    assert_eq!(reader.verify(session), Ok(5));
    let payloads: Vec<Vec<u8>> = reader
        .records(session)
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(
        payloads,
        [&b"a0"[..], b"a1", b"a2", b"b3", b"b4"].map(|p| p.to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_host_wakes_a_watcher_on_another_host() {
    use std::time::Duration;
    let (_cluster, location) = cluster();
    let host_a = Journal::open_location(&location, Default::default()).unwrap();
    let host_b = Journal::open_location(&location, Default::default()).unwrap();
    let mut a = host_a.create_session().unwrap();
    let session = a.session();
    let mut changes = host_b.watch(session);
    // B's listener connects in the background (and then wakes everyone
    // once, as it may have missed commits): wait until a commit of A's is
    // announced with its sequence number.
    let mut seq = 0;
    loop {
        a.append_durable(RecordKind::ToolResult, b"r", &[])
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(200), changes.changed())
            .await
            .is_ok()
            && *changes.borrow_and_update() == seq
        {
            break;
        }
        seq += 1;
        assert!(seq < 50, "no commit of A's was announced to B");
    }
    // From now on each of A's commits wakes B with A's head, and B reads
    // what A wrote.
    for _ in 0..5 {
        seq += 1;
        a.append_durable(RecordKind::ToolResult, b"r", &[])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("the commit is announced")
            .unwrap();
        assert_eq!(*changes.borrow_and_update(), seq);
        assert_eq!(host_b.records(session).count() as u64, seq + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lessee_leases_its_new_sessions_keeps_them_and_loses_them_to_a_takeover() {
    use longrun_journal::{Acquired, JournalError, Lessee};
    use std::time::Duration;
    let (_cluster, location) = cluster();
    let ttl = Duration::from_millis(300);
    let host_a = Journal::open_location(&location, Default::default()).unwrap();
    let host_b = Journal::open_location(&location, Default::default()).unwrap();
    for (journal, owner) in [(&host_a, "host-a"), (&host_b, "host-b")] {
        journal
            .lease_as(Lessee {
                owner: owner.into(),
                ttl,
            })
            .unwrap();
    }

    // A new session is leased before its first record exists.
    let mut a = host_a.create_session().unwrap();
    let session = a.session();
    let lease_a = host_a.held_lease(session).expect("leased at creation");
    assert_eq!((lease_a.owner.as_str(), lease_a.epoch), ("host-a", 1));
    let Acquired::HeldBy(held) = host_b.take_over(session).unwrap() else {
        panic!("a live lease is not taken over")
    };
    assert_eq!(held.owner, "host-a");
    a.append_durable(RecordKind::ToolResult, b"a0", &[])
        .await
        .unwrap();

    // Renewed, it outlives its length.
    for _ in 0..6 {
        tokio::time::sleep(ttl / 3).await;
        assert_eq!(host_a.renew_leases().unwrap(), []);
    }
    assert!(!host_b.lapsed_leases().unwrap().contains(&session));

    // A stops renewing (paused): the lease lapses and B takes it over.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(host_b.lapsed_leases().unwrap().contains(&session));
    let Acquired::Taken(lease_b) = host_b.take_over(session).unwrap() else {
        panic!("a lapsed lease is taken over")
    };
    assert_eq!(lease_b.epoch, 2);

    // A wakes: its renewal finds the lease lost, and its writer is refused
    // from then on, naming the new owner.
    let lost = host_a.renew_leases().unwrap();
    assert_eq!(lost.len(), 1);
    assert_eq!(
        (
            lost[0].session,
            lost[0].held,
            lost[0].current,
            lost[0].owner.as_str()
        ),
        (session, 1, 2, "host-b")
    );
    assert_eq!(host_a.held_lease(session), None);
    assert!(matches!(
        a.append(RecordKind::ToolResult, b"a1", &[]),
        Err(JournalError::Fenced(_))
    ));

    // B writes on; a reader on A, once A has synced, follows B's records
    // rather than stopping at the last record A wrote.
    host_a.sync().await.unwrap();
    let mut b = host_b.open_session(session).unwrap();
    b.append_durable(RecordKind::ToolResult, b"b1", &[])
        .await
        .unwrap();
    let seen: Vec<Vec<u8>> = host_a
        .records(session)
        .map(|r| r.unwrap().payload)
        .collect();
    assert_eq!(seen, [b"a0".to_vec(), b"b1".to_vec()]);

    // An ended session's retired lease never lapses, and its epoch still
    // fences an older holder.
    host_b.retire_lease(session).unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(!host_b.lapsed_leases().unwrap().contains(&session));
    let retired = host_a.lease(session).unwrap().unwrap();
    assert_eq!((retired.owner.as_str(), retired.epoch), ("host-b", 2));
}

#[test]
fn a_request_left_for_a_session_is_taken_once_by_the_host_holding_its_lease() {
    use longrun_journal::Lessee;
    use longrun_journal::payload::{Input, SteeringRequest};
    let (_cluster, location) = cluster();
    let [host_a, host_b] = ["host-a", "host-b"].map(|owner| {
        let journal = Journal::open_location(&location, Default::default()).unwrap();
        journal
            .lease_as(Lessee {
                owner: owner.into(),
                ttl: std::time::Duration::from_secs(30),
            })
            .unwrap();
        journal
    });
    let session = host_a.create_session().unwrap().session();
    let message = |text: &str| {
        SteeringRequest::Message(Input {
            text: text.into(),
            by: "ops".into(),
        })
    };
    for request in [message("first"), SteeringRequest::Pause, message("third")] {
        host_b.post_request(session, &request).unwrap();
    }
    // B does not run the session: it takes nothing.
    assert_eq!(host_b.take_requests().unwrap(), []);
    assert_eq!(
        host_a.take_requests().unwrap(),
        [
            (session, message("first")),
            (session, SteeringRequest::Pause),
            (session, message("third"))
        ]
    );
    assert_eq!(host_a.take_requests().unwrap(), []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_journal_failed_lets_its_leases_lapse_for_other_hosts() {
    use longrun_journal::{Acquired, Lessee};
    use std::time::Duration;
    let (mut cluster, location) = cluster();
    let ttl = Duration::from_millis(300);
    let journal = Journal::open_location(&location, Default::default()).unwrap();
    journal
        .lease_as(Lessee {
            owner: "host-a".into(),
            ttl,
        })
        .unwrap();
    let mut writer = journal.create_session().unwrap();
    let session = writer.session();
    writer
        .append_durable(RecordKind::ToolResult, b"r0", &[])
        .await
        .unwrap();
    // The database goes away under a commit: the journal fails and takes
    // no more records, even once the database is back.
    cluster.crash();
    assert!(
        writer
            .append_durable(RecordKind::ToolResult, b"r1", &[])
            .await
            .is_err()
    );
    cluster.restart().unwrap();
    assert!(journal.failure().is_some());
    // So it renews nothing: once the lease has run out, the session is
    // given up here and another host takes it.
    tokio::time::sleep(ttl).await;
    let lost = journal.renew_leases().unwrap();
    assert_eq!(
        lost.iter().map(|f| f.session).collect::<Vec<_>>(),
        [session]
    );
    let other = Journal::open_location(&location, Default::default()).unwrap();
    let Acquired::Taken(lease) = other.acquire_lease(session, "host-b", ttl).unwrap() else {
        panic!("the failed host's lease lapsed")
    };
    assert_eq!(lease.epoch, 2);
}

#[test]
fn a_local_store_has_no_leases() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let session = journal.create_session().unwrap().session();
    let refused = journal
        .acquire_lease(session, "host", std::time::Duration::from_secs(1))
        .unwrap_err();
    assert!(
        refused.to_string().contains("no session leases"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_copied_to_postgres_and_back_keeps_ids_chains_and_blobs() {
    use longrun_journal::copy::{CopyError, copy};
    let (_cluster, in_postgres) = cluster();
    let dir = tempfile::tempdir().unwrap();
    let on_disk = Location::Dir(dir.path().join("from"));
    let mut sessions = Vec::new();
    {
        let journal = Journal::open_location(&on_disk, Default::default()).unwrap();
        // Session 0 left without records: ids in the copy must still not
        // collide with anything the source handed out and used.
        let _unused = journal.create_session().unwrap();
        for n in [3usize, 7] {
            let mut writer = journal.create_session().unwrap();
            let blob = journal.put_blob(format!("output {n}").as_bytes()).unwrap();
            for i in 0..n {
                writer
                    .append_durable(RecordKind::ToolResult, format!("{i}").as_bytes(), &[blob])
                    .await
                    .unwrap();
            }
            sessions.push(writer.session());
        }
    }
    let source = Journal::open_location_read_only(&on_disk, Default::default()).unwrap();
    let target = Journal::open_location(&in_postgres, Default::default()).unwrap();
    let copied = copy(&source, &target).unwrap();
    assert_eq!((copied.sessions, copied.records, copied.blobs), (2, 10, 2));
    assert_eq!(target.sessions().unwrap(), sessions);
    for &session in &sessions {
        let original: Vec<_> = source.records(session).map(Result::unwrap).collect();
        let copy: Vec<_> = target.records(session).map(Result::unwrap).collect();
        assert_eq!(
            original, copy,
            "session {session}: the same records, hashes and all"
        );
    }
    // New sessions come after the copied ones.
    assert!(target.create_session().unwrap().session() > *sessions.last().unwrap());
    // A second copy into the same journal is refused, and changes nothing.
    assert!(matches!(
        copy(&source, &target),
        Err(CopyError::Exists(s)) if s == sessions[0]
    ));
    drop(target);

    // And back, into a new directory.
    let back = Location::Dir(dir.path().join("back"));
    let from_postgres = Journal::open_location_read_only(&in_postgres, Default::default()).unwrap();
    let returned = Journal::open_location(&back, Default::default()).unwrap();
    assert_eq!(copy(&from_postgres, &returned).unwrap().records, 10);
    for &session in &sessions {
        assert_eq!(
            returned.verify(session),
            source.verify(session),
            "session {session}"
        );
    }
}

/// Blobs are checked in batches of 512; the first bad record is still the
/// one named, whether the fault is a blob or the chain after it (record
/// 1050's blob is still waiting for its batch when the walk reaches the
/// missing record 1100).
#[test]
fn a_bad_blob_among_many_is_named_before_a_later_break_in_the_chain() {
    let (cluster, location) = cluster();
    let session = {
        let journal = Journal::open_location(&location, Default::default()).unwrap();
        let mut writer = journal.create_session().unwrap();
        for i in 0..1200 {
            let blob = journal.put_blob(format!("output {i}").as_bytes()).unwrap();
            writer
                .append(RecordKind::ToolResult, b"{}", &[blob])
                .unwrap();
        }
        journal.flush_now().unwrap();
        writer.session()
    };
    assert_eq!(verify(&location, session), Ok(1200));
    cluster
        .psql(
            "journal",
            &format!("DELETE FROM longrun_records WHERE session = {session} AND seq = 1100"),
        )
        .unwrap();
    let chain = verify(&location, session).unwrap_err();
    assert_eq!(chain.seq, 1100, "{chain}");
    cluster
        .psql(
            "journal",
            "UPDATE longrun_blobs SET bytes = 'changed' WHERE bytes = 'output 1050'::bytea",
        )
        .unwrap();
    let blob = verify(&location, session).unwrap_err();
    assert_eq!(blob.seq, 1050, "{blob}");
    assert!(blob.why.contains("does not match its hash"), "{blob}");
}
