//! What the policy's mounts held when a session started, kept in the
//! journal so that an auditor can rebuild them.
//!
//! At its start a session stores each mounted file as a blob and a
//! [`Manifest`] (itself a blob) that lists them; its first record
//! references all of them, so the hash chain covers the snapshot. `longrun
//! replay reexecute` and `fork` [`restore`] the manifest into a scratch
//! directory and run the recorded tool calls again there, never against the
//! operator's real files.
//!
//! A snapshot has a size limit: files past it (and symbolic links, devices,
//! unreadable files) are listed as left out, with why, rather than failing
//! the session.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::journal::{Hash, Journal, JournalError, hex, parse_hex};
use crate::mount::Entry;
use crate::policy::Mount;

/// The most files one snapshot stores: a record references at most 65,535
/// blobs, and a session's first record should stay quick to write.
pub const MAX_FILES: usize = 10_000;

/// What the mounts held, by guest path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub mounts: Vec<MountContents>,
}

/// One mount's directories and files, with paths relative to its root and
/// `/` between components.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountContents {
    pub guest: String,
    pub dirs: Vec<String>,
    pub files: Vec<FileEntry>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    /// The hex hash of the blob holding the file's bytes.
    pub blob: String,
    pub size: u64,
}

/// Something under a mount that the snapshot does not hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub path: String,
    pub why: String,
}

/// A snapshot stored in the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    /// The manifest's blob.
    pub manifest: Hash,
    /// Every blob the snapshot stored, the manifest first, each once: what
    /// the record that holds the snapshot must reference.
    pub blobs: Vec<Hash>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the snapshot's manifest is not valid: {0}")]
    Manifest(String),
    #[error("the snapshot's manifest names an unsafe path {0:?}")]
    UnsafePath(String),
    #[error("the snapshot has no mount {0:?} to restore")]
    NoMount(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Store what `mounts` hold now, up to `limit_bytes` of file contents.
///
/// The walk starts from each mount's directory handle and opens every
/// entry without following links ([`crate::mount::walk`]), so a tool that
/// swaps entries for links while it runs cannot make the snapshot read
/// anything outside the mount.
pub fn take(journal: &Journal, mounts: &[Mount], limit_bytes: u64) -> Result<Taken, SnapshotError> {
    let mut taker = Taker {
        journal,
        bytes_left: limit_bytes,
        files_left: MAX_FILES,
        blobs: Vec::new(),
        contents: MountContents::default(),
    };
    let mut manifest = Manifest::default();
    for mount in mounts {
        taker.contents = MountContents {
            guest: mount.guest.clone(),
            ..MountContents::default()
        };
        match mount.open() {
            Ok(opened) => crate::mount::walk(opened.dir(), &mut taker)?,
            Err(e) => taker.contents.left_out.push(LeftOut {
                path: String::new(),
                why: e.to_string(),
            }),
        }
        manifest.mounts.push(std::mem::take(&mut taker.contents));
    }
    let bytes =
        serde_json::to_vec(&manifest).map_err(|e| SnapshotError::Manifest(e.to_string()))?;
    let hash = journal.put_blob(&bytes)?;
    // Each once (identical files share a blob), in the order first met.
    let mut seen = std::collections::HashSet::from([hash]);
    let mut all = vec![hash];
    all.extend(taker.blobs.into_iter().filter(|blob| seen.insert(*blob)));
    Ok(Taken {
        manifest: hash,
        blobs: all,
    })
}

/// The snapshot's side of a walk: what is left of the budget, and what the
/// mount being walked holds so far.
struct Taker<'a> {
    journal: &'a Journal,
    bytes_left: u64,
    files_left: usize,
    blobs: Vec<Hash>,
    contents: MountContents,
}

impl crate::mount::Visitor for Taker<'_> {
    type Error = SnapshotError;

    fn budget(&mut self) -> Option<u64> {
        (self.files_left > 0).then_some(self.bytes_left)
    }

    fn visit(&mut self, entry: Entry<'_>) -> Result<(), SnapshotError> {
        let left_out = |path: &str, why: String| LeftOut {
            path: path.to_owned(),
            why,
        };
        match entry {
            Entry::Dir { path } => self.contents.dirs.push(path.to_owned()),
            Entry::File {
                path,
                bytes: Some(bytes),
                ..
            } => {
                let hash = self.journal.put_blob(&bytes)?;
                self.bytes_left -= (bytes.len() as u64).min(self.bytes_left);
                self.files_left -= 1;
                self.blobs.push(hash);
                self.contents.files.push(FileEntry {
                    path: path.to_owned(),
                    blob: hex(&hash),
                    size: bytes.len() as u64,
                });
            }
            Entry::File {
                path,
                bytes: None,
                size,
            } => {
                let why = if self.files_left == 0 {
                    format!("past the {MAX_FILES}-file limit")
                } else {
                    format!("{size} bytes, past the snapshot's size limit")
                };
                self.contents.left_out.push(left_out(path, why));
            }
            Entry::LeftOut { path, why } => self.contents.left_out.push(left_out(path, why)),
        }
        Ok(())
    }
}

