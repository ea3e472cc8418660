//! A store in memory, for unit tests and for anything that must not touch a
//! disk: it keeps every promise of [`Store`] except that nothing survives
//! the process ([`Store::sync`] has nothing to do).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::{RecordIter, Store, StoreError, StoredRecord, Synced, check_append};
use crate::record::{Hash, SessionId};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: SessionId,
    records: BTreeMap<(SessionId, u64), Vec<u8>>,
    blobs: HashMap<Hash, Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Io("the in-memory store was poisoned".into()))
    }
}

impl Store for MemoryStore {
    fn new_session_id(&self) -> Result<SessionId, StoreError> {
        let mut inner = self.lock()?;
        let id = inner.next_id;
        inner.next_id += 1;
        Ok(id)
    }

    fn advance_session_ids(&self, past: SessionId) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.next_id = inner.next_id.max(past.saturating_add(1));
        Ok(())
    }

    fn append(
        &self,
        session: SessionId,
        first_seq: u64,
        records: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        check_append(session, first_seq, records.len(), |seq| {
            Ok(inner.records.contains_key(&(session, seq)))
        })?;
        for (seq, bytes) in (first_seq..).zip(records) {
            inner.records.insert((session, seq), bytes.clone());
        }
        Ok(())
    }

    fn get(&self, session: SessionId, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.records.get(&(session, seq)).cloned())
    }

    fn last(&self, session: SessionId) -> Result<Option<StoredRecord>, StoreError> {
        Ok(self
            .lock()?
            .records
            .range((session, 0)..=(session, u64::MAX))
            .next_back()
            .map(|((_, seq), bytes)| (*seq, bytes.clone())))
    }

    fn range(&self, session: SessionId, from: u64, to: u64) -> RecordIter<'_> {
        // A copy: the lock is not held while the caller iterates.
        let records: Vec<Result<StoredRecord, StoreError>> = match self.lock() {
            Ok(inner) => inner
                .records
                .range((session, from)..=(session, to))
                .map(|((_, seq), bytes)| Ok((*seq, bytes.clone())))
                .collect(),
            Err(e) => vec![Err(e)],
        };
        Box::new(records.into_iter())
    }

    fn sessions(&self) -> Result<Vec<SessionId>, StoreError> {
        let inner = self.lock()?;
        let mut out: Vec<SessionId> = inner.records.keys().map(|(s, _)| *s).collect();
        out.dedup();
        Ok(out)
    }

    fn put_blob(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        self.lock()?
            .blobs
            .entry(*hash)
            .or_insert_with(|| bytes.to_vec());
        Ok(())
    }

    fn has_blob(&self, hash: &Hash) -> Result<bool, StoreError> {
        Ok(self.lock()?.blobs.contains_key(hash))
    }

    fn blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock()?.blobs.get(hash).cloned())
    }

    fn sync(&self) -> Result<Synced, StoreError> {
        Ok(Synced::default())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn read_only(&self) -> bool {
        false
    }
}
