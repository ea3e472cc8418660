//! Changing a closed journal's segment files, the way someone editing them
//! would (checksums recomputed, so only the hash chain can tell): what
//! verification must catch.

use std::path::Path;

use longrun_host::journal::store::segments::{RawEntry, read_entries, write_entries};
use longrun_host::journal::{Hash, Journal, JournalOptions, Record, SessionId};

/// A record's key: session and sequence number.
pub type Key = (SessionId, u64);

pub fn key(session: SessionId, seq: u64) -> Key {
    (session, seq)
}

/// The records, in the order written.
pub struct RawRecords(Vec<(Key, Vec<u8>)>);

impl RawRecords {
    pub fn get(&self, key: Key) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, b)| b.clone())
    }

    /// Replace the record at `key` where it lies, or add it at the end.
    pub fn insert(&mut self, key: Key, bytes: impl Into<Vec<u8>>) {
        let bytes = bytes.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, old)) => *old = bytes,
            None => self.0.push((key, bytes)),
        }
    }

    pub fn remove(&mut self, key: Key) {
        self.0.retain(|(k, _)| *k != key);
    }
}

/// The blobs, in the order written.
pub struct RawBlobs(Vec<(Hash, Vec<u8>)>);

impl RawBlobs {
    pub fn get(&self, hash: Hash) -> Vec<u8> {
        self.0.iter().find(|(h, _)| *h == hash).unwrap().1.clone()
    }

    pub fn replace(&mut self, hash: Hash, bytes: &[u8]) {
        self.0.iter_mut().find(|(h, _)| *h == hash).unwrap().1 = bytes.to_vec();
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Run `f` on the records and blobs of the closed journal in `dir`, then
/// write them back.
pub fn tamper(dir: &Path, f: impl FnOnce(&mut RawRecords, &mut RawBlobs)) {
    let (mut records, mut blobs) = raw(dir);
    f(&mut records, &mut blobs);
    let mut entries: Vec<RawEntry> = blobs
        .0
        .into_iter()
        .map(|(hash, bytes)| RawEntry::Blob { hash, bytes })
        .collect();
    entries.extend(
        records
            .0
            .into_iter()
            .map(|((session, seq), bytes)| RawEntry::Record {
                session,
                seq,
                bytes,
            }),
    );
    write_entries(dir, &entries).unwrap();
}

/// The records and blobs of the closed journal in `dir`.
pub fn raw(dir: &Path) -> (RawRecords, RawBlobs) {
    let mut records = Vec::new();
    let mut blobs = Vec::new();
    for entry in read_entries(dir).unwrap() {
        match entry {
            RawEntry::Record {
                session,
                seq,
                bytes,
            } => records.push(((session, seq), bytes)),
            RawEntry::Blob { hash, bytes } => blobs.push((hash, bytes)),
        }
    }
    (RawRecords(records), RawBlobs(blobs))
}

/// The session written again, record by record, into a new journal in
/// `into`, with `edit` applied to each payload: a consistent chain that
/// says something else, as an operator with write access could make.
pub fn rewrite(
    from: &[Record],
    from_journal: &Path,
    into: &Path,
    edit: impl Fn(&Record) -> Vec<u8>,
) -> SessionId {
    let source = Journal::open_with(from_journal, JournalOptions::AUDIT).unwrap();
    let target = Journal::open(into).unwrap();
    let mut writer = target.create_session().unwrap();
    for record in from {
        for blob in &record.blobs {
            target.put_blob(&source.blob(blob).unwrap()).unwrap();
        }
        writer
            .append(record.kind, &edit(record), &record.blobs)
            .unwrap();
    }
    writer.session()
}
