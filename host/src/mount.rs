//! Mounts as capabilities: the host directory behind each `[[filesystem]]`
//! entry is opened once, as a directory handle, and everything the host
//! does beneath it afterwards starts from that handle, never from the path.
//!
//! A path is resolved anew each time it is used, so a tool that can rename
//! or replace any directory on it (through another, outer mount, say) can
//! make the next resolution land somewhere else: on a symbolic link to the
//! host's `/`. A handle names one directory, whatever its name becomes.
//!
//! - [`OpenedDir`]: one opened mount, its device and inode recorded, and
//!   [`OpenedDir::reopen_path`], the path that names exactly that handle
//!   (for APIs, such as wasmtime-wasi's preopens, that only take paths).
//! - [`MountHandle`]: the once-only cache a [`crate::policy::Mount`]
//!   carries, shared by the policy's clones.
//! - [`walk`]: a host-side walk beneath a handle that opens every entry
//!   without following links, checks the type of what it opened, and never
//!   reads a symbolic link, device, FIFO or socket.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
use std::os::unix::fs::OpenOptionsExt as _;

/// Why a mount could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open the mount {} as a directory: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mount's host directory, opened once.
#[derive(Debug)]
pub struct OpenedDir {
    /// The path it was opened by (for messages only: never opened again).
    path: PathBuf,
    dir: Dir,
    device: u64,
    inode: u64,
}

impl OpenedDir {
    /// Open `path` as a directory, once.
    pub fn open(path: &Path) -> Result<OpenedDir, MountError> {
        let failed = |source| MountError::Open {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(failed)?;
        let meta = file.metadata().map_err(failed)?;
        use std::os::unix::fs::MetadataExt;
        tracing::debug!(
            "mount {} opened: device {}, inode {}",
            path.display(),
            meta.dev(),
            meta.ino()
        );
        Ok(OpenedDir {
            path: path.to_owned(),
            device: meta.dev(),
            inode: meta.ino(),
            dir: Dir::from_std_file(file),
        })
    }

    /// The handle.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The device and inode of the directory the handle names.
    pub fn identity(&self) -> (u64, u64) {
        (self.device, self.inode)
    }

    /// A path that opens this very handle's directory again, without
    /// resolving any name: the process's own file-descriptor link. Opening
    /// it yields the directory the handle names even after that directory
    /// was renamed, or a link was put where it was.
    pub fn reopen_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        descriptor_link(self.dir.as_raw_fd())
    }

    /// Where the directory is now, as the kernel names it (it may have been
    /// renamed since it was opened); `None` where the system cannot say.
    pub fn current_path(&self) -> Option<PathBuf> {
        std::fs::read_link(self.reopen_path()).ok()
    }
}

/// The process's own link to its open descriptor `fd`: opening it opens
/// what the descriptor names, and reading it (on Linux) says where that is
/// now.
pub fn descriptor_link(fd: std::os::fd::RawFd) -> PathBuf {
    if cfg!(target_os = "linux") {
        PathBuf::from(format!("/proc/self/fd/{fd}"))
    } else {
        PathBuf::from(format!("/dev/fd/{fd}"))
    }
}

/// The handle of one mount, opened on first use and then kept: every call,
/// snapshot and check of the mount uses the same directory, for the life of
/// the process. Clones share it.
#[derive(Clone, Default)]
pub struct MountHandle(Arc<Mutex<Option<Arc<OpenedDir>>>>);

impl MountHandle {
    /// The opened directory for `path`: the one opened before, unless the
    /// mount was pointed at another path since (scratch mounts of a replay).
    pub fn get(&self, path: &Path) -> Result<Arc<OpenedDir>, MountError> {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(opened) = slot.as_ref()
            && opened.path == path
        {
            return Ok(opened.clone());
        }
        let opened = Arc::new(OpenedDir::open(path)?);
        *slot = Some(opened.clone());
        Ok(opened)
    }
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountHandle")
    }
}

/// Two mounts are equal by what they say, not by whether they were opened.
impl PartialEq for MountHandle {
    fn eq(&self, _: &MountHandle) -> bool {
        true
    }
}

impl Eq for MountHandle {}

