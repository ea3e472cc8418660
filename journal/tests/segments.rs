//! The segment store's own promises, beyond the conformance suite: a write
//! cut short by a crash costs that write and nothing else, bytes
//! overwritten cost only the entries they hit, what is cut off is kept for
//! a person, and reopening finds every session as it was.

use std::path::{Path, PathBuf};

use longrun_journal::store::segments::segment_files;
use longrun_journal::{SegmentStore, Store};

fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir).unwrap().pop().unwrap().1
}

fn damaged_copies(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("damaged-")
        })
        .collect()
}

fn records(store: &SegmentStore, session: u64) -> Vec<Vec<u8>> {
    store
        .range(session, 0, u64::MAX)
        .map(|r| r.unwrap().1)
        .collect()
}

#[test]
fn a_batch_cut_short_by_a_crash_is_lost_whole_and_the_store_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let session = {
        let store = SegmentStore::open(dir.path()).unwrap();
        let s = store.new_session_id().unwrap();
        store.append(s, 0, &[b"a".to_vec(), b"b".to_vec()]).unwrap();
        store
            .append(s, 2, &[b"c".to_vec(), b"d".to_vec(), b"e".to_vec()])
            .unwrap();
        store.sync().unwrap();
        s
    };
    let segment = last_segment(dir.path());
    let whole = std::fs::read(&segment).unwrap();
    let cut = whole.len() - 5;
    std::fs::write(&segment, &whole[..cut]).unwrap();

    let store = SegmentStore::open(dir.path()).unwrap();
    assert_eq!(records(&store, session), vec![b"a".to_vec(), b"b".to_vec()]);
    let copies = damaged_copies(dir.path());
    assert_eq!(copies.len(), 1, "the cut-off bytes are kept");
    let kept = std::fs::read(&copies[0]).unwrap();
    assert!(whole[..cut].ends_with(&kept), "the copy is the damaged end");
    store.append(session, 2, &[b"x".to_vec()]).unwrap();
    store.sync().unwrap();
    drop(store);

    let store = SegmentStore::open(dir.path()).unwrap();
    assert_eq!(
        records(&store, session),
        vec![b"a".to_vec(), b"b".to_vec(), b"x".to_vec()]
    );
    assert_eq!(damaged_copies(dir.path()).len(), 1, "nothing more was cut");
}

#[test]
fn bytes_overwritten_in_the_middle_cost_only_the_entries_they_hit() {
    let dir = tempfile::tempdir().unwrap();
    let record =
        |s: u64, i: u64| format!("session {s} record {i} {}", "x".repeat(200)).into_bytes();
    let sessions: Vec<u64> = {
        let store = SegmentStore::open(dir.path()).unwrap();
        let sessions: Vec<u64> = (0..3).map(|_| store.new_session_id().unwrap()).collect();
        for i in 0..20 {
            for &s in &sessions {
                store.append(s, i, &[record(s, i)]).unwrap();
            }
        }
        store.sync().unwrap();
        sessions
    };
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle..middle + 100].fill(0xA5);
    std::fs::write(&segment, &bytes).unwrap();

    let store = SegmentStore::open_read_only(dir.path()).unwrap();
    let mut lost = 0;
    for &s in &sessions {
        let kept: Vec<(u64, Vec<u8>)> = store.range(s, 0, u64::MAX).map(|r| r.unwrap()).collect();
        for (seq, bytes) in &kept {
            assert_eq!(*bytes, record(s, *seq), "what is read is what was written");
        }
        lost += 20 - kept.len();
    }
    assert!((1..=2).contains(&lost), "{lost} records lost to 100 bytes");
    assert_eq!(store.sessions().unwrap(), sessions);
}

#[test]
fn a_reopened_store_has_every_session_in_order_and_never_reuses_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let (sessions, blob) = {
        let store = SegmentStore::open(dir.path()).unwrap();
        let sessions: Vec<u64> = (0..5).map(|_| store.new_session_id().unwrap()).collect();
        for &s in sessions.iter().rev() {
            store.append(s, 0, &[s.to_le_bytes().to_vec()]).unwrap();
        }
        let blob = [3u8; 32];
        store.put_blob(&blob, b"blob bytes").unwrap();
        store.sync().unwrap();
        (sessions, blob)
    };
    let store = SegmentStore::open(dir.path()).unwrap();
    let mut expected = sessions.clone();
    expected.reverse();
    assert_eq!(store.sessions().unwrap(), expected, "in the order written");
    assert_eq!(store.blob(&blob).unwrap().unwrap(), b"blob bytes");
    let next = store.new_session_id().unwrap();
    assert!(sessions.iter().all(|s| *s < next));
    assert_eq!(
        store.last(sessions[2]).unwrap().unwrap(),
        (0, sessions[2].to_le_bytes().to_vec())
    );
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SegmentStore::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let second = SegmentStore::open(dir.path());
    assert!(matches!(
        second,
        Err(longrun_journal::StoreError::Locked(_))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert!(
        SegmentStore::open_read_only(dir.path()).is_ok(),
        "readers are not"
    );
}
