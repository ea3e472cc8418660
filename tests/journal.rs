//! The step journal on its default store: records chain by hash, survive a reopen, share
//! flushes between sessions, and any change to history is found and named.

use std::sync::Arc;

use longrun_host::journal::{
    Hash, Journal, JournalError, Location, RecordKind, SessionId, VerifyError,
};

mod common;
use common::tamper::{key, raw, tamper};

/// A session of `steps` records; every third one references a blob (a
/// shared one, stored once, and one of its own).
fn write_session(journal: &Arc<Journal>, steps: u64) -> SessionId {
    let shared = journal.put_blob(&[7u8; 4096]).unwrap();
    let mut writer = journal.create_session().unwrap();
    for i in 0..steps {
        let payload = format!(r#"{{"step":{i}}}"#);
        let blobs: Vec<Hash> = if i % 3 == 0 {
            vec![
                shared,
                journal
                    .put_blob(format!("output of step {i}").as_bytes())
                    .unwrap(),
            ]
        } else {
            vec![]
        };
        writer
            .append(RecordKind::ToolResult, payload.as_bytes(), &blobs)
            .unwrap();
    }
    // Readers see what is durable.
    journal.flush_now().unwrap();
    writer.session()
}

/// The raw blob store of a closed journal: bytes by number, numbers by hash.
#[test]
fn records_chain_and_read_back_in_order_with_their_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let session = write_session(&journal, 10);
    let records: Vec<_> = journal.records(session).map(Result::unwrap).collect();
    assert_eq!(records.len(), 10);
    for (i, pair) in records.windows(2).enumerate() {
        assert_eq!(pair[0].seq, i as u64);
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }
    assert_eq!(records[3].payload, br#"{"step":3}"#);
    assert_eq!(
        journal.blob(&records[3].blobs[1]).unwrap(),
        b"output of step 3"
    );
    assert_eq!(journal.verify(session), Ok(10));
}

#[test]
fn a_session_goes_on_after_the_journal_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let session = {
        let journal = Journal::open(dir.path()).unwrap();
        write_session(&journal, 5)
    };
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.sessions().unwrap(), vec![session]);
    let mut writer = journal.open_session(session).unwrap();
    assert_eq!(writer.next_seq(), 5);
    writer.append(RecordKind::SessionEnded, b"{}", &[]).unwrap();
    assert_eq!(journal.verify(session), Ok(5), "not durable yet: not read");
    journal.flush_now().unwrap();
    assert_eq!(journal.verify(session), Ok(6));
}

#[test]
fn a_session_has_only_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let writer = journal.create_session().unwrap();
    let mut w = journal.create_session().unwrap();
    w.append(RecordKind::SessionCreated, b"{}", &[]).unwrap();
    let mut first = writer;
    first
        .append(RecordKind::SessionCreated, b"{}", &[])
        .unwrap();
    assert!(journal.open_session(first.session()).is_err());
    let session = first.session();
    drop(first);
    assert!(journal.open_session(session).is_ok());
}

#[test]
fn a_journal_held_open_elsewhere_is_refused_naming_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _holder = Journal::open(dir.path()).unwrap();
    let err = Journal::open(dir.path()).err().unwrap();
    assert!(matches!(err, JournalError::Locked(ref path) if path == dir.path()));
    assert!(err.to_string().contains("is open elsewhere"), "{err}");
}

#[test]
fn a_journal_reopens_at_once_after_it_is_closed() {
    // sled's background writers hold its lock a moment after a close; a
    // reopen in the same process waits for them instead of failing.
    let dir = tempfile::tempdir().unwrap();
    for round in 0..50u64 {
        let journal = Journal::open(dir.path()).unwrap();
        let mut writer = journal.create_session().unwrap();
        writer
            .append(RecordKind::SessionCreated, b"{}", &[])
            .unwrap();
        assert_eq!(journal.sessions().unwrap().len() as u64, round + 1);
    }
}

