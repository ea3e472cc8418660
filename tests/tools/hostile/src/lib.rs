//! A tool that tries to escape its sandbox, built with the SDK like any
//! other tool. The hostile-tool suite (`tests/hostile.rs`) calls each of its
//! tools and checks that the host refuses the attack, specifically, and
//! stays healthy.
//!
//! Each attack reports what the sandbox answered (the error text) rather
//! than hiding it, so the suite can assert the exact refusal.

use longrun_sdk::http::{self, Method, Url};
use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, JsonSchema)]
struct PathArgs {
    path: String,
}

#[derive(Deserialize, JsonSchema)]
struct WriteArgs {
    path: String,
    content: String,
}

#[derive(Deserialize, JsonSchema)]
struct UrlArgs {
    url: String,
    /// Follow one redirect, as a careless tool would.
    #[serde(default)]
    follow: bool,
}

#[derive(Deserialize, JsonSchema)]
struct AddrArgs {
    addr: String,
}

#[derive(Deserialize, JsonSchema)]
struct SizeArgs {
    mib: usize,
}

#[derive(Deserialize, JsonSchema)]
struct NoArgs {}

#[derive(Deserialize, JsonSchema)]
struct MillisArgs {
    ms: u64,
}

#[derive(Serialize)]
struct Got {
    text: String,
}

fn got(text: impl Into<String>) -> Result<Got, ToolError> {
    Ok(Got { text: text.into() })
}

fn read_file(args: PathArgs) -> Result<Got, ToolError> {
    let text = std::fs::read(&args.path)?;
    got(String::from_utf8_lossy(&text))
}

fn write_file(args: WriteArgs) -> Result<Got, ToolError> {
    std::fs::write(&args.path, args.content)?;
    got("written")
}

fn make_dir(args: PathArgs) -> Result<Got, ToolError> {
    std::fs::create_dir(&args.path)?;
    got("created")
}

fn env_vars(_: NoArgs) -> Result<Got, ToolError> {
    let vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    let args: Vec<String> = std::env::args().collect();
    got(format!("vars={vars:?} args={args:?}"))
}

fn http_get(args: UrlArgs) -> Result<Got, ToolError> {
    let url = Url::parse(&args.url)?;
    let response = http::send(Method::Get, &url, &[], None, 1 << 20)?;
    if args.follow
        && let Some(location) = response.header("location")
    {
        let next = url.join(location)?;
        let response = http::send(Method::Get, &next, &[], None, 1 << 20)?;
        return got(String::from_utf8_lossy(&response.body));
    }
    got(format!(
        "{} {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    ))
}

fn tcp_connect(args: AddrArgs) -> Result<Got, ToolError> {
    std::net::TcpStream::connect(&args.addr)?;
    got("connected")
}

/// Counts its calls in a global: with a fresh instance per call, the
/// count is always 1.
fn count(_: NoArgs) -> Result<Got, ToolError> {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    got((CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1).to_string())
}

fn read_stdin(_: NoArgs) -> Result<Got, ToolError> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
    got(format!("stdin={input:?}"))
}

fn spin(_: NoArgs) -> Result<Got, ToolError> {
    let mut x: u64 = 0;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}

fn sleep(args: MillisArgs) -> Result<Got, ToolError> {
    std::thread::sleep(std::time::Duration::from_millis(args.ms));
    got("slept")
}

fn memory_bomb(args: SizeArgs) -> Result<Got, ToolError> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    for _ in 0..args.mib {
        hoard.push(vec![0xA5; 1 << 20]);
    }
    got(format!("held {} MiB", hoard.len()))
}

#[allow(unconditional_recursion)]
fn dive(pad: [u8; 256]) -> u64 {
    let pad = std::hint::black_box(pad);
    dive(pad) + u64::from(pad[0])
}

/// Recursion whose frames live in linear memory (Rust's shadow stack):
/// it runs off the bottom of memory.
fn recurse(_: NoArgs) -> Result<Got, ToolError> {
    got(dive([1; 256]).to_string())
}

/// Recursion whose frames live on the wasm stack itself: it hits the
/// engine's stack limit.
fn plunge(n: u64) -> u64 {
    if std::hint::black_box(n) == u64::MAX {
        return 0;
    }
    std::hint::black_box(plunge(n + 1)) + 1
}

fn recurse_native(_: NoArgs) -> Result<Got, ToolError> {
    got(plunge(0).to_string())
}

fn flood_stdout(args: SizeArgs) -> Result<Got, ToolError> {
    let line = "x".repeat(1023);
    for _ in 0..args.mib * 1024 {
        println!("{line}");
    }
    got("flooded")
}

fn huge_output(args: SizeArgs) -> Result<Got, ToolError> {
    got("y".repeat(args.mib << 20))
}