/// What a walk meets beneath a mount.
pub enum Entry<'a> {
    /// A directory, opened without following links; the walk goes on into it.
    Dir { path: &'a str },
    /// A regular file, opened without following links, and its bytes: all
    /// of them when they fit `max_bytes`, else `None` and its size.
    File {
        path: &'a str,
        bytes: Option<Vec<u8>>,
        size: u64,
    },
    /// Something that is not read: a link, device, FIFO, socket, or an
    /// entry that could not be opened. Why, in words.
    LeftOut { path: &'a str, why: String },
}

/// What a walk's visitor says of a file before it is read: how many bytes
/// it may read at most (`None`: do not read it at all).
pub trait Visitor {
    type Error;
    /// How many bytes of the next file may be read.
    fn budget(&mut self) -> Option<u64>;
    fn visit(&mut self, entry: Entry<'_>) -> Result<(), Self::Error>;
}

/// Walk everything beneath `root`, in name order, with no-follow opens from
/// directory handles. Each entry is opened once (non-blocking, so a FIFO
/// put in place of a file cannot stall the host) and its type is taken from
/// the opened handle, so an entry swapped for a link between listing and
/// opening is refused by the open itself, never followed.
pub fn walk<V: Visitor>(root: &Dir, visitor: &mut V) -> Result<(), V::Error> {
    walk_in(root, "", visitor)
}

fn walk_in<V: Visitor>(dir: &Dir, prefix: &str, visitor: &mut V) -> Result<(), V::Error> {
    let mut names: Vec<std::ffi::OsString> = match dir.entries() {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect(),
        Err(e) => {
            return visitor.visit(Entry::LeftOut {
                path: prefix,
                why: format!("unreadable: {e}"),
            });
        }
    };
    names.sort();
    for name in names {
        let name_text = name.to_string_lossy();
        let path = if prefix.is_empty() {
            name_text.into_owned()
        } else {
            format!("{prefix}/{name_text}")
        };
        let mut options = OpenOptions::new();
        options
            .read(true)
            .follow(FollowSymlinks::No)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY);
        let file = match dir.open_with(&name, &options) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                visitor.visit(Entry::LeftOut {
                    path: &path,
                    why: "a symbolic link (never followed)".into(),
                })?;
                continue;
            }
            Err(e) => {
                let why = match dir.symlink_metadata(&name) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        "a symbolic link (never followed)".to_owned()
                    }
                    _ => format!("cannot be opened: {e}"),
                };
                visitor.visit(Entry::LeftOut { path: &path, why })?;
                continue;
            }
        };
        let meta = match file.metadata() {
            Ok(meta) => meta,
            Err(e) => {
                visitor.visit(Entry::LeftOut {
                    path: &path,
                    why: format!("unreadable: {e}"),
                })?;
                continue;
            }
        };
        if meta.is_dir() {
            visitor.visit(Entry::Dir { path: &path })?;
            let sub = Dir::from_std_file(file.into_std());
            walk_in(&sub, &path, visitor)?;
        } else if meta.is_file() {
            let size = meta.len();
            let bytes = match visitor.budget() {
                Some(max) if size <= max => read_at_most(file.into_std(), max),
                _ => None,
            };
            match bytes {
                Some(Ok(bytes)) => visitor.visit(Entry::File {
                    path: &path,
                    size: bytes.len() as u64,
                    bytes: Some(bytes),
                })?,
                Some(Err(why)) => visitor.visit(Entry::LeftOut { path: &path, why })?,
                None => visitor.visit(Entry::File {
                    path: &path,
                    bytes: None,
                    size,
                })?,
            }
        } else {
            let kind = meta.file_type();
            use cap_std::fs::FileTypeExt;
            let what = if kind.is_fifo() {
                "a FIFO"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else {
                "not a regular file or directory"
            };
            visitor.visit(Entry::LeftOut {
                path: &path,
                why: format!("{what} (never read)"),
            })?;
        }
    }
    Ok(())
}

/// Read a file that may still be growing: at most `max` bytes, and the file
/// is refused (as past the limit) rather than read in part.
fn read_at_most(file: std::fs::File, max: u64) -> Option<Result<Vec<u8>, String>> {
    let mut bytes = Vec::new();
    match file.take(max.saturating_add(1)).read_to_end(&mut bytes) {
        Ok(_) if bytes.len() as u64 > max => None,
        Ok(_) => Some(Ok(bytes)),
        Err(e) => Some(Err(format!("unreadable: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_keeps_naming_its_directory_after_a_link_replaces_it() {
        let root = tempfile::tempdir().unwrap();
        let inner = root.path().join("inner");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(inner.join("mine.txt"), "mine").unwrap();
        let handle = MountHandle::default();
        let opened = handle.get(&inner).unwrap();

        std::fs::rename(&inner, root.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("/", &inner).unwrap();

        let again = handle.get(&inner).unwrap();
        assert_eq!(again.identity(), opened.identity());
        let through = std::fs::read_dir(again.reopen_path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>();
        assert_eq!(through, ["mine.txt"]);
    }
}
