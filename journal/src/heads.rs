//! The acknowledged heads: for each session, the last record the journal
//! told anyone was durable (its sequence number and hash), written to a file
//! of its own, outside the store's log, and synced before the
//! acknowledgement.
//!
//! Why: a store can lose its tail without noticing. sled, finding a bad
//! checksum in its log, truncates there and opens "fine", six records
//! shorter, and a resumed session would then run an effect a second time. A
//! hash chain cannot see a missing tail. Comparing the store's last record
//! with this file can: the store being *behind* it means acknowledged
//! records were lost ([`crate::Loss`]); being ahead of it only means records
//! that were written but never acknowledged (a crash between the two syncs).
//!
//! The file holds two slots per session, written alternately, so a write
//! torn by a crash damages only the slot being written and the other still
//! holds the previous head. A slot:
//!
//! ```text
//! session u64 | seq u64 | hash [32] | check [8] = BLAKE3(the 48 bytes before)[..8]
//! ```
//!
//! (little-endian), at offset `(pair * 2 + which) * 56`; pairs are given out
//! in order and never reused. An all-zero or unchecked slot is empty.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::record::{Hash, SessionId};

/// The file's name in a journal's directory.
pub const FILE_NAME: &str = "longrun-acknowledged-heads";

const SLOT: usize = 56;

/// A session's last acknowledged record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

/// The open file, with where each session's pair of slots is.
pub struct HeadsFile {
    file: File,
    slots: HashMap<SessionId, Slots>,
    next_pair: u64,
}

#[derive(Debug, Clone, Copy)]
struct Slots {
    pair: u64,
    /// The slot the next write goes to (the other holds the current head).
    next: u64,
    head: Head,
}

impl HeadsFile {
    /// Open (or create) the file in `dir`, and read every session's head.
    pub fn open(dir: &Path) -> std::io::Result<HeadsFile> {
        HeadsFile::load(dir, true)
    }

    fn load(dir: &Path, write: bool) -> std::io::Result<HeadsFile> {
        let path = dir.join(FILE_NAME);
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(false)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut slots: HashMap<SessionId, Slots> = HashMap::new();
        let pairs = bytes.len().div_ceil(2 * SLOT) as u64;
        for pair in 0..pairs {
            let at = pair as usize * 2 * SLOT;
            let read = |which: usize| {
                bytes
                    .get(at + which * SLOT..at + (which + 1) * SLOT)
                    .and_then(parse_slot)
            };
            let (first, second) = (read(0), read(1));
            // The slot holding the higher head is current; the next write
            // goes to the other.
            let (session, head, next) = match (first, second) {
                (Some(a), Some(b)) => {
                    if a.0 != b.0 {
                        tracing::warn!(
                            "{}: pair {pair} names two sessions ({} and {}): the file is damaged; keeping the higher head",
                            path.display(),
                            a.0,
                            b.0
                        );
                    }
                    if a.1.seq >= b.1.seq {
                        (a.0, a.1, 1)
                    } else {
                        (b.0, b.1, 0)
                    }
                }
                (Some(a), None) => (a.0, a.1, 1),
                (None, Some(b)) => (b.0, b.1, 0),
                (None, None) => continue,
            };
            slots.insert(session, Slots { pair, next, head });
        }
        Ok(HeadsFile {
            file,
            slots,
            next_pair: pairs,
        })
    }

