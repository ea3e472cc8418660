//! The embedded default store: append-only segment files in one directory,
//! indexed in memory.
//!
//! Every write is an append to the current segment; nothing is ever
//! rewritten in place, so the bytes on disk are the bytes journaled plus a
//! few per entry, and a durable sync is one `fdatasync` of one file. The
//! index (where each session's records and each blob are) is rebuilt by
//! reading the segments on open, which is a sequential read of the
//! directory: no page table, no snapshot, nothing that can disagree with the
//! log.
//!
//! # Format, version 1
//!
//! A directory holds `segment-NNNNNNNNNNNN` files (the number, decimal,
//! twelve digits, gives their order), a `lock` file (held by the one
//! writer), and, beside them, the journal's acknowledged heads. A segment:
//!
//! ```text
//! magic "LRJSEG\0\x01" | segment number u64 | entry | entry | ...
//! entry   = length u32 | body crc u32 | head crc u32 | body (length bytes)
//! body    = 1 | session u64 | first seq u64 | count u32 | (length u32 | record)*count
//!         | 2 | blob hash [32] | blob bytes
//! ```
//!
//! (integers little-endian; crc32 as in zlib). The body crc covers the
//! body; the head crc covers the length, the body crc and the body's first
//! [`HEAD_CHECKED`] bytes, so that finding the next whole entry after
//! damage costs a few bytes' check per place tried. An entry of records is one [`Store::append`]:
//! one checksum covers the batch, so a crash keeps all of it or none. A
//! segment is closed at [`SEGMENT_BYTES`] and the next one begun.
//!
//! # Damage
//!
//! An entry whose checksum or shape is wrong is damage. Reading goes on at
//! the next whole entry after it (found by its checksum), so damage costs
//! the entries it hit and no more; the records it took are then missing
//! from their sessions, which the journal names (a gap in the chain, or a
//! store behind its acknowledged head). A writer that opens a segment whose
//! end is damaged (a write torn by a crash, or bytes overwritten) keeps a
//! copy of the damaged bytes beside it (`damaged-segment-N-at-OFFSET`, for
//! a person to look at) and cuts them off, so new entries follow whole
//! ones.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{
    RecordIter, Store, StoreError, StoredRecord, Synced, check_append, first_gap, writable,
};
use crate::record::{Hash, SessionId};

const MAGIC: &[u8; 8] = b"LRJSEG\0\x01";
/// Magic and segment number.
const SEGMENT_HEADER: u64 = 16;
/// Length and two checksums.
const ENTRY_HEADER: usize = 12;
/// The body bytes the head checksum covers (a blob's kind and hash).
const HEAD_CHECKED: usize = BLOB_HEADER;
/// Kind and hash.
const BLOB_HEADER: usize = 1 + 32;
/// No entry is larger: a length past it is damage, not an allocation.
const MAX_ENTRY: usize = 1 << 30;
/// A segment is closed once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;
const RECORDS: u8 = 1;
const BLOB: u8 = 2;
/// Kind, session, first seq, count.
const RECORDS_HEADER: usize = 1 + 8 + 8 + 4;
/// The file a writer holds locked.
const LOCK_FILE: &str = "lock";
const SEGMENT_PREFIX: &str = "segment-";
/// How long opening waits for the lock before it reports the journal as
/// open elsewhere.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Whether `dir` holds a segment store (or nothing yet).
pub fn is_segment_store(dir: &Path) -> bool {
    dir.join(LOCK_FILE).is_file() || !segment_files(dir).unwrap_or_default().is_empty()
}

/// Append-only segment files in a directory; see the module documentation.
pub struct SegmentStore {
    dir: PathBuf,
    read_only: bool,
    inner: Mutex<Inner>,
    /// Held while the store is open for writing.
    _lock: Option<File>,
}

#[derive(Default)]
struct Inner {
    segments: Vec<Segment>,
    /// Each session's records, in sequence order.
    records: HashMap<SessionId, Vec<(u64, Place)>>,
    /// Sessions in the order their first record was written.
    order: Vec<SessionId>,
    blobs: HashMap<Hash, Place>,
    next_id: SessionId,
    /// Set when a write failed half-way and could not be undone: nothing
    /// more may follow it.
    broken: Option<String>,
}

struct Segment {
    number: u64,
    file: Arc<File>,
    len: u64,
}

