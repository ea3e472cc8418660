//! Where the built-in tool components live.
//!
//! `$LONGRUN_TOOLS_DIR` wins. Otherwise the host looks beside its own
//! executable, as `scripts/build-tools` lays out a build: for
//! `target/<profile>/longrun` (or a test binary in `target/<profile>/deps/`)
//! the built-in components are copied to `target/longrun-tools/`.

use std::path::{Path, PathBuf};

/// The directory of built-in tool components, if one can be found.
pub fn builtin_tools_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LONGRUN_TOOLS_DIR") {
        return Some(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(4)
        .map(|dir| dir.join("longrun-tools"))
        .find(|dir| has_components(dir))
}

fn has_components(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "wasm"))
    })
}
