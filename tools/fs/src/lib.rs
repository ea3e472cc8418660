//! Built-in file tools: `fs_read`, `fs_write`, `fs_list`, `fs_search`.
//!
//! Paths are guest paths inside the policy's mounts (`/workspace/src/main.rs`).
//! The sandbox, not this code, decides what is reachable: a path outside
//! every mount, a `..` that climbs out or a symlink that points out fails
//! with the sandbox's own error.
//!
//! Errors name the path and say what went wrong in plain words; a path that
//! does not exist also says what its nearest existing directory holds, so a
//! model that guessed a name sees the real ones instead of guessing again.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobMatcher};
use longrun_sdk::{Effects, JsonSchema, Tool, ToolError, plain_words};
use regex::RegexBuilder;
use serde::{Deserialize, Serialize};

const DEFAULT_READ_BYTES: u64 = 256 * 1024;

/// Arguments of `fs_read`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ReadArgs {
    /// The file to read, e.g. `/workspace/README.md`.
    path: String,
    /// Byte offset to start at (default 0).
    #[serde(default)]
    offset: u64,
    /// Most bytes to return (default 262144).
    max_bytes: Option<u64>,
}

#[derive(Serialize)]
struct ReadOutput {
    content: String,
    /// The file's whole size in bytes.
    size: u64,
    /// Whether bytes remain after what was returned.
    truncated: bool,
}

fn read(args: ReadArgs) -> Result<ReadOutput, ToolError> {
    let on = |err| on_path(&args.path, err);
    let mut file = fs::File::open(&args.path).map_err(on)?;
    let meta = file.metadata().map_err(on)?;
    if meta.is_dir() {
        return Err(ToolError::failed(format!(
            "{} is a directory: fs_list lists it{}",
            args.path,
            holds(Path::new(&args.path))
        )));
    }
    let size = meta.len();
    let want = args.max_bytes.unwrap_or(DEFAULT_READ_BYTES);
    file.seek(SeekFrom::Start(args.offset)).map_err(on)?;
    let mut buf = Vec::new();
    file.take(want).read_to_end(&mut buf).map_err(on)?;
    let content = String::from_utf8(buf)
        .map_err(|_| ToolError::failed(format!("{} is not UTF-8 text", args.path)))?;
    let end = args.offset.saturating_add(content.len() as u64);
    Ok(ReadOutput {
        content,
        size,
        truncated: end < size,
    })
}

/// Arguments of `fs_write`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WriteArgs {
    /// The file to write, e.g. `/workspace/notes.md`.
    path: String,
    /// The text to write.
    content: String,
    /// Append instead of replacing the file (default false).
    #[serde(default)]
    append: bool,
    /// Create missing parent directories (default false).
    #[serde(default)]
    create_dirs: bool,
}

#[derive(Serialize)]
struct WriteOutput {
    bytes_written: usize,
}

fn write(args: WriteArgs) -> Result<WriteOutput, ToolError> {
    let on = |err| on_path(&args.path, err);
    if args.create_dirs
        && let Some(parent) = Path::new(&args.path).parent()
    {
        fs::create_dir_all(parent).map_err(on)?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(args.append)
        .truncate(!args.append)
        .open(&args.path)
        .map_err(on)?;
    file.write_all(args.content.as_bytes()).map_err(on)?;
    Ok(WriteOutput {
        bytes_written: args.content.len(),
    })
}

/// Arguments of `fs_list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// The directory to list, e.g. `/workspace`.
    path: String,
    /// Descend into subdirectories (default false).
    #[serde(default)]
    recursive: bool,
    /// Most entries to return (default 1000).
    max_entries: Option<usize>,
}

#[derive(Serialize)]
struct Entry {
    path: String,
    kind: &'static str,
    size: u64,
}

#[derive(Serialize)]
struct ListOutput {
    entries: Vec<Entry>,
    truncated: bool,
}

fn list(args: ListArgs) -> Result<ListOutput, ToolError> {
    let max = args.max_entries.unwrap_or(1000);
    let mut entries = Vec::new();
    let mut truncated = false;
    walk(Path::new(&args.path), args.recursive, &mut |path, meta| {
        if entries.len() >= max {
            truncated = true;
            return false;
        }
        entries.push(Entry {
            path: path.display().to_string(),
            kind: kind_of(meta),
            size: meta.len(),
        });
        true
    })?;
    Ok(ListOutput { entries, truncated })
}

/// An I/O error on `path`, in words a model can act on: the path, what went
/// wrong, and where it helps, what is there instead.
fn on_path(path: &str, err: std::io::Error) -> ToolError {
    let there = Path::new(path);
    let hint = match err.kind() {
        std::io::ErrorKind::NotFound => holds(there),
        std::io::ErrorKind::NotADirectory if there.is_file() => {
            " (it is a file: fs_read reads it)".to_owned()
        }
        std::io::ErrorKind::IsADirectory => " (fs_list lists it)".to_owned(),
        _ => String::new(),
    };
    ToolError::io(&err, format!("{path}: {}{hint}", plain_words(&err)))
}

