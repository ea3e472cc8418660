//! The tool sandbox: wasmtime running tool components under a policy.
//!
//! One [`Sandbox`] owns the engine (pooling allocator, epoch interruption)
//! and the linker (WASI preview 2 and `wasi:http`, nothing else). A
//! [`Toolbox`] is a set of loaded components and the tools they export.
//! Every call gets a fresh instance from a pre-instantiated component, a
//! fresh WASI context built from the policy (its mounts, its network gate,
//! captured stdio, no environment, no arguments), and its own limits:
//! wall-clock time, memory, argument and output sizes.
//!
//! Compiled components are cached on disk under a key made of the
//! component's bytes and the engine's configuration, so a restart does not
//! compile again; a cache entry is checked against its recorded hash before
//! it is trusted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{
    Config, Engine, PoolingAllocationConfig, ResourceLimiter, Store, StoreContextMut, Trap,
};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::filesystem::types::{ErrorCode, HostDescriptor};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capture::Capture;
use crate::mount::OpenedDir;
use crate::netgate::NetGate;
use crate::policy::{Access, Decision, HostPattern, Limits, Policy, Symlinks};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "tool",
        exports: { default: async },
    });
}

use bindings::longrun::tool::types as wit;

/// How often the epoch advances; timeouts are measured in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Bytes of each pooled memory, table and stack kept resident between calls.
const KEEP_RESIDENT: usize = 2 << 20;

/// The largest linear memory any policy may grant one instance.
const MAX_MEMORY_CEILING: u64 = 4 << 30;

/// What a component may spend answering `tools()` when it is loaded: a
/// component that loops, traps or floods is refused, and the others load.
pub const LISTING_TIMEOUT: Duration = Duration::from_secs(5);
pub const LISTING_MEMORY: u64 = 64 << 20;
/// The most tools one component may export.
pub const MAX_TOOLS_PER_COMPONENT: usize = 1_000;
/// The most bytes one component's tool list (names, descriptions, schemas)
/// may hold.
pub const MAX_TOOL_LIST_BYTES: usize = 4 << 20;

/// The WASI interface whose `symlink-at` the host checks before a tool may
/// make a link (see [`Sandbox::new`]).
const WASI_FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// A tool name must match `^[a-zA-Z0-9_-]{1,64}$`, the function-name rule of
/// OpenAI-compatible APIs.
pub fn is_valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// What can go wrong outside a single call: building the engine, loading
/// and compiling components, reading their tool lists.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("cannot read component {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid tool component: {reason}")]
    InvalidComponent { path: PathBuf, reason: String },
    #[error("no tool components (*.wasm) found in {0}")]
    NoComponents(PathBuf),
    #[error("no tool component could be loaded: {}", refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NothingLoaded { refused: Vec<Refused> },
}

/// A component, or one tool of it, that was not loaded, and why. The other
/// components load all the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct Refused {
    /// The component's file name.
    pub file: String,
    pub reason: String,
}

/// Why a call did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no tool named {0:?}")]
    UnknownTool(String),
    #[error("refused by policy: {0}")]
    PolicyDenied(String),
    #[error("tool {tool:?} needs a person's approval (policy pattern {pattern:?})")]
    NeedsApproval { tool: String, pattern: String },
    #[error("arguments are {size} bytes, over the policy's max_args of {limit}")]
    ArgsTooLarge { size: u64, limit: u64 },
    #[error("arguments are not a JSON value: {0}")]
    ArgsNotJson(String),
    #[error("arguments do not match the schema of {tool:?}: {}", errors.join("; "))]
    SchemaViolation { tool: String, errors: Vec<String> },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("exceeded its memory limit of {limit} bytes")]
    MemoryLimit { limit: u64 },
    #[error("returned {size} bytes, over the policy's max_output of {limit}")]
    OutputTooLarge { size: u64, limit: u64 },
    #[error("tool crashed: {0}")]
    Crashed(String),
    #[error("tool reported invalid arguments: {0}")]
    ToolInvalidArgs(String),
    #[error("tool reported denied: {0}")]
    ToolDenied(String),
    #[error("tool reported failure: {0}")]
    ToolFailed(String),
    #[error("cannot set up the sandbox: {0}")]
    Setup(String),
    #[error("every sandbox slot stayed busy for the call's timeout of {0:?}")]
    PoolBusy(Duration),
}

