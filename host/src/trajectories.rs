//! Heavy mode: a session that runs N trajectories on its goal (child
//! sessions on its own model, each from the same start) and answers with
//! the one its model finds best.
//!
//! What this module holds, apart from the loop that drives it
//! ([`crate::agent::Session`]):
//!
//! - the workspace copies: each of the parent's read-write mounts is given
//!   to each trajectory as a copy of its own, restored from the parent's
//!   snapshot (so every trajectory starts from the same files, none touches
//!   the real ones, and none sees another's), and mounted at the same guest
//!   path ([`trajectory_policy`], [`restore_copies`]);
//! - the comparison: the prompt that lists the completed trajectories'
//!   answers, and the strict reading of the model's reply ([`parse_choice`]);
//! - the changes: what the chosen trajectory's copies hold that the
//!   snapshot did not ([`changes`]), and their application to the real
//!   mounts through the mounts' directory handles, where each file is
//!   written only if it still holds what the snapshot held ([`apply`]).
//!   Applying is idempotent: a file that already holds the change is left
//!   as it is, so an application a crash cut short is finished, never
//!   repeated.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, OpenOptions};
use longrun_journal::payload::{ChangesApplied, FileChange, MountCopy, PathNote, Trajectory};

use crate::journal::{Hash, Journal, JournalError, SessionId, parse_hex};
use crate::policy::{Access, Mount, Policy};
use crate::snapshot::{Manifest, SnapshotError};

/// Why heavy mode cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum HeavyError {
    #[error("heavy mode runs at least 2 trajectories; {0} were asked for")]
    TooFew(u32),
    #[error(
        "heavy mode runs its trajectories as child sessions: the policy needs a [children] section"
    )]
    NoChildren,
    #[error(
        "{asked} trajectories were asked for, and the policy's [children] max_children is {max}"
    )]
    TooMany { asked: u32, max: u32 },
    #[error("this host gave the session no way to run child sessions")]
    NoWorkers,
    #[error(
        "the read-write mount {0} must be copied for each trajectory, and this host has no scratch directory for the copies"
    )]
    NoScratch(String),
    #[error(
        "the read-write mount {0} must be copied for each trajectory from the session's snapshot, and no snapshot was taken (snapshots are off)"
    )]
    NoSnapshot(String),
    #[error(
        "the read-write mount {guest} cannot be copied whole for the trajectories: {path:?} was left out of its snapshot ({why})"
    )]
    LeftOut {
        guest: String,
        path: String,
        why: String,
    },
    #[error("no trajectory completed: {0}")]
    NoneCompleted(String),
    #[error("the trajectory's policy: {0}")]
    Policy(String),
    #[error("cannot prepare the copy at {}: {source}", path.display())]
    Copy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Where a host keeps heavy mode's copies for the journal at `location`:
/// beside a journal directory (`DIR.scratch`), or under the current
/// directory (`.longrun/scratch`) for a database; none for a journal in
/// memory.
pub fn scratch_dir(location: &crate::journal::Location) -> Option<PathBuf> {
    use crate::journal::Location;
    match location {
        Location::Dir(dir) | Location::Segments(dir) | Location::Sled(dir) => {
            let mut name = dir.file_name()?.to_os_string();
            name.push(".scratch");
            Some(dir.with_file_name(name))
        }
        Location::Postgres(_) => std::env::current_dir()
            .ok()
            .map(|here| here.join(".longrun").join("scratch")),
        Location::Memory => None,
    }
}

/// The id of the host's own "call" that starts trajectory `index`: what its
/// `child_started` record names as the call that asked for it.
pub fn call_id(index: u32) -> String {
    format!("trajectory-{index}")
}

/// Check that a session under `policy` can run `n` trajectories: two at
/// least, as many as its `[children]` allows; and, where it has read-write
/// mounts, a scratch directory and snapshots to copy them from.
pub fn check(
    policy: &Policy,
    n: u32,
    scratch: Option<&Path>,
    snapshot_bytes: u64,
) -> Result<(), HeavyError> {
    if n < 2 {
        return Err(HeavyError::TooFew(n));
    }
    let children = policy.children.as_ref().ok_or(HeavyError::NoChildren)?;
    if n > children.max_children {
        return Err(HeavyError::TooMany {
            asked: n,
            max: children.max_children,
        });
    }
    if let Some(mount) = policy
        .filesystem
        .iter()
        .find(|m| m.access == Access::ReadWrite)
    {
        if scratch.is_none() {
            return Err(HeavyError::NoScratch(mount.guest.clone()));
        }
        if snapshot_bytes == 0 {
            return Err(HeavyError::NoSnapshot(mount.guest.clone()));
        }
    }
    Ok(())
}

