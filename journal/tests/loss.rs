//! Acknowledged records that a store loses are named, never resumed over:
//! the journal compares each session's stored records with the head it
//! acknowledged, kept outside the store. Every test runs on each store that
//! keeps a directory (segment files, sled).

use std::path::Path;

use longrun_journal::store::segments::{RawEntry, read_entries, write_entries};
use longrun_journal::{Journal, JournalError, Location, RecordKind, SessionId, open_storage};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Segments,
    Sled,
}

const KINDS: [Kind; 2] = [Kind::Segments, Kind::Sled];

fn open(kind: Kind, dir: &Path) -> std::sync::Arc<Journal> {
    let location = match kind {
        Kind::Segments => Location::Segments(dir.into()),
        Kind::Sled => Location::Sled(dir.into()),
    };
    Journal::open_location(&location, Default::default()).unwrap()
}

fn key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A closed journal with one session of `n` durable records.
async fn written(kind: Kind, dir: &Path, n: u64) -> SessionId {
    let journal = open(kind, dir);
    let mut writer = journal.create_session().unwrap();
    for _ in 0..n {
        writer
            .append_durable(RecordKind::ToolResult, b"{}", &[])
            .await
            .unwrap();
    }
    writer.session()
}

/// Change the records of a closed journal's store behind the journal's
/// back: `f` gets each record of `session` (by sequence number) and returns
/// what to keep under that number.
fn edit_records(
    kind: Kind,
    dir: &Path,
    session: SessionId,
    mut f: impl FnMut(u64, Vec<u8>) -> Option<Vec<u8>>,
) {
    match kind {
        Kind::Segments => {
            let entries = read_entries(dir)
                .unwrap()
                .into_iter()
                .filter_map(|entry| match entry {
                    RawEntry::Record {
                        session: s,
                        seq,
                        bytes,
                    } if s == session => f(seq, bytes).map(|bytes| RawEntry::Record {
                        session: s,
                        seq,
                        bytes,
                    }),
                    other => Some(other),
                })
                .collect::<Vec<_>>();
            write_entries(dir, &entries).unwrap();
        }
        Kind::Sled => {
            let db = open_storage(sled::Config::new().path(dir)).unwrap();
            let records = db.open_tree("records").unwrap();
            let mut seq = 0;
            while let Some(bytes) = records.get(key(session, seq)).unwrap() {
                match f(seq, bytes.to_vec()) {
                    Some(kept) => records.insert(key(session, seq), kept).unwrap(),
                    None => records.remove(key(session, seq)).unwrap(),
                };
                seq += 1;
            }
            db.flush().unwrap();
        }
    }
}

/// Remove records from the store, as a store's recovery does when it
/// truncates a damaged log.
fn drop_records(kind: Kind, dir: &Path, session: SessionId, seqs: std::ops::Range<u64>) {
    edit_records(kind, dir, session, |seq, bytes| {
        (!seqs.contains(&seq)).then_some(bytes)
    });
}

#[tokio::test]
async fn a_lost_tail_is_named_and_the_session_is_not_written_again() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 10).await;
        drop_records(kind, dir.path(), session, 7..10);
        let journal = open(kind, dir.path());
        let loss = journal.loss(session).expect("the loss is found on open");
        assert_eq!(
            loss.to_string(),
            format!("records 7..9 of session {session} are missing")
        );
        assert_eq!(journal.losses(), vec![loss.clone()]);
        let refused = journal.open_session(session).err().unwrap();
        assert!(matches!(refused, JournalError::Lost(_)), "{refused}");
        let bad = journal.verify(session).unwrap_err();
        assert_eq!(bad.seq, 7);
        assert!(bad.why.contains("records 7..9"), "{bad}");
        // Listed still, so a person sees it.
        assert_eq!(journal.sessions().unwrap(), vec![session]);
    }
}

#[tokio::test]
async fn a_session_whose_records_are_all_lost_is_still_listed() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 3).await;
        drop_records(kind, dir.path(), session, 0..3);
        let journal = open(kind, dir.path());
        assert_eq!(journal.sessions().unwrap(), vec![session]);
        assert_eq!(
            journal.loss(session).unwrap().to_string(),
            format!("records 0..2 of session {session} are missing")
        );
    }
}

#[tokio::test]
async fn a_person_can_accept_a_loss_and_the_session_goes_on() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 10).await;
        drop_records(kind, dir.path(), session, 9..10);
        {
            let journal = open(kind, dir.path());
            assert!(journal.loss(session).is_some());
            journal.accept_loss(session).unwrap();
            assert_eq!(journal.verify(session), Ok(9));
        }
        let journal = open(kind, dir.path());
        assert_eq!(journal.loss(session), None, "accepting is durable");
        let mut writer = journal.open_session(session).unwrap();
        assert_eq!(writer.next_seq(), 9);
        writer
            .append_durable(RecordKind::SessionEnded, b"{}", &[])
            .await
            .unwrap();
        assert_eq!(journal.verify(session), Ok(10));
    }
}

#[tokio::test]
async fn records_stored_but_never_acknowledged_are_not_a_loss() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 4).await;
        // Appended after the last acknowledgement; sled may or may not keep it.
        {
            let journal = open(kind, dir.path());
            let mut writer = journal.open_session(session).unwrap();
            writer.append(RecordKind::ToolIntent, b"{}", &[]).unwrap();
        }
        let journal = open(kind, dir.path());
        assert_eq!(journal.loss(session), None);
        assert!(journal.verify(session).is_ok());
    }
}