/// Where some bytes are: segment (index in `Inner::segments`), offset, length.
#[derive(Debug, Clone, Copy)]
struct Place {
    segment: u32,
    offset: u64,
    len: u32,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what}: {e}"))
}

impl SegmentStore {
    /// Open (or create) the store in `dir` for writing.
    pub fn open(dir: &Path) -> Result<SegmentStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io(&format!("creating {}", dir.display()), e))?;
        let lock = lock(dir)?;
        SegmentStore::load(dir, Some(lock))
    }

    /// Open the existing store in `dir` for reading, in place and without
    /// its lock: nothing on disk is touched, and a journal a running host
    /// is writing can be read (what the host has not finished writing
    /// reads as the end).
    pub fn open_read_only(dir: &Path) -> Result<SegmentStore, StoreError> {
        if !is_segment_store(dir) {
            return Err(StoreError::Io(format!("no journal in {}", dir.display())));
        }
        SegmentStore::load(dir, None)
    }

    fn load(dir: &Path, lock: Option<File>) -> Result<SegmentStore, StoreError> {
        let writable = lock.is_some();
        let mut inner = Inner::default();
        let files = segment_files(dir)?;
        let count = files.len();
        let mut bytes = Vec::new();
        for (i, (number, path)) in files.into_iter().enumerate() {
            let last = i + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(writable && last)
                .open(&path)
                .map_err(|e| io(&format!("opening {}", path.display()), e))?;
            // One buffer for every segment: a fresh one each time costs a
            // page fault per 4 KiB.
            bytes.clear();
            (&file)
                .read_to_end(&mut bytes)
                .map_err(|e| io(&format!("reading {}", path.display()), e))?;
            let index = inner.segments.len() as u32;
            let whole = inner.index_segment(index, number, &path, &bytes);
            let mut len = bytes.len() as u64;
            if writable && last && whole < len {
                cut_damaged_tail(dir, number, &file, &bytes, whole)?;
                len = whole;
            }
            inner.segments.push(Segment {
                number,
                file: Arc::new(file),
                len,
            });
        }
        for records in inner.records.values_mut() {
            // Entries are in order unless someone moved them.
            if !records.is_sorted_by_key(|(seq, _)| *seq) {
                records.sort_by_key(|(seq, _)| *seq);
            }
        }
        let store = SegmentStore {
            dir: dir.to_owned(),
            read_only: !writable,
            inner: Mutex::new(inner),
            _lock: lock,
        };
        if writable {
            let mut inner = store.lock_inner()?;
            let reusable = inner
                .segments
                .last()
                .is_some_and(|s| s.len >= SEGMENT_HEADER && s.len < SEGMENT_BYTES);
            if !reusable {
                inner.begin_segment(&store.dir)?;
            }
        }
        Ok(store)
    }

    fn lock_inner(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Io("the segment store's index was poisoned".into()))
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Read `place`'s bytes.
    fn read(&self, file: &File, place: Place) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![0u8; place.len as usize];
        file.read_exact_at(&mut out, place.offset)
            .map_err(|e| io("reading the journal", e))?;
        Ok(out)
    }

    fn file(&self, segment: u32) -> Result<Arc<File>, StoreError> {
        self.lock_inner()?
            .segments
            .get(segment as usize)
            .map(|s| s.file.clone())
            .ok_or_else(|| StoreError::Io(format!("no segment {segment}")))
    }
}

impl Inner {
    fn has(&self, session: SessionId, seq: u64) -> bool {
        self.records
            .get(&session)
            .is_some_and(|r| r.binary_search_by_key(&seq, |(s, _)| *s).is_ok())
    }

    /// Index the entries of one segment's `bytes`; the offset where its
    /// whole entries end (the length, unless its end is damaged).
    fn index_segment(&mut self, index: u32, number: u64, path: &Path, bytes: &[u8]) -> u64 {
        if bytes.len() < SEGMENT_HEADER as usize
            || &bytes[..8] != MAGIC
            || bytes[8..16] != number.to_le_bytes()
        {
            if !bytes.is_empty() {
                tracing::error!(
                    "journal: {} does not start as a segment of this journal; its entries are skipped",
                    path.display()
                );
            }
            return 0;
        }
        let mut at = SEGMENT_HEADER as usize;
        let mut whole = at;
        while at < bytes.len() {
            match entry_at(bytes, at) {
                Some(end) => {
                    self.index_entry(index, bytes, at, end);
                    at = end;
                    whole = end;
                }
                None => match (at + 1..bytes.len()).find(|&next| entry_at(bytes, next).is_some()) {
                    Some(next) => {
                        tracing::error!(
                            "journal: {} is damaged at bytes {at}..{next}; the entries there are lost",
                            path.display()
                        );
                        at = next;
                    }
                    None => break,
                },
            }
        }
        whole as u64
    }