/// What a tool printed, kept up to the policy's `max_log` per stream, and
/// what the sandbox refused it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallLog {
    pub stdout: String,
    pub stderr: String,
    /// Bytes printed past `max_log` and dropped.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
    /// Outgoing requests the network gate refused, and why.
    pub net_denials: Vec<String>,
    /// File-system operations the host refused (a symbolic link pointing
    /// out of its mount), and why.
    pub fs_denials: Vec<String>,
}

/// The full account of one call.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The tool's JSON result, or why there is none.
    pub outcome: Result<String, CallError>,
    pub log: CallLog,
    pub elapsed: Duration,
}

/// One proposed call.
#[derive(Debug, Clone, Copy)]
pub struct CallRequest<'a> {
    pub tool: &'a str,
    /// The arguments as JSON text.
    pub args: &'a str,
    /// A person has approved this call (for tools the policy lists under
    /// `approve`).
    pub approved: bool,
}

pub use longrun_journal::payload::Effects;

/// A tool as its component describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ToolInfo {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
    pub effects: Effects,
    pub idempotent: bool,
    /// The file name of the component that exports it.
    pub component: String,
    /// The BLAKE3 hash (hex) of that component's bytes, so a record of the
    /// tool says exactly which code answered.
    pub component_hash: String,
}

/// Per-call store state: WASI, `wasi:http`, the network gate, limits, and
/// the mounts (for checking the links a tool makes).
pub struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    gate: NetGate,
    limiter: MemoryLimiter,
    mounts: Vec<(Arc<OpenedDir>, Symlinks, String)>,
    fs_denials: Arc<Mutex<Vec<String>>>,
}

impl CallState {
    /// May a link to `target` be made at `link`, relative to the directory
    /// `dir`? Only where the mount holding `dir` allows any link, or where
    /// the target, read from the link's own directory, stays inside that
    /// mount. The position of `dir` is asked of the kernel (its current
    /// name), and a directory no mount holds any more is refused.
    fn check_symlink(&self, dir: &Descriptor, target: &str, link: &str) -> Result<(), String> {
        let Descriptor::Dir(dir) = dir else {
            // Not a directory: the real call fails on its own.
            return Ok(());
        };
        use std::os::fd::AsRawFd;
        let at = std::fs::read_link(crate::mount::descriptor_link(dir.dir.as_raw_fd())).ok();
        let holder = self
            .mounts
            .iter()
            .filter_map(|(opened, rule, guest)| {
                let root = opened.current_path()?;
                let rel = at.as_ref()?.strip_prefix(&root).ok()?.to_path_buf();
                Some((root.components().count(), rel, *rule, guest))
            })
            .max_by_key(|(depth, ..)| *depth);
        let Some((_, rel, rule, guest)) = holder else {
            return Err(format!(
                "link {link:?} -> {target:?}: its directory is in no mount"
            ));
        };
        if rule == Symlinks::Any {
            return Ok(());
        }
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if link_stays_within(&rel, link, target) {
            Ok(())
        } else {
            Err(format!(
                "link {link:?} -> {target:?} would point out of the mount {guest} \
                 (the policy's symlinks = \"within-mount\")"
            ))
        }
    }
}

/// Does a link made at `link` (relative to a directory at `dir` beneath a
/// mount's root) with target `target` resolve inside the mount, read as
/// text? An absolute target never does: it names the host's root.
fn link_stays_within(dir: &[String], link: &str, target: &str) -> bool {
    fn step(stack: &mut Vec<String>, part: &str) -> bool {
        match part {
            "" | "." => true,
            ".." => stack.pop().is_some(),
            name => {
                stack.push(name.to_owned());
                true
            }
        }
    }
    if target.starts_with('/') || target.is_empty() {
        return false;
    }
    let mut stack = dir.to_vec();
    let mut link_parts: Vec<&str> = link.split('/').collect();
    link_parts.pop();
    link_parts.into_iter().all(|p| step(&mut stack, p))
        && target.split('/').all(|p| step(&mut stack, p))
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.gate,
        }
    }
}

/// Caps each linear memory and table, and remembers whether the cap was hit
/// so that the resulting trap is reported as what it is.
struct MemoryLimiter {
    max_memory: u64,
    hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// How many calls may run at once (the size of the instance pool). A
    /// call that finds every slot taken waits for one, for at most its own
    /// timeout.
    pub max_concurrent_calls: u32,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            cache_dir: default_cache_dir(),
            max_concurrent_calls: 32,
        }
    }
}

/// `$LONGRUN_CACHE_DIR`, else `$XDG_CACHE_HOME/longrun/components`, else
/// `~/.cache/longrun/components`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LONGRUN_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("longrun").join("components"))
}