/// The manifest stored in blob `hash`.
pub fn manifest(journal: &Journal, hash: &Hash) -> Result<Manifest, SnapshotError> {
    serde_json::from_slice(&journal.blob(hash)?).map_err(|e| SnapshotError::Manifest(e.to_string()))
}

/// The manifest a record's hex reference names.
pub fn manifest_by_hex(journal: &Journal, hash: &str) -> Result<Manifest, SnapshotError> {
    let hash = parse_hex(hash)
        .ok_or_else(|| SnapshotError::Manifest(format!("{hash:?} is not a blob hash")))?;
    manifest(journal, &hash)
}

/// Write the snapshot's mount `guest` into `into` (created if need be).
/// Every file comes from its blob, checked against its hash; a path that
/// would leave `into` is refused, since the journal may be hostile.
pub fn restore(
    journal: &Journal,
    manifest: &Manifest,
    guest: &str,
    into: &Path,
) -> Result<(), SnapshotError> {
    let contents = manifest
        .mounts
        .iter()
        .find(|m| m.guest == guest)
        .ok_or_else(|| SnapshotError::NoMount(guest.to_owned()))?;
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Write { path, source }
    };
    std::fs::create_dir_all(into).map_err(write_err(into))?;
    for dir in &contents.dirs {
        let path = into.join(safe_relative(dir)?);
        std::fs::create_dir_all(&path).map_err(write_err(&path))?;
    }
    for file in &contents.files {
        let path = into.join(safe_relative(&file.path)?);
        let hash = parse_hex(&file.blob).ok_or_else(|| {
            SnapshotError::Manifest(format!("{:?} is not a blob hash", file.blob))
        })?;
        let bytes = journal.blob(&hash)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err(parent))?;
        }
        std::fs::write(&path, bytes).map_err(write_err(&path))?;
    }
    Ok(())
}

/// `path` as a relative path with only normal components.
fn safe_relative(path: &str) -> Result<PathBuf, SnapshotError> {
    let relative = Path::new(path);
    let safe = !path.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if safe {
        Ok(relative.to_path_buf())
    } else {
        Err(SnapshotError::UnsafePath(path.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Access;

    fn mount(host: &Path) -> Mount {
        Mount::new(host.to_owned(), "/workspace".into(), Access::ReadWrite)
    }

    #[test]
    fn a_snapshot_restores_the_files_and_directories_it_took() {
        let root = tempfile::tempdir().unwrap();
        let (work, out) = (root.path().join("work"), root.path().join("out"));
        std::fs::create_dir_all(work.join("a/b")).unwrap();
        std::fs::create_dir_all(work.join("empty")).unwrap();
        std::fs::write(work.join("top.txt"), "top").unwrap();
        std::fs::write(work.join("a/b/deep.txt"), "deep").unwrap();
        let journal = Journal::open(&root.path().join("journal")).unwrap();

        let taken = take(&journal, &[mount(&work)], 1 << 20).unwrap();
        let manifest = manifest(&journal, &taken.manifest).unwrap();
        restore(&journal, &manifest, "/workspace", &out).unwrap();

        assert_eq!(std::fs::read_to_string(out.join("top.txt")).unwrap(), "top");
        assert_eq!(
            std::fs::read_to_string(out.join("a/b/deep.txt")).unwrap(),
            "deep"
        );
        assert!(out.join("empty").is_dir());
        assert_eq!(taken.blobs.len(), 3, "the manifest and two files");
    }

    #[test]
    fn files_past_the_size_limit_are_listed_as_left_out() {
        let root = tempfile::tempdir().unwrap();
        let work = root.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("small"), "x").unwrap();
        std::fs::write(work.join("large"), vec![b'y'; 4096]).unwrap();
        let journal = Journal::open(&root.path().join("journal")).unwrap();

        let taken = take(&journal, &[mount(&work)], 100).unwrap();
        let manifest = manifest(&journal, &taken.manifest).unwrap();

        let files: Vec<_> = manifest.mounts[0].files.iter().map(|f| &f.path).collect();
        assert_eq!(files, ["small"]);
        assert_eq!(manifest.mounts[0].left_out[0].path, "large");
    }

    #[test]
    fn a_manifest_path_that_leaves_the_scratch_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let journal = Journal::open(&root.path().join("journal")).unwrap();
        let blob = journal.put_blob(b"evil").unwrap();
        let manifest = Manifest {
            mounts: vec![MountContents {
                guest: "/workspace".into(),
                files: vec![FileEntry {
                    path: "../escaped".into(),
                    blob: hex(&blob),
                    size: 4,
                }],
                ..MountContents::default()
            }],
        };

        let refused = restore(&journal, &manifest, "/workspace", &root.path().join("out"));

        assert!(matches!(refused, Err(SnapshotError::UnsafePath(p)) if p == "../escaped"));
        assert!(!root.path().join("escaped").exists());
    }
}