    /// Index the whole entry at `bytes[at..end]`.
    fn index_entry(&mut self, segment: u32, bytes: &[u8], at: usize, end: usize) {
        let body = &bytes[at + ENTRY_HEADER..end];
        let base = (at + ENTRY_HEADER) as u64;
        match body[0] {
            RECORDS => {
                let session = u64_at(body, 1);
                let first = u64_at(body, 9);
                let count = u32_at(body, 17);
                let mut offset = RECORDS_HEADER;
                for seq in first..first + u64::from(count) {
                    let len = u32_at(body, offset);
                    offset += 4;
                    let place = Place {
                        segment,
                        offset: base + offset as u64,
                        len,
                    };
                    offset += len as usize;
                    self.add_record(session, seq, place);
                }
            }
            BLOB => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&body[1..BLOB_HEADER]);
                self.blobs.entry(hash).or_insert(Place {
                    segment,
                    offset: base + BLOB_HEADER as u64,
                    len: (body.len() - BLOB_HEADER) as u32,
                });
            }
            // `entry_at` accepts no other kind.
            _ => {}
        }
    }

    fn add_record(&mut self, session: SessionId, seq: u64, place: Place) {
        let records = self.records.entry(session).or_insert_with(|| {
            self.order.push(session);
            Vec::new()
        });
        self.next_id = self.next_id.max(session.saturating_add(1));
        match records.last() {
            Some((last, _)) if *last >= seq => {
                // Only a hand-edited file gets here: keep the first.
                if records.iter().all(|(s, _)| *s != seq) {
                    records.push((seq, place));
                }
            }
            _ => records.push((seq, place)),
        }
    }

    /// Close the current segment (durably) and begin the next.
    fn begin_segment(&mut self, dir: &Path) -> Result<(), StoreError> {
        let number = self
            .segments
            .iter()
            .map(|s| s.number + 1)
            .max()
            .unwrap_or(1);
        self.begin_segment_numbered(dir, number)
    }

    /// [`Inner::begin_segment`], numbered `number`.
    fn begin_segment_numbered(&mut self, dir: &Path, number: u64) -> Result<(), StoreError> {
        if let Some(current) = self.segments.last() {
            current
                .file
                .sync_data()
                .map_err(|e| io("syncing the journal", e))?;
        }
        let path = dir.join(format!("{SEGMENT_PREFIX}{number:012}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&format!("creating {}", path.display()), e))?;
        let mut header = Vec::with_capacity(SEGMENT_HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&number.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| io(&format!("writing {}", path.display()), e))?;
        file.sync_data()
            .map_err(|e| io(&format!("syncing {}", path.display()), e))?;
        // The new file's name must be durable before anything in it is.
        sync_dir(dir)?;
        self.segments.push(Segment {
            number,
            file: Arc::new(file),
            len: SEGMENT_HEADER,
        });
        Ok(())
    }

    /// Append one entry with `body`; the segment it went to and the offset
    /// of its body.
    fn write_entry(&mut self, dir: &Path, body: &[u8]) -> Result<(u32, u64), StoreError> {
        if let Some(why) = &self.broken {
            return Err(StoreError::Io(why.clone()));
        }
        if body.len() > MAX_ENTRY {
            return Err(StoreError::Io(format!(
                "an entry of {} bytes is larger than a journal takes",
                body.len()
            )));
        }
        let full = self
            .segments
            .last()
            .is_none_or(|s| s.len > SEGMENT_HEADER && s.len + body.len() as u64 > SEGMENT_BYTES);
        if full {
            self.begin_segment(dir)?;
        }
        let index = self.segments.len() - 1;
        let segment = &mut self.segments[index];
        let mut entry = Vec::with_capacity(ENTRY_HEADER + body.len());
        entry.extend_from_slice(&(body.len() as u32).to_le_bytes());
        entry.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        let head = head_crc(&entry, body);
        entry.extend_from_slice(&head.to_le_bytes());
        entry.extend_from_slice(body);
        if let Err(e) = segment.file.write_all_at(&entry, segment.len) {
            // Undo what part of it was written, so the next entry follows a
            // whole one; if even that fails, write nothing more.
            if let Err(undo) = segment.file.set_len(segment.len) {
                self.broken = Some(format!(
                    "a write to the journal failed ({e}) and could not be undone ({undo})"
                ));
            }
            return Err(io("writing the journal", e));
        }
        let at = segment.len + ENTRY_HEADER as u64;
        segment.len += entry.len() as u64;
        Ok((index as u32, at))
    }
}

/// The body of an entry holding `records` of `session` from `first_seq` on.
fn records_body(session: SessionId, first_seq: u64, records: &[Vec<u8>]) -> Vec<u8> {
    let size = RECORDS_HEADER + records.iter().map(|r| 4 + r.len()).sum::<usize>();
    let mut body = Vec::with_capacity(size);
    body.push(RECORDS);
    body.extend_from_slice(&session.to_le_bytes());
    body.extend_from_slice(&first_seq.to_le_bytes());
    body.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for record in records {
        body.extend_from_slice(&(record.len() as u32).to_le_bytes());
        body.extend_from_slice(record);
    }
    body
}

/// The body of an entry holding a blob.
fn blob_body(hash: &Hash, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(BLOB_HEADER + bytes.len());
    body.push(BLOB);
    body.extend_from_slice(hash);
    body.extend_from_slice(bytes);
    body
}

/// The end of the whole entry at `bytes[at..]`, if one is there: its length
/// fits, its checksums match and its body has a known shape.
fn entry_at(bytes: &[u8], at: usize) -> Option<usize> {
    let header = bytes.get(at..at + ENTRY_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    if len == 0 || len > MAX_ENTRY {
        return None;
    }
    let body = bytes.get(at + ENTRY_HEADER..at + ENTRY_HEADER + len)?;
    // The head first: it rejects nearly every place tried after damage
    // without reading the body.
    if header[8..12] != head_crc(&header[..8], body).to_le_bytes() {
        return None;
    }
    match body[0] {
        RECORDS if len >= RECORDS_HEADER && shape_is_sound(body) => {}
        BLOB if len >= BLOB_HEADER => {}
        _ => return None,
    }
    if header[4..8] != crc32fast::hash(body).to_le_bytes() {
        return None;
    }
    Some(at + ENTRY_HEADER + len)
}

/// The head checksum: of the length and body checksum (`first`), and the
/// body's first [`HEAD_CHECKED`] bytes.
fn head_crc(first: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(first);
    hasher.update(&body[..body.len().min(HEAD_CHECKED)]);
    hasher.finalize()
}

/// Whether a records entry's lengths add up to its body.
fn shape_is_sound(body: &[u8]) -> bool {
    let count = u32_at(body, 17);
    let mut offset = RECORDS_HEADER;
    for _ in 0..count {
        let Some(len) = body.get(offset..offset + 4) else {
            return false;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        offset += 4 + len;
        if offset > body.len() {
            return false;
        }
    }
    offset == body.len() && count > 0
}

/// Only for bodies [`entry_at`] accepted (their lengths are checked).
fn u64_at(body: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&body[at..at + 8]);
    u64::from_le_bytes(b)
}

fn u32_at(body: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&body[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Keep a copy of a segment's damaged end beside it, then cut it off.
fn cut_damaged_tail(
    dir: &Path,
    number: u64,
    file: &File,
    bytes: &[u8],
    whole: u64,
) -> Result<(), StoreError> {
    let damaged = &bytes[whole as usize..];
    let copy = dir.join(format!("damaged-{SEGMENT_PREFIX}{number:012}-at-{whole}"));
    std::fs::write(&copy, damaged)
        .and_then(|()| File::open(&copy)?.sync_all())
        .map_err(|e| {
            io(
                &format!("keeping the damaged bytes in {}", copy.display()),
                e,
            )
        })?;
    file.set_len(whole)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("cutting off a damaged end of the journal", e))?;
    sync_dir(dir)?;
    tracing::warn!(
        "journal {}: segment {number} ends in {} bytes that are not a whole entry (a write cut short by a crash, or damage); they were kept in {} and cut off",
        dir.display(),
        damaged.len(),
        copy.display()
    );
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(&format!("syncing the directory {}", dir.display()), e))
}

/// The segment files in `dir` (number and path), in order.
pub fn segment_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(&format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .filter(|n| n.len() == 12 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((number, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Take the directory's writer lock, waiting up to [`LOCK_WAIT`].
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(&format!("opening {}", path.display()), e))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked(dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io(&format!("locking {}", path.display()), e));
            }
        }
    }
}

impl Store for SegmentStore {
    fn new_session_id(&self) -> Result<SessionId, StoreError> {
        writable(self.read_only)?;
        let mut inner = self.lock_inner()?;
        let id = inner.next_id;
        inner.next_id += 1;
        Ok(id)
    }

    fn advance_session_ids(&self, past: SessionId) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let mut inner = self.lock_inner()?;
        inner.next_id = inner.next_id.max(past.saturating_add(1));
        Ok(())
    }

    fn append(
        &self,
        session: SessionId,
        first_seq: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        writable(self.read_only)?;
        if records.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock_inner()?;
        check_append(session, first_seq, records.len(), |seq| {
            Ok(inner.has(session, seq))
        })?;
        let body = records_body(session, first_seq, records);
        let (segment, base) = inner.write_entry(&self.dir, &body)?;
        let mut offset = base + RECORDS_HEADER as u64;
        for (seq, record) in (first_seq..).zip(records) {
            offset += 4;
            let place = Place {
                segment,
                offset,
                len: record.len() as u32,
            };
            offset += record.len() as u64;
            inner.add_record(session, seq, place);
        }
        Ok(())
    }

    fn get(&self, session: SessionId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let (file, place) = {
            let inner = self.lock_inner()?;
            let Some(records) = inner.records.get(&session) else {
                return Ok(None);
            };
            let Ok(i) = records.binary_search_by_key(&seq, |(s, _)| *s) else {
                return Ok(None);
            };
            let place = records[i].1;
            (inner.segments[place.segment as usize].file.clone(), place)
        };
        self.read(&file, place).map(Some)
    }

    fn last(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError> {
        let (file, seq, place) = {
            let inner = self.lock_inner()?;
            let Some(&(seq, place)) = inner.records.get(&session).and_then(|r| r.last()) else {
                return Ok(None);
            };
            (
                inner.segments[place.segment as usize].file.clone(),
                seq,
                place,
            )
        };
        Ok(Some((seq, self.read(&file, place)?)))
    }

    fn range(&self, session: SessionId, from: u64, to: u64) -> RecordIter<'_> {
        let places: Vec<(u64, Place)> = match self.lock_inner() {
            Ok(inner) => inner
                .records
                .get(&session)
                .map(|records| {
                    let start = records.partition_point(|(s, _)| *s < from);
                    let end = records.partition_point(|(s, _)| *s <= to);
                    records[start..end].to_vec()
                })
                .unwrap_or_default(),
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        Box::new(RangeReader {
            store: self,
            places: places.into_iter(),
            window: None,
        })
    }

    fn missing(&self, session: SessionId, upto: u64) -> Result<Option<(u64, u64)>, StoreError> {
        let inner = self.lock_inner()?;
        let seqs = inner.records.get(&session).into_iter().flatten();
        first_gap(seqs.map(|(seq, _)| Ok(*seq)), upto)
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        Ok(self.lock_inner()?.order.clone())
    }

    fn put_blob(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        writable(self.read_only)?;
        let mut inner = self.lock_inner()?;
        if inner.blobs.contains_key(hash) {
            return Ok(());
        }
        let (segment, base) = inner.write_entry(&self.dir, &blob_body(hash, bytes))?;
        inner.blobs.insert(
            *hash,
            Place {
                segment,
                offset: base + BLOB_HEADER as u64,
                len: bytes.len() as u32,
            },
        );
        Ok(())
    }

    fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.lock_inner()?.blobs.contains_key(hash))
    }

    fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let (file, place) = {
            let inner = self.lock_inner()?;
            let Some(&place) = inner.blobs.get(hash) else {
                return Ok(None);
            };
            (inner.segments[place.segment as usize].file.clone(), place)
        };
        self.read(&file, place).map(Some)
    }

    fn sync(&self) -> Result<Synced, StoreError> {
        if self.read_only {
            return Ok(Synced::default());
        }
        // Earlier segments were synced when they were closed.
        let file = {
            let inner = self.lock_inner()?;
            if let Some(why) = &inner.broken {
                return Err(StoreError::Io(why.clone()));
            }
            inner.segments.last().map(|s| s.file.clone())
        };
        if let Some(file) = file {
            file.sync_data().map_err(|e| io("syncing the journal", e))?;
        }
        Ok(Synced::default())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.lock_inner()?.segments.iter().map(|s| s.len).sum())
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// Reads a range of records with few system calls: records of one session
/// lie close together, so one read of a window serves many.
struct RangeReader<'a> {
    store: &'a SegmentStore,
    places: std::vec::IntoIter<(u64, Place)>,
    /// A segment, the offset its bytes start at, and the bytes.
    window: Option<(u32, u64, Vec<u8>)>,
}