#[tokio::test]
async fn a_changed_acknowledged_head_is_named() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 5).await;
        // Record 4 replaced by another record that chains just as well (as a
        // store that "repaired" its tail from elsewhere would hold).
        let mut third = None;
        edit_records(kind, dir.path(), session, |seq, bytes| {
            if seq == 3 {
                third = Some(longrun_journal::record::decode(session, &bytes).unwrap());
            }
            if seq != 4 {
                return Some(bytes);
            }
            let third = third.as_ref().unwrap();
            let (other, _) = longrun_journal::record::encode(
                session,
                4,
                RecordKind::Error,
                &third.hash,
                &[],
                b"other",
            )
            .unwrap();
            Some(other)
        });
        let journal = open(kind, dir.path());
        assert_eq!(
            journal.loss(session).unwrap().to_string(),
            format!("record 4 of session {session} is not the one acknowledged as durable")
        );
        assert!(journal.open_session(session).is_err());
        assert_eq!(journal.verify(session).unwrap_err().seq, 4);
    }
}

#[tokio::test]
async fn a_sled_journal_opened_read_only_is_read_in_place_and_refuses_every_write() {
    let kind = Kind::Sled;
    let dir = tempfile::tempdir().unwrap();
    let session = written(kind, dir.path(), 5).await;
    // sled's own page-table snapshot (`snap.*`) may be written on any open:
    // it is an index of the log, not part of what the journal holds.
    let listing = |dir: &Path| {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with("snap."))
            .collect();
        names.sort();
        names
    };
    let heads = std::fs::read(dir.path().join(longrun_journal::heads::FILE_NAME)).unwrap();
    let before = listing(dir.path());
    let log = std::fs::read(dir.path().join("db")).unwrap();
    {
        let journal =
            Journal::open_read_only(dir.path(), longrun_journal::JournalOptions::AUDIT).unwrap();
        assert_eq!(journal.verify(session), Ok(5));
        assert_eq!(journal.records(session).count(), 5);
        assert!(journal.create_session().is_err());
        assert!(journal.put_blob(b"x").is_err());
        assert!(journal.open_session(session).is_err());
        // A writer elsewhere holds the journal: read-only does not wait long.
        let started = std::time::Instant::now();
        assert!(matches!(
            Journal::open_read_only(dir.path(), longrun_journal::JournalOptions::AUDIT),
            Err(JournalError::Locked(_))
        ));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
    assert_eq!(listing(dir.path()), before, "no file added");
    // sled zero-fills the rest of its last segment on open; every byte
    // that was written stays as it was.
    let after = std::fs::read(dir.path().join("db")).unwrap();
    assert!(after.len() >= log.len());
    assert!(
        after[..log.len()] == log[..],
        "the log's bytes are unchanged"
    );
    assert!(after[log.len()..].iter().all(|b| *b == 0));
    assert_eq!(
        std::fs::read(dir.path().join(longrun_journal::heads::FILE_NAME)).unwrap(),
        heads,
        "the acknowledged heads are unchanged"
    );
    let missing = tempfile::tempdir().unwrap();
    assert!(Journal::open_read_only(&missing.path().join("none"), Default::default()).is_err());
}

#[tokio::test]
async fn a_segment_journal_is_read_in_place_beside_its_writer_and_nothing_on_disk_changes() {
    let kind = Kind::Segments;
    let dir = tempfile::tempdir().unwrap();
    let session = written(kind, dir.path(), 5).await;
    let snapshot = |dir: &Path| {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name, std::fs::read(e.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot(dir.path());
    {
        let journal =
            Journal::open_read_only(dir.path(), longrun_journal::JournalOptions::AUDIT).unwrap();
        assert_eq!(journal.verify(session), Ok(5));
        assert!(journal.create_session().is_err());
        assert!(journal.put_blob(b"x").is_err());
        assert!(journal.open_session(session).is_err());
    }
    assert_eq!(snapshot(dir.path()), before, "not a byte changed");

    // A host writing it: a reader opens at once and sees what is durable.
    let writer_journal = open(kind, dir.path());
    let mut writer = writer_journal.open_session(session).unwrap();
    writer
        .append_durable(RecordKind::ToolIntent, b"{}", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let reader =
        Journal::open_read_only(dir.path(), longrun_journal::JournalOptions::AUDIT).unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(reader.verify(session), Ok(6));
    let missing = tempfile::tempdir().unwrap();
    assert!(Journal::open_read_only(&missing.path().join("none"), Default::default()).is_err());
    assert!(Journal::open_read_only(missing.path(), Default::default()).is_err());
}

/// A store that keeps what follows a damaged stretch (the segment store
/// does) has a hole below the acknowledged head: a loss like a lost tail,
/// named, and the session is not written again over it.
#[tokio::test]
async fn a_record_missing_before_the_acknowledged_head_is_named_and_not_resumed_over() {
    for kind in KINDS {
        let dir = tempfile::tempdir().unwrap();
        let session = written(kind, dir.path(), 10).await;
        drop_records(kind, dir.path(), session, 4..6);
        let journal = open(kind, dir.path());
        let loss = journal.loss(session).expect("the hole is found on open");
        assert_eq!(
            loss.to_string(),
            format!("records 4..5 of session {session} are missing"),
            "{kind:?}"
        );
        assert!(matches!(
            journal.open_session(session),
            Err(JournalError::Lost(_))
        ));
        assert_eq!(journal.verify(session).unwrap_err().seq, 4);
    }
}