fn panic(_: NoArgs) -> Result<Got, ToolError> {
    panic!("hostile tool panicked on purpose");
}

fn trap(_: NoArgs) -> Result<Got, ToolError> {
    core::arch::wasm32::unreachable()
}

#[derive(Deserialize, JsonSchema)]
struct LinkArgs {
    /// What the link points to, as written into it.
    target: String,
    /// Where the link is made: a guest path under a mount.
    link: String,
}

/// The preopened directory holding guest path `path`, and the rest of the
/// path below it.
fn preopen_for(path: &str) -> Result<(wasi::filesystem::types::Descriptor, String), ToolError> {
    for (dir, guest) in wasi::filesystem::preopens::get_directories() {
        if let Some(rest) = path.strip_prefix(&format!("{guest}/")) {
            return Ok((dir, rest.to_owned()));
        }
    }
    Err(ToolError::failed(format!("no mount holds {path}")))
}

/// Make a symbolic link (std has no stable call for it on wasm32-wasip2).
fn make_link(args: &LinkArgs) -> Result<(), ToolError> {
    let (dir, rest) = preopen_for(&args.link)?;
    dir.symlink_at(&args.target, &rest)
        .map_err(|code| ToolError::failed(format!("symlink: {code:?}")))
}

fn symlink(args: LinkArgs) -> Result<Got, ToolError> {
    make_link(&args)?;
    got("linked")
}

#[derive(Deserialize, JsonSchema)]
struct RenameArgs {
    from: String,
    to: String,
}

fn rename(args: RenameArgs) -> Result<Got, ToolError> {
    std::fs::rename(&args.from, &args.to)?;
    got("renamed")
}

#[derive(Deserialize, JsonSchema)]
struct FlipArgs {
    /// The entry flipped back and forth, a guest path.
    path: String,
    /// Where the link points when the entry is a link.
    target: String,
    /// A directory (holding one file) instead of a file, when not a link.
    #[serde(default)]
    dir: bool,
    /// How long to keep flipping.
    ms: u64,
}

/// Flip an entry between a real file (or directory) and a link pointing
/// out of the mount, as fast as it can, for `ms` milliseconds: a race
/// against any host-side walk of the mount.
fn flip(args: FlipArgs) -> Result<Got, ToolError> {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(args.ms);
    let link = LinkArgs {
        target: args.target.clone(),
        link: args.path.clone(),
    };
    let mut flips: u64 = 0;
    while std::time::Instant::now() < until {
        let _ = std::fs::remove_file(&args.path);
        let _ = std::fs::remove_dir_all(&args.path);
        make_link(&link)?;
        let _ = std::fs::remove_file(&args.path);
        if args.dir {
            std::fs::create_dir(&args.path)?;
            std::fs::write(format!("{}/inside.txt", args.path), "inside")?;
        } else {
            std::fs::write(&args.path, "inside")?;
        }
        flips += 1;
    }
    got(flips.to_string())
}

/// A tool with a strict schema, to show schema violations never reach it.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StrictArgs {
    count: u8,
}

fn strict(args: StrictArgs) -> Result<Got, ToolError> {
    got(args.count.to_string())
}

longrun_sdk::export_tools! {
    Tool::new("evil_read", "read any path", read_file).effects(Effects::Reads),
    Tool::new("evil_write", "write any path", write_file).effects(Effects::Writes),
    Tool::new("evil_mkdir", "create a directory", make_dir).effects(Effects::Writes),
    Tool::new("evil_env", "dump environment and arguments", env_vars),
    Tool::new("evil_http", "fetch any URL", http_get).effects(Effects::External),
    Tool::new("evil_tcp", "open a raw TCP connection", tcp_connect).effects(Effects::External),
    Tool::new("evil_count", "count calls in a global", count),
    Tool::new("evil_stdin", "read the host's stdin", read_stdin),
    Tool::new("evil_spin", "loop forever", spin),
    Tool::new("evil_sleep", "block in a host call", sleep),
    Tool::new("evil_alloc", "allocate without end", memory_bomb),
    Tool::new("evil_recurse", "recurse without end in linear memory", recurse),
    Tool::new("evil_recurse_native", "recurse without end on the wasm stack", recurse_native),
    Tool::new("evil_flood", "print without end", flood_stdout),
    Tool::new("evil_output", "return a huge result", huge_output),
    Tool::new("evil_panic", "panic", panic),
    Tool::new("evil_trap", "execute unreachable", trap),
    Tool::new("evil_strict", "accept only {count: u8}", strict),
    Tool::new("evil_symlink", "make a symbolic link", symlink).effects(Effects::Writes),
    Tool::new("evil_rename", "rename an entry", rename).effects(Effects::Writes),
    Tool::new("evil_flip", "flip an entry between a file and a link out", flip).effects(Effects::Writes),
}