/// How much one read of a range takes at least.
const WINDOW: u64 = 1 << 20;

impl RangeReader<'_> {
    fn read(&mut self, place: Place) -> Result<Vec<u8>, StoreError> {
        if let Some((segment, start, bytes)) = &self.window {
            let end = place.offset + u64::from(place.len);
            if *segment == place.segment
                && place.offset >= *start
                && let Some(slice) =
                    bytes.get((place.offset - start) as usize..(end - start) as usize)
            {
                return Ok(slice.to_vec());
            }
        }
        let file = self.store.file(place.segment)?;
        let size = file
            .metadata()
            .map_err(|e| io("reading the journal", e))?
            .len();
        let len = WINDOW
            .max(u64::from(place.len))
            .min(size.saturating_sub(place.offset))
            .max(u64::from(place.len));
        let mut bytes = vec![0u8; len as usize];
        file.read_exact_at(&mut bytes, place.offset)
            .map_err(|e| io("reading the journal", e))?;
        let out = bytes[..place.len as usize].to_vec();
        self.window = Some((place.segment, place.offset, bytes));
        Ok(out)
    }
}

impl Iterator for RangeReader<'_> {
    type Item = Result<StoredRecord, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (seq, place) = self.places.next()?;
        Some(self.read(place).map(|bytes| (seq, bytes)))
    }
}