    /// Open the file in `dir` to read it only, if there is one.
    pub fn open_read_only(dir: &Path) -> std::io::Result<Option<HeadsFile>> {
        match File::open(dir.join(FILE_NAME)) {
            Ok(_) => HeadsFile::load(dir, false).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every session's acknowledged head.
    pub fn heads(&self) -> impl Iterator<Item = (SessionId, Head)> + '_ {
        self.slots.iter().map(|(s, slots)| (*s, slots.head))
    }

    pub fn head(&self, session: SessionId) -> Option<Head> {
        self.slots.get(&session).map(|s| s.head)
    }

    /// Write new heads and sync the file: once this returns `Ok`, they
    /// survive a crash.
    pub fn record(&mut self, heads: &[(SessionId, Head)]) -> std::io::Result<()> {
        if heads.is_empty() {
            return Ok(());
        }
        for (session, head) in heads {
            let slots = match self.slots.get(session) {
                Some(slots) => *slots,
                None => {
                    let pair = self.next_pair;
                    self.next_pair += 1;
                    Slots {
                        pair,
                        next: 0,
                        head: *head,
                    }
                }
            };
            let offset = (slots.pair * 2 + slots.next) * SLOT as u64;
            self.file
                .write_all_at(&slot_bytes(*session, head), offset)?;
            self.slots.insert(
                *session,
                Slots {
                    pair: slots.pair,
                    next: 1 - slots.next,
                    head: *head,
                },
            );
        }
        self.file.sync_data()
    }

    /// Forget what was acknowledged of `session` and record `head` instead
    /// (a person accepted the loss of the records after it), synced.
    pub fn reset(&mut self, session: SessionId, head: Head) -> std::io::Result<()> {
        self.record(&[(session, head)])?;
        // Both slots: the older one must not come back as the higher head.
        self.record(&[(session, head)])
    }
}

fn slot_bytes(session: SessionId, head: &Head) -> [u8; SLOT] {
    let mut bytes = [0u8; SLOT];
    bytes[..8].copy_from_slice(&session.to_le_bytes());
    bytes[8..16].copy_from_slice(&head.seq.to_le_bytes());
    bytes[16..48].copy_from_slice(&head.hash);
    let check = blake3::hash(&bytes[..48]);
    bytes[48..].copy_from_slice(&check.as_bytes()[..8]);
    bytes
}

fn parse_slot(bytes: &[u8]) -> Option<(SessionId, Head)> {
    if bytes.len() != SLOT || blake3::hash(&bytes[..48]).as_bytes()[..8] != bytes[48..] {
        return None;
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&bytes[16..48]);
    Some((
        u64_at(0),
        Head {
            seq: u64_at(8),
            hash,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(seq: u64) -> Head {
        Head {
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn heads_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HeadsFile::open(dir.path()).unwrap();
        file.record(&[(1, head(3)), (9, head(0))]).unwrap();
        file.record(&[(1, head(4))]).unwrap();
        file.record(&[(1, head(5))]).unwrap();
        drop(file);
        let file = HeadsFile::open(dir.path()).unwrap();
        assert_eq!(file.head(1), Some(head(5)));
        assert_eq!(file.head(9), Some(head(0)));
        assert_eq!(file.head(2), None);
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HeadsFile::open(dir.path()).unwrap();
        file.record(&[(1, head(3))]).unwrap();
        file.record(&[(1, head(4))]).unwrap();
        drop(file);
        // The slot holding head 4 is torn half-way.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 20..SLOT + 40].fill(0xAA);
        std::fs::write(&path, &bytes).unwrap();
        let mut file = HeadsFile::open(dir.path()).unwrap();
        assert_eq!(file.head(1), Some(head(3)));
        // And writing goes on in the torn slot, not over head 3.
        file.record(&[(1, head(5))]).unwrap();
        drop(file);
        assert_eq!(HeadsFile::open(dir.path()).unwrap().head(1), Some(head(5)));
    }

    #[test]
    fn a_file_cut_short_keeps_every_whole_head() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = HeadsFile::open(dir.path()).unwrap();
        file.record(&[(1, head(3)), (2, head(7))]).unwrap();
        drop(file);
        let path = dir.path().join(FILE_NAME);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..2 * SLOT + 10]).unwrap();
        let mut file = HeadsFile::open(dir.path()).unwrap();
        assert_eq!(file.head(1), Some(head(3)));
        assert_eq!(file.head(2), None);
        file.record(&[(3, head(1))]).unwrap();
        drop(file);
        let file = HeadsFile::open(dir.path()).unwrap();
        assert_eq!(file.head(3), Some(head(1)));
        assert_eq!(file.head(1), Some(head(3)));
    }
}
