//! Builds the built-in tool components (wasm32-wasip2) and embeds them in
//! the `longrun` binary, so that an installed binary (`cargo install --path
//! .`) has its tools wherever it runs, without the repository.
//!
//! The components are built by a nested cargo, with exactly the packages,
//! profile and target directory that `scripts/build-tools` uses: when that
//! script has run, this build finds them fresh (and the other way round),
//! and the embedded bytes are the ones the tests load from
//! `target/longrun-tools`. They are copied into `OUT_DIR` before they are
//! included, so a later tool build cannot change what this binary holds.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The tools every `longrun` has (`tools/<name>`).
const BUILTIN: [&str; 5] = ["fs", "http", "json", "notes", "example"];
/// Built with them by `scripts/build-tools` (test tools): the same package
/// set, so both builds resolve the same features and share the artifacts.
const ALSO_BUILT: [&str; 2] = ["hostile", "altered"];
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let root = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    for watched in ["tools", "sdk", "wit", "tests/tools", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out = PathBuf::from(env("OUT_DIR"));
    let target_dir = target_dir(&out);
    build_tools(&root, &target_dir);

    let built = target_dir.join(WASM_TARGET).join("tools");
    let mut source = String::from(
        "/// The built-in tool components: (file name, bytes).\n\
         pub static BUILTIN_TOOLS: &[(&str, &[u8])] = &[\n",
    );
    for name in BUILTIN {
        let file = format!("longrun_tool_{name}.wasm");
        let copy = out.join(&file);
        if let Err(e) = std::fs::copy(built.join(&file), &copy) {
            panic!("copying the built {file} from {}: {e}", built.display());
        }
        source.push_str(&format!(
            "    ({file:?}, include_bytes!({:?})),\n",
            copy.display().to_string()
        ));
    }
    source.push_str("];\n");
    if let Err(e) = std::fs::write(out.join("builtin_tools.rs"), source) {
        panic!("writing builtin_tools.rs: {e}");
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// The target directory this build writes to: the nearest ancestor of
/// `OUT_DIR` that cargo marked as one (`CACHEDIR.TAG`).
fn target_dir(out: &Path) -> PathBuf {
    match out
        .ancestors()
        .find(|dir| dir.join("CACHEDIR.TAG").is_file())
    {
        Some(dir) => dir.to_owned(),
        None => out.join("tools-target"),
    }
}

fn build_tools(root: &Path, target_dir: &Path) {
    if !has_wasm_target() {
        // What scripts/build-tools does too; a clear error if it cannot.
        let added = Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .status();
        if !added.is_ok_and(|s| s.success()) {
            panic!(
                "the {WASM_TARGET} target is needed to build the built-in tools: run `rustup target add {WASM_TARGET}`"
            );
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args([
            "build",
            "--profile",
            "tools",
            "--locked",
            "--target",
            WASM_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for name in BUILTIN.iter().chain(&ALSO_BUILT) {
        command.args(["-p", &format!("longrun-tool-{name}")]);
    }
    // What cargo set for this build script, or for the host build, is not
    // for the guest build: its flags, wrappers (clippy's), and the build
    // script's own variables.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let for_this_build = key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("DEP_")
            || matches!(
                key.as_ref(),
                "CARGO_ENCODED_RUSTFLAGS"
                    | "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CLIPPY_ARGS"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if for_this_build {
            command.env_remove(key.as_ref());
        }
    }
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("building the built-in tool components failed ({status})"),
        Err(e) => panic!("cannot run cargo to build the built-in tool components: {e}"),
    }
}

fn has_wasm_target() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", WASM_TARGET])
        .output()
    else {
        return false;
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    out.status.success()
        && std::fs::read_dir(&dir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
        })
}