/// Where trajectory `index` of session `parent` keeps its copies.
fn copies_dir(scratch: &Path, parent: SessionId, index: u32) -> PathBuf {
    scratch.join(parent.to_string()).join(index.to_string())
}

/// The policy trajectory `index` runs under: `derived` (the parent's,
/// narrowed as for any child) with each read-write mount replaced by a copy
/// beneath `scratch`, and the copies it names. The copies are made when the
/// trajectory starts ([`restore_copies`]).
pub fn trajectory_policy(
    derived: &Policy,
    manifest: Option<&Manifest>,
    scratch: Option<&Path>,
    parent: SessionId,
    index: u32,
) -> Result<(Policy, Trajectory), HeavyError> {
    let mut policy = derived.clone();
    let mut copies = Vec::new();
    for (i, mount) in policy.filesystem.iter_mut().enumerate() {
        if mount.access != Access::ReadWrite {
            continue;
        }
        let scratch = scratch.ok_or_else(|| HeavyError::NoScratch(mount.guest.clone()))?;
        let manifest = manifest.ok_or_else(|| HeavyError::NoSnapshot(mount.guest.clone()))?;
        let contents = manifest
            .mounts
            .iter()
            .find(|m| m.guest == mount.guest)
            .ok_or_else(|| HeavyError::NoSnapshot(mount.guest.clone()))?;
        if let Some(left) = contents.left_out.first() {
            return Err(HeavyError::LeftOut {
                guest: mount.guest.clone(),
                path: left.path.clone(),
                why: left.why.clone(),
            });
        }
        let host = copies_dir(scratch, parent, index).join(i.to_string());
        // The policy's mounts must exist to be parsed as mounts; the copy's
        // contents come when the trajectory starts.
        std::fs::create_dir_all(&host).map_err(|source| HeavyError::Copy {
            path: host.clone(),
            source,
        })?;
        let mut copy = Mount::new(host.clone(), mount.guest.clone(), Access::ReadWrite);
        copy.symlinks = mount.symlinks;
        *mount = copy;
        copies.push(MountCopy {
            guest: mount.guest.clone(),
            host: host.to_string_lossy().into_owned(),
        });
    }
    let text = policy.render();
    let policy = Policy::parse(&text, "a trajectory's policy", Path::new("/"))
        .map_err(|e| HeavyError::Policy(e.to_string()))?;
    Ok((policy, Trajectory { index, copies }))
}

/// `child`, a trajectory's recorded policy, as the narrowing of `parent`
/// it was derived from: each copy named by `trajectory` mounted from the
/// parent's read-write mount at the same guest path again. What an auditor
/// checks against the parent's policy; a copy that is not of a read-write
/// mount of the parent's is refused.
pub fn as_derived(
    child: &Policy,
    parent: &Policy,
    trajectory: &Trajectory,
) -> Result<Policy, String> {
    let mut derived = child.clone();
    for copy in &trajectory.copies {
        let outer = parent
            .filesystem
            .iter()
            .find(|m| m.guest == copy.guest && m.access == Access::ReadWrite)
            .ok_or_else(|| {
                format!(
                    "its copy at {} is not of a read-write mount of the parent's",
                    copy.guest
                )
            })?;
        let mount = derived
            .filesystem
            .iter_mut()
            .find(|m| m.guest == copy.guest && m.host == Path::new(&copy.host))
            .ok_or_else(|| format!("its policy does not mount the copy {}", copy.host))?;
        let mut original = Mount::new(outer.host.clone(), mount.guest.clone(), mount.access);
        original.symlinks = mount.symlinks;
        *mount = original;
    }
    Ok(derived)
}