/// Most names [`holds`] shows.
const NAMES_SHOWN: usize = 20;

/// What the nearest existing directory at or above `path` holds, as
/// "; /workspace holds: a.txt, src/", or nothing when none can be listed
/// (outside every mount).
fn holds(path: &Path) -> String {
    let Some(dir) = path.ancestors().find(|a| a.is_dir()) else {
        return String::new();
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return String::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                name + "/"
            } else {
                name
            }
        })
        .collect();
    names.sort();
    let more = names.len().saturating_sub(NAMES_SHOWN);
    names.truncate(NAMES_SHOWN);
    match (names.is_empty(), more) {
        (true, _) => format!("; {} is empty", dir.display()),
        (false, 0) => format!("; {} holds: {}", dir.display(), names.join(", ")),
        (false, more) => format!(
            "; {} holds: {} (and {more} more)",
            dir.display(),
            names.join(", ")
        ),
    }
}

fn kind_of(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "dir"
    } else if meta.is_symlink() {
        "symlink"
    } else {
        "file"
    }
}

/// Visits the entries below `dir` in name order; `visit` returns false to stop.
fn walk(
    dir: &Path,
    recursive: bool,
    visit: &mut dyn FnMut(&Path, &fs::Metadata) -> bool,
) -> Result<bool, ToolError> {
    let on = |err| on_path(&dir.display().to_string(), err);
    let mut children: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(on)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    children.sort();
    for child in children {
        let meta = fs::symlink_metadata(&child)
            .map_err(|err| on_path(&child.display().to_string(), err))?;
        if !visit(&child, &meta) {
            return Ok(false);
        }
        if recursive && meta.is_dir() && !walk(&child, recursive, visit)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Arguments of `fs_search`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SearchArgs {
    /// The directory to search, recursively, e.g. `/workspace`.
    path: String,
    /// A regular expression (Rust `regex` syntax) matched against each line.
    pattern: String,
    /// Only files whose path matches this glob, e.g. `**/*.rs`.
    glob: Option<String>,
    /// Match case-insensitively (default false).
    #[serde(default)]
    ignore_case: bool,
    /// Most matching lines to return (default 200).
    max_matches: Option<usize>,
}

#[derive(Serialize)]
struct Match {
    path: String,
    line: usize,
    text: String,
}

#[derive(Serialize)]
struct SearchOutput {
    matches: Vec<Match>,
    files_searched: usize,
    truncated: bool,
}

fn search(args: SearchArgs) -> Result<SearchOutput, ToolError> {
    let regex = RegexBuilder::new(&args.pattern)
        .case_insensitive(args.ignore_case)
        .size_limit(1 << 20)
        .build()
        .map_err(ToolError::invalid_args)?;
    let glob: Option<GlobMatcher> = args
        .glob
        .as_deref()
        .map(|g| Glob::new(g).map(|g| g.compile_matcher()))
        .transpose()
        .map_err(ToolError::invalid_args)?;
    let max = args.max_matches.unwrap_or(200);
    let root = Path::new(&args.path);
    let mut out = SearchOutput {
        matches: Vec::new(),
        files_searched: 0,
        truncated: false,
    };
    walk(root, true, &mut |path, meta| {
        if !meta.is_file() {
            return true;
        }
        let relative = path.strip_prefix(root).unwrap_or(path);
        if let Some(glob) = &glob
            && !glob.is_match(relative)
            && !glob.is_match(path)
        {
            return true;
        }
        // Binary or unreadable files are skipped, as grep does.
        let Ok(text) = fs::read_to_string(path) else {
            return true;
        };
        out.files_searched += 1;
        for (i, line) in text.lines().enumerate() {
            if regex.is_match(line) {
                if out.matches.len() >= max {
                    out.truncated = true;
                    return false;
                }
                out.matches.push(Match {
                    path: path.display().to_string(),
                    line: i + 1,
                    text: line.chars().take(500).collect(),
                });
            }
        }
        true
    })?;
    Ok(out)
}

longrun_sdk::export_tools! {
    Tool::new("fs_read", "Read a UTF-8 text file from a mounted directory", read)
        .effects(Effects::Reads)
        .idempotent(true),
    Tool::new("fs_write", "Write (or append to) a text file in a read-write mount", write)
        .effects(Effects::Writes)
        .idempotent(false),
    Tool::new("fs_list", "List a directory, optionally recursively", list)
        .effects(Effects::Reads)
        .idempotent(true),
    Tool::new("fs_search", "Search files for lines matching a regex, optionally filtered by a glob", search)
        .effects(Effects::Reads)
        .idempotent(true),
}