/// The engine and linker shared by all calls.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<CallState>,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
    pool: Pool,
}

/// The instance pool's slots: one per call that may run at once. Calls
/// beyond that wait their turn, and the waits are counted.
struct Pool {
    size: u32,
    slots: tokio::sync::Semaphore,
    waiting: AtomicI64,
    waits: AtomicU64,
    wait_micros: AtomicU64,
    timeouts: AtomicU64,
}

/// What the instance pool has done so far (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolStats {
    /// Slots in all.
    pub size: u32,
    /// Slots taken now.
    pub in_use: u32,
    /// Calls waiting for a slot now.
    pub waiting: i64,
    /// Calls that had to wait, ever.
    pub waits: u64,
    /// Seconds spent waiting, all calls together.
    pub wait_seconds: f64,
    /// Calls whose timeout ran out while they waited.
    pub timeouts: u64,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let n = config.max_concurrent_calls.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * 16)
            .max_core_instances_per_component(16)
            .total_memories(n * 2)
            .max_memories_per_component(2)
            .total_tables(n * 8)
            .max_tables_per_component(8)
            .total_stacks(n)
            .max_memory_size(MAX_MEMORY_CEILING as usize)
            // Reset the first pages of a used memory, table and stack with
            // memset instead of returning them to the kernel: a fresh
            // instance per call then costs no page faults for them.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .async_stack_keep_resident(KEEP_RESIDENT);
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            .allocation_strategy(pool)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&cfg).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        // The one WASI call the host checks before wasmtime-wasi runs it:
        // making a symbolic link. The sandbox itself never follows a link
        // out of a mount, but every other program on the host would.
        linker.allow_shadowing(true);
        linker
            .instance(WASI_FILESYSTEM_TYPES)
            .and_then(|mut types| {
                types.func_wrap_async(
                    "[method]descriptor.symlink-at",
                    |mut store: StoreContextMut<'_, CallState>,
                     (fd, target, link): (Resource<Descriptor>, String, String)| {
                        Box::new(async move { symlink_at(&mut store, fd, target, link).await })
                    },
                )
            })
            .map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        linker.allow_shadowing(false);

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("longrun-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| SandboxError::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        Ok(Sandbox {
            engine,
            linker,
            cache_dir: config.cache_dir,
            ticker_stop,
            pool: Pool {
                size: n,
                slots: tokio::sync::Semaphore::new(n as usize),
                waiting: AtomicI64::new(0),
                waits: AtomicU64::new(0),
                wait_micros: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
            },
        })
    }

    /// What the instance pool has done so far.
    pub fn pool_stats(&self) -> PoolStats {
        let pool = &self.pool;
        PoolStats {
            size: pool.size,
            in_use: pool
                .size
                .saturating_sub(u32::try_from(pool.slots.available_permits()).unwrap_or(u32::MAX)),
            waiting: pool.waiting.load(Ordering::Relaxed),
            waits: pool.waits.load(Ordering::Relaxed),
            wait_seconds: pool.wait_micros.load(Ordering::Relaxed) as f64 / 1e6,
            timeouts: pool.timeouts.load(Ordering::Relaxed),
        }
    }

    /// A slot in the instance pool, held until the call's store is gone:
    /// at once when one is free, else after waiting at most `within`.
    async fn slot(&self, within: Duration) -> Result<tokio::sync::SemaphorePermit<'_>, CallError> {
        let pool = &self.pool;
        if let Ok(slot) = pool.slots.try_acquire() {
            return Ok(slot);
        }
        pool.waits.fetch_add(1, Ordering::Relaxed);
        pool.waiting.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let got = tokio::time::timeout(within, pool.slots.acquire()).await;
        pool.waiting.fetch_sub(1, Ordering::Relaxed);
        let waited = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        pool.wait_micros.fetch_add(waited, Ordering::Relaxed);
        match got {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(closed)) => Err(CallError::Setup(format!("the instance pool: {closed}"))),
            Err(_elapsed) => {
                pool.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(CallError::PoolBusy(within))
            }
        }
    }

    /// Compile a component (`path` says where it came from), from the
    /// compiled cache when it holds this exact component for this exact
    /// engine.
    pub fn compile_component(&self, path: &Path, bytes: &[u8]) -> Result<Component, SandboxError> {
        let invalid = |e: wasmtime::Error| SandboxError::InvalidComponent {
            path: path.to_owned(),
            reason: format!("{e:#}"),
        };
        let Some(cache_dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let key = {
            use std::hash::{Hash, Hasher};
            struct Blake(blake3::Hasher);
            impl Hasher for Blake {
                fn finish(&self) -> u64 {
                    0
                }
                fn write(&mut self, bytes: &[u8]) {
                    self.0.update(bytes);
                }
            }
            let mut h = Blake(blake3::Hasher::new());
            self.engine.precompile_compatibility_hash().hash(&mut h);
            env!("CARGO_PKG_VERSION").hash(&mut h);
            h.0.update(bytes);
            h.0.finalize().to_hex().to_string()
        };
        let compiled = cache_dir.join(format!("{key}.cwasm"));
        let checksum = cache_dir.join(format!("{key}.blake3"));
        if let (Ok(data), Ok(sum)) = (std::fs::read(&compiled), std::fs::read_to_string(&checksum))
            && blake3::hash(&data).to_hex().as_str() == sum.trim()
        {
            // SAFETY: the bytes are what this host compiled and wrote for this
            // engine configuration, and their hash matches the one recorded
            // beside them, so they are not truncated or altered.
            if let Ok(component) = unsafe { Component::deserialize(&self.engine, &data) } {
                return Ok(component);
            }
        }
        let data = self.engine.precompile_component(bytes).map_err(invalid)?;
        if let Err(e) = write_cache_entry(cache_dir, &compiled, &checksum, &data) {
            tracing::warn!(
                "cannot cache the compiled component in {}: {e}",
                cache_dir.display()
            );
        }
        // SAFETY: `data` was produced just now by this engine.
        unsafe { Component::deserialize(&self.engine, &data) }.map_err(invalid)
    }

    fn store(&self, policy: &Policy, limits: &Limits) -> Result<CallStore, CallError> {
        if limits.memory > MAX_MEMORY_CEILING {
            return Err(CallError::Setup(format!(
                "the policy's memory limit of {} bytes is above the host's ceiling of {MAX_MEMORY_CEILING}",
                limits.memory
            )));
        }
        let stdout = Capture::new(limits.max_log);
        let stderr = Capture::new(limits.max_log);
        let mut builder = WasiCtxBuilder::new();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
        let mut mounts = Vec::with_capacity(policy.filesystem.len());
        for mount in &policy.filesystem {
            let perms = match mount.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            let setup = |e: &dyn std::fmt::Display| {
                CallError::Setup(format!(
                    "cannot open mount {} for {}: {e:#}",
                    mount.host.display(),
                    mount.guest
                ))
            };
            // The mount's handle, opened once; the preopen is made from
            // that handle's own descriptor link, never from the path.
            let opened = mount.open().map_err(|e| setup(&e))?;
            builder
                .preopened_dir(opened.reopen_path(), &mount.guest, perms)
                .map_err(|e| setup(&e))?;
            mounts.push((opened, mount.symlinks, mount.guest.clone()));
        }
        let fs_denials = Arc::new(Mutex::new(Vec::new()));
        let denials = Arc::new(Mutex::new(Vec::new()));
        let allow: Arc<Vec<HostPattern>> = Arc::new(policy.network.allow.clone());
        let state = CallState {
            wasi: builder.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            gate: NetGate::new(allow, denials.clone()),
            limiter: MemoryLimiter {
                max_memory: limits.memory,
                hit: false,
            },
            mounts,
            fs_denials: fs_denials.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        let ticks = limits.timeout.as_micros() / EPOCH_TICK.as_micros() + 1;
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        Ok(CallStore {
            store,
            stdout,
            stderr,
            denials,
            fs_denials,
        })
    }
}

/// `descriptor.symlink-at`, checked against the mount's rule first; a
/// refusal is the guest's `not-permitted` and is noted in the call's log.
async fn symlink_at(
    store: &mut StoreContextMut<'_, CallState>,
    fd: Resource<Descriptor>,
    target: String,
    link: String,
) -> wasmtime::Result<(Result<(), ErrorCode>,)> {
    let state = store.data_mut();
    let verdict = {
        let descriptor = state.table.get(&fd)?;
        state.check_symlink(descriptor, &target, &link)
    };
    if let Err(why) = verdict {
        if let Ok(mut denials) = state.fs_denials.lock() {
            denials.push(why);
        }
        return Ok((Err(ErrorCode::NotPermitted),));
    }
    let mut fs = state.filesystem();
    match HostDescriptor::symlink_at(&mut fs, fd, target, link).await {
        Ok(()) => Ok((Ok(()),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// A store for one call, and the handles that outlive it: the captured
/// streams and the refusals of the network gate and of the file system.
struct CallStore {
    store: Store<CallState>,
    stdout: Capture,
    stderr: Capture,
    denials: Arc<Mutex<Vec<String>>>,
    fs_denials: Arc<Mutex<Vec<String>>>,
}

fn write_cache_entry(
    dir: &Path,
    compiled: &Path,
    checksum: &Path,
    data: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        blake3::hash(data).to_hex()
    ));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, compiled)?;
    std::fs::write(checksum, blake3::hash(data).to_hex().as_str())?;
    Ok(())
}

struct LoadedComponent {
    file: String,
    pre: bindings::ToolPre<CallState>,
}

struct ToolEntry {
    info: ToolInfo,
    component: usize,
    validator: jsonschema::Validator,
}

/// A tool component's bytes, and where they came from.
#[derive(Debug, Clone)]
pub struct ComponentSource {
    /// Its path, or `built-in:FILE` for one built into the host.
    pub origin: PathBuf,
    /// The file name the journal records.
    pub file: String,
    pub bytes: std::borrow::Cow<'static, [u8]>,
    /// Built into the host: a component loaded beside it that exports a
    /// tool of the same name replaces that tool.
    pub built_in: bool,
}

impl ComponentSource {
    /// A component built into the host binary.
    pub fn built_in(file: &'static str, bytes: &'static [u8]) -> ComponentSource {
        ComponentSource {
            origin: PathBuf::from(format!("built-in:{file}")),
            file: file.to_owned(),
            bytes: std::borrow::Cow::Borrowed(bytes),
            built_in: true,
        }
    }

    /// The component file at `path`.
    pub fn read(path: &Path) -> Result<ComponentSource, SandboxError> {
        let bytes = std::fs::read(path).map_err(|source| SandboxError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(ComponentSource {
            origin: path.to_owned(),
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: std::borrow::Cow::Owned(bytes),
            built_in: false,
        })
    }

    /// The `*.wasm` components in `dir`, by name.
    pub fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
        let entries = std::fs::read_dir(dir).map_err(|source| SandboxError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(SandboxError::NoComponents(dir.to_owned()));
        }
        Ok(paths)
    }
}

/// A set of tool components and the tools they export.
pub struct Toolbox {
    sandbox: Arc<Sandbox>,
    components: Vec<LoadedComponent>,
    tools: BTreeMap<String, ToolEntry>,
    refused: Vec<Refused>,
}

impl Toolbox {
    /// Load every `*.wasm` component in `dir`.
    pub async fn load_dir(sandbox: Arc<Sandbox>, dir: &Path) -> Result<Toolbox, SandboxError> {
        let paths = ComponentSource::read_dir(dir)?;
        Toolbox::load(sandbox, &paths).await
    }

    /// Load the given components. A bad one (not a tool component, a
    /// `tools()` that traps, loops or floods, an invalid schema) is refused
    /// with the reason, and a tool name that two components export is
    /// refused in both; the rest load. Only when nothing loads is it an
    /// error.
    pub async fn load(sandbox: Arc<Sandbox>, paths: &[PathBuf]) -> Result<Toolbox, SandboxError> {
        let mut sources = Vec::with_capacity(paths.len());
        let mut unreadable = Vec::new();
        for path in paths {
            match ComponentSource::read(path) {
                Ok(source) => sources.push(source),
                Err(e) => unreadable.push(Refused {
                    file: path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    reason: e.to_string(),
                }),
            }
        }
        Toolbox::load_sources(sandbox, sources, unreadable).await
    }

    /// Load the given components, as [`Toolbox::load`] does; a tool that a
    /// built-in component and another one both export is the other one's
    /// (`refused` starts the list of what was not loaded).
    pub async fn load_sources(
        sandbox: Arc<Sandbox>,
        sources: Vec<ComponentSource>,
        refused: Vec<Refused>,
    ) -> Result<Toolbox, SandboxError> {
        let mut toolbox = Toolbox {
            sandbox,
            components: Vec::new(),
            tools: BTreeMap::new(),
            refused,
        };
        let mut exported: BTreeMap<String, Vec<ToolEntry>> = BTreeMap::new();
        let mut replaced = 0;
        // Whether each loaded component (by index) is a built-in one.
        let mut loaded_built_in = Vec::with_capacity(sources.len());
        for source in &sources {
            match toolbox.add(source).await {
                Ok(entries) => {
                    loaded_built_in.push(source.built_in);
                    for entry in entries {
                        exported
                            .entry(entry.info.name.clone())
                            .or_default()
                            .push(entry);
                    }
                }
                Err(e) => {
                    tracing::warn!("tool component refused: {e}");
                    toolbox.refused.push(Refused {
                        file: source.file.clone(),
                        reason: match e {
                            SandboxError::InvalidComponent { reason, .. } => reason,
                            other => other.to_string(),
                        },
                    });
                }
            }
        }
        let built_in = |entry: &ToolEntry| loaded_built_in[entry.component];
        for (name, mut entries) in exported {
            // A component beside the built-in ones replaces their tool.
            if entries.len() > 1 && entries.iter().filter(|e| !built_in(e)).count() == 1 {
                entries.retain(|e| !built_in(e));
                replaced += 1;
            }
            if entries.len() == 1 {
                toolbox.tools.extend(entries.pop().map(|e| (name, e)));
                continue;
            }
            let files: Vec<&str> = entries.iter().map(|e| e.info.component.as_str()).collect();
            for entry in &entries {
                let reason = format!(
                    "tool {name:?} is refused: it is exported by {} (a name must be exported once)",
                    files.join(" and ")
                );
                tracing::warn!("{}: {reason}", entry.info.component);
                toolbox.refused.push(Refused {
                    file: entry.info.component.clone(),
                    reason,
                });
            }
        }
        if replaced > 0 {
            tracing::debug!("{replaced} built-in tools replaced by components loaded beside them");
        }
        if toolbox.tools.is_empty() && !toolbox.refused.is_empty() {
            return Err(SandboxError::NothingLoaded {
                refused: toolbox.refused,
            });
        }
        Ok(toolbox)
    }

    /// Load one component and list its tools, in a sandbox with nothing
    /// granted and small limits.
    async fn add(&mut self, source: &ComponentSource) -> Result<Vec<ToolEntry>, SandboxError> {
        let file = source.file.as_str();
        let invalid = |reason: String| SandboxError::InvalidComponent {
            path: source.origin.clone(),
            reason,
        };
        let component = self
            .sandbox
            .compile_component(&source.origin, &source.bytes)?;
        let pre = self
            .sandbox
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = bindings::ToolPre::new(pre).map_err(|e| invalid(format!("{e:#}")))?;
        let component_hash = blake3::hash(&source.bytes).to_hex().to_string();

        let limits = Limits {
            timeout: LISTING_TIMEOUT,
            memory: LISTING_MEMORY,
            ..Limits::default()
        };
        let specs = {
            let _slot = self
                .sandbox
                .slot(limits.timeout)
                .await
                .map_err(|e| invalid(e.to_string()))?;
            let mut store = self
                .sandbox
                .store(&Policy::deny_all(), &limits)
                .map_err(|e| invalid(e.to_string()))?
                .store;
            let instance = pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| invalid(format!("{e:#}")))?;
            match tokio::time::timeout(limits.timeout, instance.call_tools(&mut store)).await {
                Err(_) => Err(format!(
                    "listing its tools took longer than {LISTING_TIMEOUT:?}"
                )),
                Ok(Err(trap)) => match classify_trap(&trap, &store, &limits, "") {
                    // The epoch deadline can stop it before the timer does.
                    CallError::Timeout(_) => Err(format!(
                        "listing its tools took longer than {LISTING_TIMEOUT:?}"
                    )),
                    other => Err(format!("listing its tools failed: {other}")),
                },
                Ok(Ok(specs)) => Ok(specs),
            }
            .map_err(invalid)?
        };
        if specs.len() > MAX_TOOLS_PER_COMPONENT {
            return Err(invalid(format!(
                "it exports {} tools, more than the {MAX_TOOLS_PER_COMPONENT} a component may",
                specs.len()
            )));
        }
        let bytes: usize = specs
            .iter()
            .map(|s| s.name.len() + s.description.len() + s.parameters.len())
            .sum();
        if bytes > MAX_TOOL_LIST_BYTES {
            return Err(invalid(format!(
                "its tool list is {bytes} bytes, more than the {MAX_TOOL_LIST_BYTES} a component may export"
            )));
        }

        let index = self.components.len();
        let mut entries: Vec<ToolEntry> = Vec::with_capacity(specs.len());
        for spec in specs {
            if !is_valid_tool_name(&spec.name) {
                return Err(invalid(format!(
                    "tool name {:?} does not match ^[a-zA-Z0-9_-]{{1,64}}$",
                    spec.name
                )));
            }
            if entries.iter().any(|e| e.info.name == spec.name) {
                return Err(invalid(format!("it exports tool {:?} twice", spec.name)));
            }
            let parameters: serde_json::Value = serde_json::from_str(&spec.parameters)
                .map_err(|e| invalid(format!("tool {:?}: schema is not JSON: {e}", spec.name)))?;
            if let Some(reference) = remote_reference(&parameters) {
                return Err(invalid(format!(
                    "tool {:?}: its schema references {reference:?}: only references inside the schema (\"#...\") are allowed",
                    spec.name
                )));
            }
            let validator = jsonschema::validator_for(&parameters)
                .map_err(|e| invalid(format!("tool {:?}: invalid JSON Schema: {e}", spec.name)))?;
            let info = ToolInfo {
                name: spec.name,
                description: spec.description,
                parameters,
                effects: match spec.effects {
                    wit::Effects::None => Effects::None,
                    wit::Effects::Reads => Effects::Reads,
                    wit::Effects::Writes => Effects::Writes,
                    wit::Effects::External => Effects::External,
                },
                idempotent: spec.idempotent,
                component: file.to_owned(),
                component_hash: component_hash.clone(),
            };
            entries.push(ToolEntry {
                info,
                component: index,
                validator,
            });
        }
        self.components.push(LoadedComponent {
            file: file.to_owned(),
            pre,
        });
        Ok(entries)
    }

    /// The components and tools that were refused at loading, and why.
    pub fn refused(&self) -> &[Refused] {
        &self.refused
    }

    /// The sandbox the tools run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// All tools, by name.
    pub fn tools(&self) -> impl Iterator<Item = &ToolInfo> {
        self.tools.values().map(|t| &t.info)
    }

    /// One tool by name.
    pub fn tool(&self, name: &str) -> Option<&ToolInfo> {
        self.tools.get(name).map(|t| &t.info)
    }

    /// The file names of the loaded components.
    pub fn component_files(&self) -> impl Iterator<Item = &str> {
        self.components.iter().map(|c| c.file.as_str())
    }

    /// Check a proposed call against the policy and the tool's schema,
    /// without running anything. Returns the parsed arguments.
    pub fn admit(&self, policy: &Policy, request: &CallRequest<'_>) -> Result<(), CallError> {
        let entry = self
            .tools
            .get(request.tool)
            .ok_or_else(|| CallError::UnknownTool(request.tool.to_owned()))?;
        match policy.decide(request.tool) {
            Decision::Allow => {}
            Decision::NeedsApproval(pattern) if !request.approved => {
                return Err(CallError::NeedsApproval {
                    tool: request.tool.to_owned(),
                    pattern,
                });
            }
            Decision::NeedsApproval(_) => {}
            Decision::Deny(why) => return Err(CallError::PolicyDenied(why)),
        }
        let limits = policy.limits_for(request.tool);
        let size = request.args.len() as u64;
        if size > limits.max_args {
            return Err(CallError::ArgsTooLarge {
                size,
                limit: limits.max_args,
            });
        }
        let args: serde_json::Value = serde_json::from_str(request.args)
            .map_err(|e| CallError::ArgsNotJson(e.to_string()))?;
        let errors: Vec<String> = entry
            .validator
            .iter_errors(&args)
            .take(10)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("at {at}: {e}")
                }
            })
            .collect();
        if !errors.is_empty() {
            return Err(CallError::SchemaViolation {
                tool: request.tool.to_owned(),
                errors,
            });
        }
        Ok(())
    }

    /// Run one call: admit it, then run it in a fresh instance under the
    /// policy's limits.
    pub async fn call(&self, policy: &Policy, request: &CallRequest<'_>) -> CallReport {
        let started = Instant::now();
        let mut log = CallLog::default();
        let outcome = match self.admit(policy, request) {
            Ok(()) => self.run(policy, request, &mut log).await,
            Err(e) => Err(e),
        };
        CallReport {
            outcome,
            log,
            elapsed: started.elapsed(),
        }
    }

    async fn run(
        &self,
        policy: &Policy,
        request: &CallRequest<'_>,
        log: &mut CallLog,
    ) -> Result<String, CallError> {
        let entry = self
            .tools
            .get(request.tool)
            .ok_or_else(|| CallError::UnknownTool(request.tool.to_owned()))?;
        let component = &self.components[entry.component];
        let limits = policy.limits_for(request.tool);
        // Held until the store is dropped (locals drop in reverse order).
        let _slot = self.sandbox.slot(limits.timeout).await?;
        let CallStore {
            mut store,
            stdout,
            stderr,
            denials,
            fs_denials,
        } = self.sandbox.store(policy, &limits)?;

        // Instantiation failing is the host's problem (the instance pool
        // is full, say), not the tool's: it is reported as a setup error.
        let instance = component
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| {
                CallError::Setup(format!("cannot instantiate {}: {e:#}", component.file))
            })?;
        let run = instance.call_call(&mut store, request.tool, request.args);
        // Epoch interruption stops a tool that computes too long; this
        // timeout stops one that waits too long in a host call (a slow HTTP
        // response, a sleep).
        let result = tokio::time::timeout(limits.timeout, run).await;

        (log.stdout, log.stdout_dropped) = stdout.take();
        (log.stderr, log.stderr_dropped) = stderr.take();
        log.net_denials = denials.lock().map(|d| d.clone()).unwrap_or_default();
        log.fs_denials = fs_denials.lock().map(|d| d.clone()).unwrap_or_default();

        let returned = match result {
            Err(_elapsed) => return Err(CallError::Timeout(limits.timeout)),
            Ok(Err(trap)) => {
                return Err(classify_trap(&trap, &store, &limits, &log.stderr));
            }
            Ok(Ok(returned)) => returned,
        };
        match returned {
            Ok(output) => {
                let size = output.len() as u64;
                if size > limits.max_output {
                    return Err(CallError::OutputTooLarge {
                        size,
                        limit: limits.max_output,
                    });
                }
                Ok(output)
            }
            Err(wit::ToolError::InvalidArgs(m)) => Err(CallError::ToolInvalidArgs(m)),
            Err(wit::ToolError::Denied(m)) => Err(CallError::ToolDenied(m)),
            Err(wit::ToolError::Failed(m)) => Err(CallError::ToolFailed(m)),
        }
    }
}

