//! Acknowledged records that a store loses are named, never resumed over:
//! the journal compares each session's stored records with the head it
//! acknowledged, kept outside the store.

use std::path::Path;

use longrun_journal::{Journal, JournalError, RecordKind, SessionId, open_storage};

fn key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// A closed journal with one session of `n` durable records.
async fn written(dir: &Path, n: u64) -> SessionId {
    let journal = Journal::open(dir).unwrap();
    let mut writer = journal.create_session().unwrap();
    for _ in 0..n {
        writer
            .append_durable(RecordKind::ToolResult, b"{}", &[])
            .await
            .unwrap();
    }
    writer.session()
}

/// Remove records from the store's own tree, as sled's recovery does when it
/// truncates a damaged log.
fn drop_records(dir: &Path, session: SessionId, seqs: std::ops::Range<u64>) {
    let db = open_storage(sled::Config::new().path(dir)).unwrap();
    let records = db.open_tree("records").unwrap();
    for seq in seqs {
        records.remove(key(session, seq)).unwrap();
    }
    db.flush().unwrap();
}

#[tokio::test]
async fn a_lost_tail_is_named_and_the_session_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 10).await;
    drop_records(dir.path(), session, 7..10);
    let journal = Journal::open(dir.path()).unwrap();
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

#[tokio::test]
async fn a_session_whose_records_are_all_lost_is_still_listed() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 3).await;
    drop_records(dir.path(), session, 0..3);
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.sessions().unwrap(), vec![session]);
    assert_eq!(
        journal.loss(session).unwrap().to_string(),
        format!("records 0..2 of session {session} are missing")
    );
}

#[tokio::test]
async fn a_person_can_accept_a_loss_and_the_session_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 10).await;
    drop_records(dir.path(), session, 9..10);
    {
        let journal = Journal::open(dir.path()).unwrap();
        assert!(journal.loss(session).is_some());
        journal.accept_loss(session).unwrap();
        assert_eq!(journal.verify(session), Ok(9));
    }
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.loss(session), None, "accepting is durable");
    let mut writer = journal.open_session(session).unwrap();
    assert_eq!(writer.next_seq(), 9);
    writer
        .append_durable(RecordKind::SessionEnded, b"{}", &[])
        .await
        .unwrap();
    assert_eq!(journal.verify(session), Ok(10));
}

#[tokio::test]
async fn records_stored_but_never_acknowledged_are_not_a_loss() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 4).await;
    // Appended after the last acknowledgement; sled may or may not keep it.
    {
        let journal = Journal::open(dir.path()).unwrap();
        let mut writer = journal.open_session(session).unwrap();
        writer.append(RecordKind::ToolIntent, b"{}", &[]).unwrap();
    }
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.loss(session), None);
    assert!(journal.verify(session).is_ok());
}

#[tokio::test]
async fn a_changed_acknowledged_head_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 5).await;
    // Record 4 replaced by another record that chains just as well (as a
    // store that "repaired" its tail from elsewhere would hold).
    {
        let db = open_storage(sled::Config::new().path(dir.path())).unwrap();
        let records = db.open_tree("records").unwrap();
        let third = records.get(key(session, 3)).unwrap().unwrap();
        let third = longrun_journal::record::decode(session, &third).unwrap();
        let (other, _) = longrun_journal::record::encode(
            session,
            4,
            RecordKind::Error,
            &third.hash,
            &[],
            b"other",
        )
        .unwrap();
        records.insert(key(session, 4), other).unwrap();
        db.flush().unwrap();
    }
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(
        journal.loss(session).unwrap().to_string(),
        format!("record 4 of session {session} is not the one acknowledged as durable")
    );
    assert!(journal.open_session(session).is_err());
    assert_eq!(journal.verify(session).unwrap_err().seq, 4);
}

#[tokio::test]
async fn a_journal_opened_read_only_is_read_in_place_and_refuses_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let session = written(dir.path(), 5).await;
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
        assert!(
            journal
                .open_session(session)
                .unwrap()
                .append(RecordKind::Error, b"{}", &[])
                .is_err()
        );
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
