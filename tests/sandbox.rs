//! The sandbox engine itself: the on-disk cache of compiled components.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use longrun_host::sandbox::{Sandbox, SandboxConfig, SandboxError, Toolbox};

fn example_component() -> PathBuf {
    common::builtin_tools_dir().join("longrun_tool_example.wasm")
}

fn sandbox(cache: &std::path::Path) -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            cache_dir: Some(cache.to_owned()),
            max_concurrent_calls: 4,
        })
        .unwrap(),
    )
}

fn cached_files(cache: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cache)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test]
async fn a_compiled_component_is_cached_on_disk_and_reused_by_a_new_host() {
    let cache = tempfile::tempdir().unwrap();
    Toolbox::load(sandbox(cache.path()), &[example_component()])
        .await
        .unwrap();
    let after_first = cached_files(cache.path());
    assert_eq!(
        after_first.len(),
        2,
        "one compiled file and its checksum: {after_first:?}"
    );
    let compiled = after_first
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let written = std::fs::metadata(compiled).unwrap().modified().unwrap();

    // A restarted host (a new engine) finds the entry and does not rewrite it.
    let toolbox = Toolbox::load(sandbox(cache.path()), &[example_component()])
        .await
        .unwrap();
    assert!(toolbox.tool("echo").is_some());
    assert_eq!(cached_files(cache.path()), after_first);
    assert_eq!(
        std::fs::metadata(compiled).unwrap().modified().unwrap(),
        written
    );
}

#[tokio::test]
async fn a_corrupted_cache_entry_is_not_trusted_but_compiled_again() {
    let cache = tempfile::tempdir().unwrap();
    Toolbox::load(sandbox(cache.path()), &[example_component()])
        .await
        .unwrap();
    let compiled = cached_files(cache.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .unwrap();
    let mut bytes = std::fs::read(&compiled).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&compiled, &bytes).unwrap();

    let toolbox = Toolbox::load(sandbox(cache.path()), &[example_component()])
        .await
        .unwrap();
    assert!(toolbox.tool("word_count").is_some());
    assert_ne!(
        std::fs::read(&compiled).unwrap(),
        bytes,
        "the entry was rewritten"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm not really").unwrap();
    let err = Toolbox::load(sandbox(dir.path()), std::slice::from_ref(&bogus))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SandboxError::NothingLoaded { refused }
            if refused.len() == 1 && refused[0].file == "bogus.wasm" && !refused[0].reason.is_empty()),
        "{err}"
    );
    assert!(err.to_string().contains("bogus.wasm: "), "{err}");
}

#[tokio::test]
async fn a_tool_name_two_components_export_is_refused_in_both() {
    let cache = tempfile::tempdir().unwrap();
    let err = Toolbox::load(
        sandbox(cache.path()),
        &[example_component(), example_component()],
    )
    .await
    .err()
    .unwrap();
    let SandboxError::NothingLoaded { refused } = &err else {
        panic!("{err}");
    };
    let echo: Vec<_> = refused
        .iter()
        .filter(|r| r.reason.starts_with("tool \"echo\" is refused"))
        .collect();
    assert_eq!(echo.len(), 2, "{err}");
}