#[test]
fn a_record_cannot_reference_a_blob_that_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut writer = journal.create_session().unwrap();
    assert!(
        writer
            .append(RecordKind::ToolResult, b"{}", &[[9u8; 32]])
            .is_err()
    );
    assert_eq!(writer.next_seq(), 0, "nothing was appended");
}

#[test]
fn a_blob_is_stored_once_however_often_it_is_referenced() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    write_session(&journal, 30);
    drop(journal);
    let (_, blobs) = raw(dir.path());
    // One shared blob, plus one of its own for each of the 10 steps i % 3 == 0.
    assert_eq!(blobs.len(), 11);
}

#[test]
fn every_changed_byte_of_every_record_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let session = {
        let journal = Journal::open(dir.path()).unwrap();
        write_session(&journal, 8)
    };
    let (records, _) = raw(dir.path());
    let originals: Vec<Vec<u8>> = (0..8)
        .map(|i| records.get(key(session, i)).unwrap())
        .collect();
    let mut checked = 0;
    for (seq, original) in originals.iter().enumerate() {
        for at in 0..original.len() {
            let mut changed = original.clone();
            changed[at] ^= 0x01;
            tamper(dir.path(), |records, _| {
                records.insert(key(session, seq as u64), changed);
            });
            let journal = Journal::open(dir.path()).unwrap();
            let err = journal.verify(session).unwrap_err();
            assert_eq!(err.seq, seq as u64, "byte {at} of record {seq}: {err}");
            drop(journal);
            tamper(dir.path(), |records, _| {
                records.insert(key(session, seq as u64), original.clone());
            });
            checked += 1;
        }
    }
    assert!(checked > 500);
    assert_eq!(Journal::open(dir.path()).unwrap().verify(session), Ok(8));
}

#[test]
fn a_deleted_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let session = write_session(&Journal::open(dir.path()).unwrap(), 10);
    tamper(dir.path(), |records, _| {
        records.remove(key(session, 4));
    });
    let err = Journal::open(dir.path())
        .unwrap()
        .verify(session)
        .unwrap_err();
    assert_eq!(
        err,
        VerifyError {
            session,
            seq: 4,
            why: "missing: the next record stored is 5".into()
        }
    );
}

#[test]
fn a_deleted_last_record_is_named_by_the_acknowledged_head() {
    // Truncating the tail leaves a valid, shorter chain; the head the
    // journal acknowledged, kept outside the store, is what shows it.
    let dir = tempfile::tempdir().unwrap();
    let session = write_session(&Journal::open(dir.path()).unwrap(), 10);
    tamper(dir.path(), |records, _| {
        records.remove(key(session, 9));
    });
    let err = Journal::open(dir.path())
        .unwrap()
        .verify(session)
        .unwrap_err();
    assert_eq!(err.seq, 9);
    assert_eq!(err.why, format!("record 9 of session {session} is missing"));
}

#[test]
fn a_reordered_pair_of_records_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let session = write_session(&Journal::open(dir.path()).unwrap(), 10);
    tamper(dir.path(), |records, _| {
        let a = records.get(key(session, 6)).unwrap();
        let b = records.get(key(session, 7)).unwrap();
        records.insert(key(session, 6), b);
        records.insert(key(session, 7), a);
    });
    let err = Journal::open(dir.path())
        .unwrap()
        .verify(session)
        .unwrap_err();
    assert_eq!(err.seq, 6);
    assert_eq!(err.why, "out of place: it says it is record 7");
}

#[test]
fn a_swapped_blob_is_named_at_the_first_record_that_references_it() {
    let dir = tempfile::tempdir().unwrap();
    let (session, blob) = {
        let journal = Journal::open(dir.path()).unwrap();
        let session = write_session(&journal, 10);
        let blob = journal.records(session).nth(6).unwrap().unwrap().blobs[1];
        (session, blob)
    };
    tamper(dir.path(), |_, blobs| {
        blobs.replace(blob, b"output of step 7");
    });
    let err = Journal::open(dir.path())
        .unwrap()
        .verify(session)
        .unwrap_err();
    assert_eq!(err.seq, 6);
    assert!(err.why.contains("does not match its hash"), "{err}");
}

