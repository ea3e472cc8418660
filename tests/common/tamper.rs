//! Changing a closed journal's raw sled storage, the way someone editing
//! its files would: what verification must catch.

use std::path::Path;

use longrun_host::journal::{Hash, SessionId, open_storage};

pub struct RawBlobs {
    data: sled::Tree,
    index: sled::Tree,
}

impl RawBlobs {
    pub fn number(&self, hash: Hash) -> sled::IVec {
        self.index.get(hash).unwrap().unwrap()
    }

    pub fn get(&self, hash: Hash) -> Vec<u8> {
        self.data.get(self.number(hash)).unwrap().unwrap().to_vec()
    }

    pub fn replace(&self, hash: Hash, bytes: &[u8]) {
        self.data.insert(self.number(hash), bytes).unwrap();
    }
}

/// Run `f` on the raw sled trees of a closed journal, the way someone
/// editing the files would.
pub fn tamper(dir: &Path, f: impl FnOnce(&sled::Tree, &RawBlobs)) {
    let db = open_raw(dir);
    f(
        &db.open_tree("records").unwrap(),
        &RawBlobs {
            data: db.open_tree("blob_data").unwrap(),
            index: db.open_tree("blob_index").unwrap(),
        },
    );
    db.flush().unwrap();
}

/// The sled database under a closed journal, opened the way the journal
/// opens it (waiting for the lock a just-closed journal gives up).
pub fn open_raw(dir: &Path) -> sled::Db {
    open_storage(sled::Config::new().path(dir)).unwrap()
}

pub fn key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&session.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}