/// The first `$ref` (or `$dynamicRef`) in a schema that points outside the
/// schema itself: a schema must never make the host fetch anything.
fn remote_reference(schema: &serde_json::Value) -> Option<String> {
    match schema {
        serde_json::Value::Object(map) => map.iter().find_map(|(key, value)| match value {
            serde_json::Value::String(target)
                if (key == "$ref" || key == "$dynamicRef") && !target.starts_with('#') =>
            {
                Some(target.clone())
            }
            other => remote_reference(other),
        }),
        serde_json::Value::Array(items) => items.iter().find_map(remote_reference),
        _ => None,
    }
}

fn classify_trap(
    error: &wasmtime::Error,
    store: &Store<CallState>,
    limits: &Limits,
    stderr: &str,
) -> CallError {
    if store.data().limiter.hit {
        return CallError::MemoryLimit {
            limit: limits.memory,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout(limits.timeout),
        Some(Trap::StackOverflow) => CallError::Crashed("stack overflow".into()),
        Some(trap) => {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
            match last {
                Some(line) => CallError::Crashed(format!("{trap} ({line})")),
                None => CallError::Crashed(trap.to_string()),
            }
        }
        None => CallError::Crashed(format!("{error:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(dir: &[&str], link: &str, target: &str) -> bool {
        let dir: Vec<String> = dir.iter().map(|s| s.to_string()).collect();
        link_stays_within(&dir, link, target)
    }

    #[test]
    fn a_link_may_point_anywhere_inside_its_mount_and_nowhere_outside() {
        assert!(within(&[], "a", "b/c"));
        assert!(within(&["src"], "lib.rs", "../README"));
        assert!(within(&[], "sub/link", "../top.txt"));
        assert!(!within(&[], "link", ".."));
        assert!(!within(&[], "link", "../etc/passwd"));
        assert!(!within(&["src"], "link", "../../x"));
        assert!(!within(&[], "sub/link", "../../x"));
        assert!(!within(&["a", "b"], "link", "/etc"));
        assert!(!within(&[], "link", ""));
        assert!(within(&["a"], "link", "./x/../y"));
        assert!(!within(&["a"], "link", "x/../../../y"));
    }

    #[test]
    fn only_references_inside_a_schema_are_local() {
        let local =
            serde_json::json!({"$defs": {"a": {}}, "properties": {"x": {"$ref": "#/$defs/a"}}});
        assert_eq!(remote_reference(&local), None);
        let remote = serde_json::json!({"properties": {"x": {"allOf": [{"$ref": "http://127.0.0.1:9/s.json"}]}}});
        assert_eq!(
            remote_reference(&remote).as_deref(),
            Some("http://127.0.0.1:9/s.json")
        );
    }
}
