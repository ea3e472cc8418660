//! Built-in notes store: `notes_put`, `notes_get`, `notes_list`,
//! `notes_delete` — a key-value memory the agent can use instead of its
//! context. Notes are files in the directory the policy mounts at `/notes`,
//! so they outlive the call, the session and the host.

use std::fs;
use std::path::PathBuf;

use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
use serde::{Deserialize, Serialize};

const NOTES_DIR: &str = "/notes";

/// Keys are file names, so they are kept to a safe alphabet.
fn note_path(key: &str) -> Result<PathBuf, ToolError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'));
    if !ok {
        return Err(ToolError::invalid_args(format!(
            "invalid key {key:?}: use 1-128 letters, digits, `_`, `-`, `.`, not starting with `.`"
        )));
    }
    Ok(PathBuf::from(NOTES_DIR).join(key))
}

fn no_mount(err: std::io::Error) -> ToolError {
    if err.kind() == std::io::ErrorKind::NotFound && fs::metadata(NOTES_DIR).is_err() {
        ToolError::denied("the policy mounts no /notes directory")
    } else {
        err.into()
    }
}

/// Arguments of `notes_put`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PutArgs {
    /// The note's key.
    key: String,
    /// The note's text; replaces any earlier value.
    value: String,
}

/// Arguments of `notes_get` and `notes_delete`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct KeyArgs {
    /// The note's key.
    key: String,
}

/// Arguments of `notes_list`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// Only keys that start with this.
    #[serde(default)]
    prefix: String,
}

#[derive(Serialize)]
struct Note {
    key: String,
    value: Option<String>,
}

#[derive(Serialize)]
struct Keys {
    keys: Vec<String>,
}

#[derive(Serialize)]
struct Done {
    key: String,
    existed: bool,
}

fn put(args: PutArgs) -> Result<Done, ToolError> {
    let path = note_path(&args.key)?;
    let existed = path.exists();
    fs::write(&path, args.value).map_err(no_mount)?;
    Ok(Done {
        key: args.key,
        existed,
    })
}

fn get(args: KeyArgs) -> Result<Note, ToolError> {
    let path = note_path(&args.key)?;
    let value = match fs::read_to_string(&path) {
        Ok(v) => Some(v),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::metadata(NOTES_DIR).map_err(no_mount)?;
            None
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Note {
        key: args.key,
        value,
    })
}

fn list(args: ListArgs) -> Result<Keys, ToolError> {
    let mut keys: Vec<String> = fs::read_dir(NOTES_DIR)
        .map_err(no_mount)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|k| k.starts_with(&args.prefix) && !k.starts_with('.'))
        .collect();
    keys.sort();
    Ok(Keys { keys })
}

fn delete(args: KeyArgs) -> Result<Done, ToolError> {
    let path = note_path(&args.key)?;
    let existed = match fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::metadata(NOTES_DIR).map_err(no_mount)?;
            false
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Done {
        key: args.key,
        existed,
    })
}

longrun_sdk::export_tools! {
    Tool::new("notes_put", "Store a note under a key (replaces an earlier value)", put)
        .effects(Effects::Writes)
        .idempotent(true),
    Tool::new("notes_get", "Read the note stored under a key", get)
        .effects(Effects::Reads)
        .idempotent(true),
    Tool::new("notes_list", "List the keys of stored notes, optionally by prefix", list)
        .effects(Effects::Reads)
        .idempotent(true),
    Tool::new("notes_delete", "Delete the note stored under a key", delete)
        .effects(Effects::Writes)
        .idempotent(true),
}