#[test]
fn a_record_moved_to_another_session_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = {
        let journal = Journal::open(dir.path()).unwrap();
        (write_session(&journal, 3), write_session(&journal, 3))
    };
    tamper(dir.path(), |records, _| {
        let from_a = records.get(key(a, 1)).unwrap();
        records.insert(key(b, 1), from_a);
    });
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.verify(a), Ok(3));
    assert_eq!(journal.verify(b).unwrap_err().seq, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_appends_of_concurrent_sessions_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut writer = journal.create_session().unwrap();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                writer
                    .append_durable(RecordKind::ToolIntent, format!("{i}").as_bytes(), &[])
                    .await
                    .unwrap();
            }
            writer.session()
        }));
    }
    let mut sessions = Vec::new();
    for t in tasks {
        sessions.push(t.await.unwrap());
    }
    let flushes = journal.flush_count();
    assert!(
        flushes < 32 * 20 / 2,
        "{flushes} flushes for {} durable appends",
        32 * 20
    );
    for s in sessions {
        assert_eq!(journal.verify(s), Ok(20));
    }
}

#[test]
fn an_unreadable_record_is_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let session = write_session(&Journal::open(dir.path()).unwrap(), 3);
    tamper(dir.path(), |records, _| {
        records.insert(key(session, 1), b"\x01\x05short".as_slice());
    });
    let journal = Journal::open(dir.path()).unwrap();
    let err = journal.verify(session).unwrap_err();
    assert_eq!(err.seq, 1);
    assert!(err.why.contains("truncated"), "{err}");
    let read: Vec<_> = journal.records(session).collect();
    assert!(read[1].is_err());
    assert!(
        journal.open_session(session).is_ok(),
        "the last record is intact"
    );
}

#[test]
fn one_changed_byte_in_a_blob_is_named_at_the_first_record_that_references_it() {
    let dir = tempfile::tempdir().unwrap();
    let (session, shared) = {
        let journal = Journal::open(dir.path()).unwrap();
        let session = write_session(&journal, 10);
        let shared = journal.records(session).next().unwrap().unwrap().blobs[0];
        (session, shared)
    };
    tamper(dir.path(), |_, blobs| {
        let mut bytes = blobs.get(shared);
        bytes[1234] ^= 0x80;
        blobs.replace(shared, &bytes);
    });
    let journal = Journal::open(dir.path()).unwrap();
    let err = journal.verify(session).unwrap_err();
    assert_eq!(
        err.seq, 0,
        "the shared blob is first referenced by record 0: {err}"
    );
    assert!(err.why.contains("does not match its hash"), "{err}");
    assert!(
        matches!(journal.blob(&shared), Err(JournalError::CorruptBlob(h)) if h == shared),
        "reading it back refuses it too"
    );
}

/// sled#1527: a kill while sled writes a snapshot leaves an unfinished
/// `snap.*.generating` file that its reader takes for the latest snapshot
/// and calls corrupt, for good. The journal sets it aside and opens, with
/// every record.
#[test]
fn an_unfinished_snapshot_file_left_by_a_kill_is_set_aside_and_the_journal_opens() {
    let dir = tempfile::tempdir().unwrap();
    let session = {
        let journal =
            Journal::open_location(&Location::Sled(dir.path().into()), Default::default()).unwrap();
        write_session(&journal, 5)
    };
    for (name, bytes) in [
        ("snap.FFFFFFFFFFFFFFFF.generating", &b""[..]),
        ("snap.FFFFFFFFFFFFFFFE.generating", &b"cut short"[..]),
    ] {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }

    let journal = Journal::open(dir.path()).expect("the journal opens");

    assert_eq!(journal.records(session).count(), 5);
    journal.verify(session).unwrap();
    for name in [
        "snap.FFFFFFFFFFFFFFFF.generating",
        "snap.FFFFFFFFFFFFFFFE.generating",
    ] {
        assert!(!dir.path().join(name).exists());
        assert!(
            dir.path()
                .join(format!("{}{name}", longrun_host::journal::SET_ASIDE_PREFIX))
                .exists()
        );
    }
}