/// One entry as [`read_entries`] and [`write_entries`] see it: a single
/// record, or a blob.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEntry {
    Record {
        session: SessionId,
        seq: u64,
        bytes: Vec<u8>,
    },
    Blob {
        hash: Hash,
        bytes: Vec<u8>,
    },
}

/// Every whole entry of the closed segment store in `dir`, in the order
/// written, a batch of records as one entry per record. For tests that
/// change a journal the way someone editing its files would.
#[doc(hidden)]
pub fn read_entries(dir: &Path) -> Result<Vec<RawEntry>, StoreError> {
    let store = SegmentStore::open_read_only(dir)?;
    let inner = store.lock_inner()?;
    enum Key {
        Record(SessionId, u64),
        Blob(Hash),
    }
    let mut places: Vec<(Place, Key)> = Vec::new();
    for (session, records) in &inner.records {
        for (seq, place) in records {
            places.push((*place, Key::Record(*session, *seq)));
        }
    }
    for (hash, place) in &inner.blobs {
        places.push((*place, Key::Blob(*hash)));
    }
    places.sort_by_key(|(place, _)| (place.segment, place.offset));
    let mut out = Vec::with_capacity(places.len());
    for (place, key) in places {
        let bytes = store.read(&inner.segments[place.segment as usize].file, place)?;
        out.push(match key {
            Key::Record(session, seq) => RawEntry::Record {
                session,
                seq,
                bytes,
            },
            Key::Blob(hash) => RawEntry::Blob { hash, bytes },
        });
    }
    Ok(out)
}

/// Replace the closed segment store in `dir` by one holding exactly
/// `entries`, in that order, whether or not they make sense (no append
/// rule is checked): for tests, like [`read_entries`].
#[doc(hidden)]
pub fn write_entries(dir: &Path, entries: &[RawEntry]) -> Result<(), StoreError> {
    let old = segment_files(dir)?;
    let lock = lock(dir)?;
    let mut inner = Inner::default();
    // After the old segments, so that a crash half-way loses nothing.
    let first = old.last().map_or(1, |(n, _)| n + 1);
    inner.begin_segment_numbered(dir, first)?;
    for entry in entries {
        let body = match entry {
            RawEntry::Record {
                session,
                seq,
                bytes,
            } => records_body(*session, *seq, std::slice::from_ref(bytes)),
            RawEntry::Blob { hash, bytes } => blob_body(hash, bytes),
        };
        inner.write_entry(dir, &body)?;
    }
    if let Some(last) = inner.segments.last() {
        last.file.sync_data().map_err(|e| io("syncing", e))?;
    }
    for (_, path) in old {
        std::fs::remove_file(&path).map_err(|e| io("removing an old segment", e))?;
    }
    drop(lock);
    sync_dir(dir)
}