/// Make trajectory copies afresh from the parent's snapshot (the manifest
/// in blob `snapshot`, hex): whatever a start cut short left there is
/// removed first.
pub fn restore_copies(
    journal: &Journal,
    snapshot: &str,
    copies: &[MountCopy],
) -> Result<(), HeavyError> {
    let manifest = crate::snapshot::manifest_by_hex(journal, snapshot)?;
    for copy in copies {
        let path = PathBuf::from(&copy.host);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(HeavyError::Copy { path, source }),
        }
        crate::snapshot::restore(journal, &manifest, &copy.guest, &path)?;
    }
    Ok(())
}

/// Remove a trajectory's copies, and the directories that held only them.
pub fn remove_copies(copies: &[MountCopy]) -> std::io::Result<()> {
    for copy in copies {
        let path = Path::new(&copy.host);
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // The trajectory's directory, then the session's, once empty.
        for dir in path.ancestors().skip(1).take(2) {
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// A completed trajectory, as the comparison shows it.
pub struct Candidate {
    pub index: u32,
    pub child: SessionId,
    pub answer: String,
}

/// The request that asks the model to compare `candidates`' answers to
/// `goal`.
pub fn comparison_prompt(goal: &str, candidates: &[Candidate]) -> String {
    let mut prompt =
        format!("Several attempts worked on the same task independently.\n\nTask: {goal}\n\n");
    for (i, c) in candidates.iter().enumerate() {
        prompt.push_str(&format!("Answer {}:\n{}\n\n", i + 1, c.answer.trim()));
    }
    prompt.push_str(&format!(
        "Which answer is best? Reply with its number only, from 1 to {}.",
        candidates.len()
    ));
    prompt
}

/// What the loop says after a reply that named no answer.
pub fn ask_again(of: usize) -> String {
    format!("Reply with one number from 1 to {of} only: the number of the best answer.")
}

/// The answer (from 1 to `of`) a comparison `reply` names, read strictly:
/// the reply must name exactly one number in range, and no other number.
pub fn parse_choice(reply: &str, of: usize) -> Result<usize, String> {
    let numbers: std::collections::BTreeSet<usize> = reply
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(usize::MAX))
        .collect();
    let mut numbers = numbers.into_iter();
    match (numbers.next(), numbers.next()) {
        (Some(n), None) if (1..=of).contains(&n) => Ok(n),
        (Some(n), None) => Err(format!("the reply names {n}, not a number from 1 to {of}")),
        (None, _) => Err(format!("the reply names no number: {:?}", cut(reply))),
        (Some(_), Some(_)) => Err(format!(
            "the reply names more than one number: {:?}",
            cut(reply)
        )),
    }
}

fn cut(text: &str) -> &str {
    match text.char_indices().nth(200) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// What a trajectory's copies hold that the snapshot did not.
#[derive(Debug, Default)]
pub struct Changes {
    pub changes: Vec<FileChange>,
    /// What could not be carried over, with why.
    pub left_out: Vec<PathNote>,
    /// The blobs of the changes' new contents, each once: what the record
    /// that holds them must reference.
    pub blobs: Vec<Hash>,
}

/// What the copies of the chosen trajectory hold that the parent's snapshot
/// (`before`) did not: each changed, new or removed file, with its new
/// contents stored as blobs, and what could not be carried over. Read
/// through each copy's directory handle without following links, as a
/// snapshot is.
pub fn changes(
    journal: &Journal,
    before: &Manifest,
    copies: &[MountCopy],
    limit_bytes: u64,
) -> Result<Changes, HeavyError> {
    let mounts: Vec<Mount> = copies
        .iter()
        .map(|c| Mount::new(PathBuf::from(&c.host), c.guest.clone(), Access::ReadWrite))
        .collect();
    let taken = crate::snapshot::take(journal, &mounts, limit_bytes)?;
    let after = crate::snapshot::manifest(journal, &taken.manifest)?;
    let mut changes = Vec::new();
    let mut left_out = Vec::new();
    for now in &after.mounts {
        let was: BTreeMap<&str, &str> = before
            .mounts
            .iter()
            .find(|m| m.guest == now.guest)
            .map(|m| {
                m.files
                    .iter()
                    .map(|f| (f.path.as_str(), f.blob.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        let is: BTreeMap<&str, &str> = now
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.blob.as_str()))
            .collect();
        for (path, blob) in &is {
            if was.get(path) != Some(blob) {
                changes.push(FileChange {
                    guest: now.guest.clone(),
                    path: (*path).to_owned(),
                    before: was.get(path).map(|b| (*b).to_owned()),
                    after: Some((*blob).to_owned()),
                });
            }
        }
        let gone = now.left_out.iter().map(|l| l.path.as_str());
        for (path, blob) in &was {
            // A file left out of the copy's walk was not removed: it could
            // not be read, and is reported below.
            if !is.contains_key(path) && !gone.clone().any(|g| g == *path) {
                changes.push(FileChange {
                    guest: now.guest.clone(),
                    path: (*path).to_owned(),
                    before: Some((*blob).to_owned()),
                    after: None,
                });
            }
        }
        left_out.extend(now.left_out.iter().map(|l| PathNote {
            guest: now.guest.clone(),
            path: l.path.clone(),
            why: l.why.clone(),
        }));
    }
    // Only the blobs the changes name, not the copy's manifest.
    let mut blobs = Vec::new();
    for change in &changes {
        if let Some(hash) = change.after.as_deref().and_then(parse_hex)
            && !blobs.contains(&hash)
        {
            blobs.push(hash);
        }
    }
    Ok(Changes {
        changes,
        left_out,
        blobs,
    })
}

/// Apply `changes` to the real `mounts`, each through its mount's directory
/// handle: a file is written (to a new file beside it, then renamed over
/// it) or removed only if it still holds what the snapshot held; one that
/// already holds the change is left alone; anything else is a conflict,
/// listed and not touched.
pub fn apply(
    journal: &Journal,
    mounts: &[Mount],
    changes: &[FileChange],
) -> Result<ChangesApplied, HeavyError> {
    let mut applied = 0;
    let mut conflicts = Vec::new();
    for change in changes {
        let conflict = |why: String| PathNote {
            guest: change.guest.clone(),
            path: change.path.clone(),
            why,
        };
        let Some(mount) = mounts
            .iter()
            .find(|m| m.guest == change.guest && m.access == Access::ReadWrite)
        else {
            conflicts.push(conflict("no read-write mount there".into()));
            continue;
        };
        let opened = match mount.open() {
            Ok(opened) => opened,
            Err(e) => {
                conflicts.push(conflict(e.to_string()));
                continue;
            }
        };
        let after = match change.after.as_deref() {
            None => None,
            Some(blob) => {
                let hash = parse_hex(blob).ok_or_else(|| {
                    SnapshotError::Manifest(format!("{blob:?} is not a blob hash"))
                })?;
                Some(journal.blob(&hash)?)
            }
        };
        match apply_one(opened.dir(), change, after.as_deref()) {
            Ok(()) => applied += 1,
            Err(why) => conflicts.push(conflict(why)),
        }
    }
    Ok(ChangesApplied { applied, conflicts })
}

/// One change beneath `dir`, or why it was not made.
fn apply_one(dir: &Dir, change: &FileChange, after: Option<&[u8]>) -> Result<(), String> {
    let path = relative(&change.path)?;
    let now = read_nofollow(dir, &path)?;
    let now_hex = now.as_deref().map(|b| blake3::hash(b).to_hex().to_string());
    if now_hex == change.after {
        return Ok(());
    }
    if now_hex != change.before {
        return Err(match now_hex {
            Some(_) => "the file changed since the session started".into(),
            None => "the file was removed since the session started".into(),
        });
    }
    match after {
        None => dir
            .remove_file(&path)
            .map_err(|e| format!("cannot remove it: {e}")),
        Some(bytes) => write_replacing(dir, &path, bytes),
    }
}

/// `path` with only plain components (a record may be hostile).
fn relative(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(p.to_path_buf())
    } else {
        Err(format!("{path:?} is not a plain relative path"))
    }
}

/// The bytes of the regular file at `path` beneath `dir`, opened without
/// following a link; `None` if there is none.
fn read_nofollow(dir: &Dir, path: &Path) -> Result<Option<Vec<u8>>, String> {
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    let mut file = match dir.open_with(path, &options) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() {
        return Err("it is not a regular file now".into());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(Some(bytes))
}

/// Write `bytes` to a new file beside `path` and rename it over `path`, so
/// that a reader (or a crash) sees the old contents or the new, never part.
fn write_replacing(dir: &Dir, path: &Path, bytes: &[u8]) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.longrun-apply"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        dir.create_dir_all(parent)
            .map_err(|e| format!("cannot make its directory: {e}"))?;
    }
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(true)
        .truncate(true)
        .follow(FollowSymlinks::No);
    let mut file = dir
        .open_with(&temp, &options)
        .map_err(|e| format!("cannot write it: {e}"))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write it: {e}"))?;
    dir.rename(&temp, dir, path)
        .map_err(|e| format!("cannot put it in place: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::hex;

    #[test]
    fn a_reply_counts_only_when_it_names_one_number_in_range() {
        assert_eq!(parse_choice("2", 4), Ok(2));
        assert_eq!(parse_choice("Answer 3 is best.", 4), Ok(3));
        assert_eq!(parse_choice(" 1\n", 2), Ok(1));
        assert!(
            parse_choice("5", 4)
                .unwrap_err()
                .contains("not a number from 1 to 4")
        );
        assert!(parse_choice("0", 4).is_err());
        assert!(
            parse_choice("2 is better than 1", 4)
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            parse_choice("the second", 4)
                .unwrap_err()
                .contains("no number")
        );
        assert!(parse_choice("99999999999999999999999", 4).is_err());
    }

    #[test]
    fn applying_writes_only_files_that_still_hold_what_the_snapshot_held() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join("same.txt"), "old").unwrap();
        std::fs::write(real.join("theirs.txt"), "someone else's").unwrap();
        std::fs::write(real.join("gone.txt"), "bye").unwrap();
        let journal = Journal::open(&root.path().join("journal")).unwrap();
        let blob = |bytes: &[u8]| hex(&journal.put_blob(bytes).unwrap());
        let change = |path: &str, before: Option<String>, after: Option<String>| FileChange {
            guest: "/w".into(),
            path: path.into(),
            before,
            after,
        };
        let changes = [
            change("same.txt", Some(blob(b"old")), Some(blob(b"new"))),
            change("theirs.txt", Some(blob(b"old")), Some(blob(b"mine"))),
            change("sub/added.txt", None, Some(blob(b"added"))),
            change("gone.txt", Some(blob(b"bye")), None),
            change("../escape.txt", None, Some(blob(b"x"))),
        ];
        let mounts = [Mount::new(real.clone(), "/w".into(), Access::ReadWrite)];

        let first = apply(&journal, &mounts, &changes).unwrap();
        let again = apply(&journal, &mounts, &changes).unwrap();

        assert_eq!(
            std::fs::read_to_string(real.join("same.txt")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(real.join("theirs.txt")).unwrap(),
            "someone else's"
        );
        assert_eq!(
            std::fs::read_to_string(real.join("sub/added.txt")).unwrap(),
            "added"
        );
        assert!(!real.join("gone.txt").exists());
        assert!(!root.path().join("escape.txt").exists());
        let conflicted: Vec<&str> = first.conflicts.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(conflicted, ["theirs.txt", "../escape.txt"]);
        assert_eq!(first.applied, 3);
        assert_eq!(again, first, "applying twice changes nothing more");
    }

    #[test]
    fn a_link_where_a_changed_file_was_is_a_conflict_and_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(root.path().join("outside.txt"), "old").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.txt"), real.join("f.txt")).unwrap();
        let journal = Journal::open(&root.path().join("journal")).unwrap();
        let blob = |bytes: &[u8]| hex(&journal.put_blob(bytes).unwrap());
        let changes = [FileChange {
            guest: "/w".into(),
            path: "f.txt".into(),
            before: Some(blob(b"old")),
            after: Some(blob(b"new")),
        }];
        let mounts = [Mount::new(real.clone(), "/w".into(), Access::ReadWrite)];

        let applied = apply(&journal, &mounts, &changes).unwrap();

        assert_eq!(applied.applied, 0);
        assert_eq!(applied.conflicts.len(), 1);
        assert_eq!(
            std::fs::read_to_string(root.path().join("outside.txt")).unwrap(),
            "old"
        );
    }
}
