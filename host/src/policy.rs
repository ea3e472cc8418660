//! Policy files: what an operator lets a session and its tools do.
//!
//! A policy is TOML, parsed strictly: an unknown key, a value of the wrong
//! type or a malformed duration, size, host or pattern is an error that names
//! the file, the line and column, and the offending key. Everything that
//! parses is enforced somewhere: tool patterns and approvals by
//! [`Policy::decide`], per-call limits, mounts and the network allow-list by
//! the sandbox, and session budgets (priced by `[prices]`) by
//! [`crate::budget::Ledger`].
//!
//! Relative mount paths are resolved against the directory of the policy
//! file, so a policy means the same thing wherever the host is started.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_spanned::Spanned;

use crate::mount::{MountError, MountHandle, OpenedDir};

/// A policy that failed to load: where, which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{file}: cannot read policy: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The text is not a valid policy.
    #[error("{file}:{line}:{column}: {}{message}", key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Invalid {
        file: String,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column (in characters) of the offending text.
        column: usize,
        /// The dotted path of the offending key, when one is known.
        key: Option<String>,
        message: String,
    },
}

/// What the built-in policy is called in messages and listings.
pub const BUILT_IN_SOURCE: &str = "<built-in policy>";

/// A parsed, validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where the policy came from (for messages).
    pub source: String,
    /// The policy's text as written, for the journal and for auditors.
    pub text: String,
    pub session: SessionBudgets,
    pub limits: Limits,
    pub filesystem: Vec<Mount>,
    pub network: NetworkPolicy,
    pub tools: ToolRules,
    /// Per-tool overrides of [`Limits`], by exact tool name.
    pub overrides: BTreeMap<String, LimitOverrides>,
    /// What each model costs, by the name the model reports, for the cost
    /// budget.
    pub prices: BTreeMap<String, Price>,
    /// Whether sessions under it may start child sessions, and how many.
    pub children: Option<ChildrenPolicy>,
    /// Where its relative mount paths were resolved (absolute).
    pub base_dir: PathBuf,
}

/// `[children]`: a session may start child sessions (the host tools
/// `start_child` and `wait_children`), each under a narrowing of its
/// policy ([`crate::narrow`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildrenPolicy {
    /// The models a child may run on, by the names the host gives them.
    pub models: Vec<String>,
    /// Children running at once.
    #[serde(default = "ChildrenPolicy::default_concurrent")]
    pub max_concurrent: u32,
    /// Children one session may start in all.
    #[serde(default = "ChildrenPolicy::default_children")]
    pub max_children: u32,
    /// Generations below this session: 1, children only; 2, their
    /// children too.
    #[serde(default = "ChildrenPolicy::default_depth")]
    pub max_depth: u32,
    /// Heavy mode (`run --trajectories N`): whether the chosen trajectory's
    /// changes to the read-write mounts are applied to the real files
    /// (`apply`) or only recorded for a person to apply (`propose`).
    #[serde(default)]
    pub trajectory_changes: TrajectoryChanges,
}

/// What heavy mode does with the chosen trajectory's changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrajectoryChanges {
    #[default]
    Apply,
    Propose,
}

impl TrajectoryChanges {
    pub fn as_str(self) -> &'static str {
        match self {
            TrajectoryChanges::Apply => "apply",
            TrajectoryChanges::Propose => "propose",
        }
    }
}

impl ChildrenPolicy {
    fn default_concurrent() -> u32 {
        4
    }
    fn default_children() -> u32 {
        16
    }
    fn default_depth() -> u32 {
        1
    }

    /// What a child of a session under this policy may do in turn: the
    /// same, one generation less (nothing at the last).
    pub fn for_child(&self) -> Option<ChildrenPolicy> {
        (self.max_depth > 1).then(|| ChildrenPolicy {
            max_depth: self.max_depth - 1,
            ..self.clone()
        })
    }
}

/// What a model costs, in dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_million: NonNegative,
    pub output_per_million: NonNegative,
    /// Input tokens served from the provider's cache; the input price when
    /// unset.
    pub cached_input_per_million: Option<NonNegative>,
}

/// The prices of the policies sessions recorded, for folding a session's
/// cost at the price in force at each record ([`longrun_journal::Pricing`]):
/// each policy text is parsed once.
#[derive(Default)]
pub struct RecordedPrices {
    parsed: HashMap<String, Option<Policy>>,
}

impl longrun_journal::Pricing for RecordedPrices {
    fn cost_usd(
        &mut self,
        policy_text: &str,
        model: &str,
        usage: &longrun_journal::payload::Usage,
    ) -> f64 {
        let policy = self
            .parsed
            .entry(policy_text.to_owned())
            .or_insert_with(|| {
                Policy::parse_recorded(policy_text, "the recorded policy", Path::new("/")).ok()
            });
        policy
            .as_ref()
            .and_then(|p| p.price_for(model))
            .unwrap_or(Price::FREE)
            .cost_of(usage)
    }
}

impl Price {
    /// The price of models that run on this machine.
    pub const FREE: Price = Price {
        input_per_million: NonNegative(0.0),
        output_per_million: NonNegative(0.0),
        cached_input_per_million: None,
    };

    /// What a call costs that read `input` tokens (of which `cached` came
    /// from the provider's cache) and wrote `output` tokens.
    pub fn cost_usd(&self, input: u64, cached: u64, output: u64) -> f64 {
        let cached = cached.min(input);
        let cached_price = self
            .cached_input_per_million
            .unwrap_or(self.input_per_million)
            .0;
        ((input - cached) as f64 * self.input_per_million.0
            + cached as f64 * cached_price
            + output as f64 * self.output_per_million.0)
            / 1e6
    }

    /// What a model call that used `usage` costs.
    pub fn cost_of(&self, usage: &longrun_journal::payload::Usage) -> f64 {
        self.cost_usd(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens,
        )
    }
}

/// Budgets for a whole session; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBudgets {
    pub max_steps: Option<u64>,
    pub max_tool_calls: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_cost_usd: Option<NonNegative>,
    pub max_wall_time: Option<HumanDuration>,
    /// How many times the same call (same tool, same arguments) may fail the
    /// same way before the session ends as stuck; see
    /// [`SessionBudgets::repeated_failures_allowed`].
    pub max_repeated_failures: Option<std::num::NonZeroU64>,
}

impl SessionBudgets {
    /// What `max_repeated_failures` allows when the policy does not say: a
    /// model gets two notes that repeating a failure does not help.
    pub const REPEATED_FAILURES_ALLOWED: u64 = 3;

    /// How many times the same failure may happen: the next one ends the
    /// session (each repeat before that is pointed out to the model).
    pub fn repeated_failures_allowed(&self) -> u64 {
        self.max_repeated_failures
            .map_or(Self::REPEATED_FAILURES_ALLOWED, |n| n.get())
    }
}

/// Limits on each tool call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Wall-clock time a call may run.
    pub timeout: Duration,
    /// Linear memory a call's instance may grow to, in bytes.
    pub memory: u64,
    /// Size of the result a call may return, in bytes.
    pub max_output: u64,
    /// Size of the arguments a call may be given, in bytes.
    pub max_args: u64,
    /// Bytes of stdout and of stderr kept as the call's log; more is dropped.
    pub max_log: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(30),
            memory: 256 << 20,
            max_output: 1 << 20,
            max_args: 256 << 10,
            max_log: 64 << 10,
        }
    }
}

/// Any subset of [`Limits`], for `[limits]` and `[overrides.TOOL]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    pub max_output: Option<ByteSize>,
    pub max_args: Option<ByteSize>,
    pub max_log: Option<ByteSize>,
}

impl LimitOverrides {
    fn apply(&self, mut limits: Limits) -> Limits {
        if let Some(t) = self.timeout {
            limits.timeout = t.0;
        }
        if let Some(m) = self.memory {
            limits.memory = m.0;
        }
        if let Some(o) = self.max_output {
            limits.max_output = o.0;
        }
        if let Some(a) = self.max_args {
            limits.max_args = a.0;
        }
        if let Some(l) = self.max_log {
            limits.max_log = l.0;
        }
        limits
    }
}

/// A host directory that a tool sees at a guest path.
///
/// The directory is opened once, on first use, and every later use starts
/// from that handle ([`Mount::open`]), never from `host` again: see
/// [`crate::mount`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute (resolved against the policy file's directory).
    pub host: PathBuf,
    /// Where the tool sees it, e.g. `/workspace`.
    pub guest: String,
    pub access: Access,
    /// Which symbolic links a tool may create beneath it.
    pub symlinks: Symlinks,
    handle: MountHandle,
}

impl Mount {
    pub fn new(host: PathBuf, guest: String, access: Access) -> Mount {
        Mount {
            host,
            guest,
            access,
            symlinks: Symlinks::default(),
            handle: MountHandle::default(),
        }
    }

    /// The mount's directory handle: opened the first time, the same one
    /// every time after (unless `host` was changed in between).
    pub fn open(&self) -> Result<Arc<OpenedDir>, MountError> {
        self.handle.get(&self.host)
    }
}

/// Which symbolic links a tool may create beneath a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Symlinks {
    /// Only links whose target, read from where the link is made, stays
    /// inside the mount (relative, never climbing above its root).
    #[default]
    WithinMount,
    /// Any relative link, pointing anywhere (wasmtime-wasi refuses an
    /// absolute target whatever the policy says): the sandbox still never
    /// follows one out of a mount, but other programs on the host that walk
    /// the directory will.
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Which hosts and ports outgoing HTTP may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    pub allow: Vec<HostPattern>,
}

/// One entry of `[network] allow`: `host:port`, where the host is an exact
/// name, `*.suffix` (any subdomain, not the bare suffix), or an IP literal
/// (`[::1]` for IPv6). Only an IP literal lets a tool reach a loopback,
/// private or link-local address: names never resolve into those ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub host: HostMatch,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    Subdomains(String),
    Ip(IpAddr),
}

impl HostPattern {
    /// Does this entry allow `host:port`? `host` is as written in the URL
    /// (a name, an IPv4 literal or a bracketless IPv6 literal).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match &self.host {
            HostMatch::Exact(name) => host == *name,
            HostMatch::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            HostMatch::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h == *ip),
        }
    }
}

/// `host:port` as a policy's `[network] allow` writes it.
impl std::str::FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<HostPattern, String> {
        parse_host_pattern(s)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            HostMatch::Exact(name) => write!(f, "{name}:{}", self.port),
            HostMatch::Subdomains(suffix) => write!(f, "*.{suffix}:{}", self.port),
            HostMatch::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            HostMatch::Ip(ip) => write!(f, "{ip}:{}", self.port),
        }
    }
}

/// Which tools may run, and which need a person's approval first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolRules {
    pub allow: Vec<ToolPattern>,
    pub approve: Vec<ToolPattern>,
}

/// A tool-name pattern: letters, digits, `_` and `-`, with `*` for any run
/// of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolPattern(String);

impl ToolPattern {
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.0.as_bytes(), name.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What the policy says of one proposed tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed once a person approves; the pattern that asked for it.
    NeedsApproval(String),
    /// Refused, and why.
    Deny(String),
}

impl Policy {
    /// Read and parse a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        Policy::parse(&text, &path.display().to_string(), &base)
    }

    /// Parse a policy's text. `source` names it in errors; relative mount
    /// paths are resolved against `base_dir`.
    pub fn parse(text: &str, source: &str, base_dir: &Path) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, source, base_dir, Mounts::Enforced)
    }

    /// Parse a policy recorded in a journal, to check what happened under
    /// it or to run its calls again against scratch mounts: everything is
    /// checked but whether its mounts nest, which matters only for a policy
    /// about to guard real directories (journals written before the rule
    /// still verify).
    pub fn parse_recorded(
        text: &str,
        source: &str,
        base_dir: &Path,
    ) -> Result<Policy, PolicyError> {
        Policy::parse_with(text, source, base_dir, Mounts::Recorded)
    }

    fn parse_with(
        text: &str,
        source: &str,
        base_dir: &Path,
        mounts: Mounts,
    ) -> Result<Policy, PolicyError> {
        let invalid =
            |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| {
                let (line, column) = line_column(text, span.map(|s| s.start).unwrap_or(0));
                PolicyError::Invalid {
                    file: source.to_owned(),
                    line,
                    column,
                    key,
                    message,
                }
            };
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| invalid(e.span(), None, e.message().to_owned()))?;
        let raw: RawPolicy = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let key = (path != "." && !path.is_empty()).then_some(path);
            let inner = e.into_inner();
            invalid(inner.span(), key, inner.message().to_owned())
        })?;

        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        let mut filesystem: Vec<Mount> = Vec::new();
        let mut host_spans = Vec::new();
        for (i, mount) in raw.filesystem.into_iter().enumerate() {
            let key = format!("filesystem[{i}].guest");
            let guest = mount.guest.get_ref().clone();
            check_guest_path(&guest)
                .map_err(|why| invalid(Some(mount.guest.span()), Some(key.clone()), why))?;
            if filesystem.iter().any(|m| m.guest == guest) {
                return Err(invalid(
                    Some(mount.guest.span()),
                    Some(key),
                    format!("guest path {guest:?} is mounted twice"),
                ));
            }
            let mut entry = Mount::new(
                normalize(&base_dir.join(mount.host.get_ref())),
                guest,
                mount.access,
            );
            entry.symlinks = mount.symlinks.unwrap_or_default();
            filesystem.push(entry);
            host_spans.push(mount.host.span());
        }
        if mounts == Mounts::Enforced
            && let Some((inner, outer)) = nested_mount(&filesystem)
        {
            let (inner_mount, outer_mount) = (&filesystem[inner], &filesystem[outer]);
            return Err(invalid(
                Some(host_spans[inner].clone()),
                Some(format!("filesystem[{inner}].host")),
                format!(
                    "{} (mounted at {}) lies inside {}, which is mounted read-write at {}: \
                     a tool could rename it away and put a link in its place through {}; \
                     mount directories that do not nest",
                    inner_mount.host.display(),
                    inner_mount.guest,
                    outer_mount.host.display(),
                    outer_mount.guest,
                    outer_mount.guest,
                ),
            ));
        }
        // Validates each list entry on its own, so an error points at the
        // entry rather than at the list.
        fn each<T>(
            entries: Vec<Spanned<String>>,
            key: &str,
            parse: fn(&str) -> Result<T, String>,
            invalid: &dyn Fn(Option<std::ops::Range<usize>>, Option<String>, String) -> PolicyError,
        ) -> Result<Vec<T>, PolicyError> {
            entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    parse(e.get_ref())
                        .map_err(|why| invalid(Some(e.span()), Some(format!("{key}[{i}]")), why))
                })
                .collect()
        }
        let network_allow = each(
            raw.network.allow,
            "network.allow",
            parse_host_pattern,
            &invalid,
        )?;
        let tools_allow = each(raw.tools.allow, "tools.allow", parse_tool_pattern, &invalid)?;
        let tools_approve = each(
            raw.tools.approve,
            "tools.approve",
            parse_tool_pattern,
            &invalid,
        )?;

        if let Some(c) = &raw.children
            && (c.max_concurrent == 0 || c.max_children == 0 || c.max_depth == 0)
        {
            return Err(invalid(
                None,
                Some("children".into()),
                "max_concurrent, max_children and max_depth must be at least 1".into(),
            ));
        }
        let limits = raw.limits.apply(Limits::default());
        Ok(Policy {
            source: source.to_owned(),
            text: text.to_owned(),
            session: raw.session,
            limits,
            filesystem,
            network: NetworkPolicy {
                allow: network_allow,
            },
            tools: ToolRules {
                allow: tools_allow,
                approve: tools_approve,
            },
            overrides: raw.overrides,
            prices: raw.prices,
            children: raw.children,
            base_dir,
        })
    }

    /// The policy a session runs under when none is given: `dir` (the
    /// current directory) read-only at `/workspace`, no network, the tools
    /// that only read, and modest budgets. Its text ([`Policy::built_in_text`])
    /// is recorded like any policy file's.
    pub fn built_in(dir: &Path) -> Result<Policy, PolicyError> {
        Policy::parse(&Policy::built_in_text(dir), BUILT_IN_SOURCE, dir)
    }

    /// The built-in policy's text for `dir`, a policy file an operator can
    /// start from (`longrun policy default`).
    pub fn built_in_text(dir: &Path) -> String {
        let host = toml::Value::String(dir.display().to_string()).to_string();
        format!(
            "# longrun's built-in policy: what a session may do when no --policy is given.
# The current directory, read-only, at /workspace; no network; tools that
# only read; modest budgets.

[session]
max_steps = 20
max_tool_calls = 30
max_input_tokens = 400_000
max_output_tokens = 40_000
max_wall_time = \"30m\"
max_repeated_failures = 3

[[filesystem]]
host = {host}
guest = \"/workspace\"
access = \"read-only\"

[network]
allow = []

[tools]
allow = [\"fs_list\", \"fs_read\", \"fs_search\", \"json_query\", \"word_count\"]
"
        )
    }

    /// The policy that denies everything: no tools, no mounts, no network.
    pub fn deny_all() -> Policy {
        Policy {
            source: "<deny-all>".to_owned(),
            text: String::new(),
            session: SessionBudgets::default(),
            limits: Limits::default(),
            filesystem: Vec::new(),
            network: NetworkPolicy::default(),
            tools: ToolRules::default(),
            overrides: BTreeMap::new(),
            prices: BTreeMap::new(),
            children: None,
            base_dir: PathBuf::from("/"),
        }
    }

    /// The policy as the text of a file that parses back to it (mount paths
    /// absolute, every limit written out): what a session derived from
    /// another's policy records as its own.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        // A JSON string is a TOML basic string.
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let list = |items: Vec<String>| {
            let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("[{}]", quoted.join(", "))
        };
        let millis = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let mut out = String::from("[session]\n");
        let b = &self.session;
        let counts = [
            ("max_steps", b.max_steps),
            ("max_tool_calls", b.max_tool_calls),
            ("max_input_tokens", b.max_input_tokens),
            ("max_output_tokens", b.max_output_tokens),
            (
                "max_repeated_failures",
                b.max_repeated_failures.map(|n| n.get()),
            ),
        ];
        for (key, value) in counts {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        if let Some(cost) = b.max_cost_usd {
            let _ = writeln!(out, "max_cost_usd = {:?}", cost.0);
        }
        if let Some(wall) = b.max_wall_time {
            let _ = writeln!(out, "max_wall_time = {}", millis(wall.0));
        }
        let limits = |out: &mut String, l: &Limits| {
            let _ = writeln!(out, "timeout = {}", millis(l.timeout));
            for (key, bytes) in [
                ("memory", l.memory),
                ("max_output", l.max_output),
                ("max_args", l.max_args),
                ("max_log", l.max_log),
            ] {
                let _ = writeln!(out, "{key} = \"{bytes}B\"");
            }
        };
        out.push_str("\n[limits]\n");
        limits(&mut out, &self.limits);
        let patterns =
            |ps: &[ToolPattern]| list(ps.iter().map(|p| p.as_str().to_owned()).collect());
        let _ = write!(
            out,
            "\n[tools]\nallow = {}\napprove = {}\n",
            patterns(&self.tools.allow),
            patterns(&self.tools.approve)
        );
        for mount in &self.filesystem {
            let access = match mount.access {
                Access::ReadOnly => "read-only",
                Access::ReadWrite => "read-write",
            };
            let symlinks = match mount.symlinks {
                Symlinks::WithinMount => "within-mount",
                Symlinks::Any => "any",
            };
            let _ = write!(
                out,
                "\n[[filesystem]]\nhost = {}\nguest = {}\naccess = \"{access}\"\nsymlinks = \"{symlinks}\"\n",
                quote(&mount.host.to_string_lossy()),
                quote(&mount.guest),
            );
        }
        let _ = write!(
            out,
            "\n[network]\nallow = {}\n",
            list(self.network.allow.iter().map(|p| p.to_string()).collect())
        );
        for tool in self.overrides.keys() {
            let _ = writeln!(out, "\n[overrides.{}]", quote(tool));
            limits(&mut out, &self.limits_for(tool));
        }
        for (model, price) in &self.prices {
            let _ = write!(
                out,
                "\n[prices.{}]\ninput_per_million = {:?}\noutput_per_million = {:?}\n",
                quote(model),
                price.input_per_million.0,
                price.output_per_million.0
            );
            if let Some(cached) = price.cached_input_per_million {
                let _ = writeln!(out, "cached_input_per_million = {:?}", cached.0);
            }
        }
        if let Some(children) = &self.children {
            let models: Vec<String> = children.models.clone();
            let _ = write!(
                out,
                "\n[children]\nmodels = {}\nmax_concurrent = {}\nmax_children = {}\nmax_depth = {}\ntrajectory_changes = {:?}\n",
                list(models),
                children.max_concurrent,
                children.max_children,
                children.max_depth,
                children.trajectory_changes.as_str()
            );
        }
        out
    }

    /// What `model` costs: its `[prices]` entry, else free for models that
    /// run on this machine (`local:*` and the scripted model), else unknown.
    pub fn price_for(&self, model: &str) -> Option<Price> {
        match self.prices.get(model) {
            Some(price) => Some(*price),
            None if model.starts_with("local:") || model == "scripted" => Some(Price::FREE),
            None => None,
        }
    }

    /// May `tool` run at all, and does it need approval?
    pub fn decide(&self, tool: &str) -> Decision {
        if !self.tools.allow.iter().any(|p| p.matches(tool)) {
            return Decision::Deny(format!(
                "tool {tool:?} is not in the policy's [tools] allow list"
            ));
        }
        match self.tools.approve.iter().find(|p| p.matches(tool)) {
            Some(pattern) => Decision::NeedsApproval(pattern.as_str().to_owned()),
            None => Decision::Allow,
        }
    }

    /// The limits for one call of `tool`: `[limits]` with `[overrides.TOOL]`
    /// applied on top.
    pub fn limits_for(&self, tool: &str) -> Limits {
        match self.overrides.get(tool) {
            Some(o) => o.apply(self.limits),
            None => self.limits,
        }
    }

    /// Is `host:port` on the allow-list? Returns the entry that allows it.
    pub fn network_entry(&self, host: &str, port: u16) -> Option<&HostPattern> {
        self.network.allow.iter().find(|p| p.matches(host, port))
    }
}

/// Whether a parsed policy's mounts are about to guard real directories.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mounts {
    Enforced,
    Recorded,
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

// ---- The file format, as serde sees it -------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    session: SessionBudgets,
    #[serde(default)]
    limits: LimitOverrides,
    #[serde(default)]
    filesystem: Vec<RawMount>,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    tools: RawTools,
    #[serde(default)]
    overrides: BTreeMap<String, LimitOverrides>,
    #[serde(default)]
    prices: BTreeMap<String, Price>,
    children: Option<ChildrenPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    host: Spanned<String>,
    guest: Spanned<String>,
    access: Access,
    symlinks: Option<Symlinks>,
}

/// `path` with `.` and `..` taken out lexically (it is absolute).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The first mount that lies strictly inside a read-write one, as
/// `(inner, outer)` indices: written as the policy says, or as the file
/// system resolves it where both exist (a link in the path is no way
/// around the rule).
fn nested_mount(mounts: &[Mount]) -> Option<(usize, usize)> {
    let resolved: Vec<Option<PathBuf>> = mounts
        .iter()
        .map(|m| std::fs::canonicalize(&m.host).ok())
        .collect();
    let inside = |inner: &Path, outer: &Path| inner != outer && inner.starts_with(outer);
    for (o, outer) in mounts.iter().enumerate() {
        if outer.access != Access::ReadWrite {
            continue;
        }
        for (i, inner) in mounts.iter().enumerate() {
            let lexical = inside(&inner.host, &outer.host);
            let real = matches!((&resolved[i], &resolved[o]), (Some(a), Some(b)) if inside(a, b));
            if lexical || real {
                return Some((i, o));
            }
        }
    }
    None
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTools {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    approve: Vec<Spanned<String>>,
}

/// A guest path must be absolute, without `..`, `.` or empty segments.
fn check_guest_path(s: &str) -> Result<(), String> {
    let rest = s
        .strip_prefix('/')
        .ok_or_else(|| format!("guest path {s:?} must be absolute (start with /)"))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "guest path {s:?} must name a directory below / without `.`, `..` or empty segments"
        ));
    }
    Ok(())
}

/// A duration written as a number and a unit: `500ms`, `30s`, `5m`, `72h`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(de::Error::custom)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "invalid duration {s:?}: write a whole number and a unit (ms, s, m, h, d), e.g. \"30s\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let millis_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(err()),
    };
    let millis = n.checked_mul(millis_per).ok_or_else(err)?;
    if millis == 0 {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(Duration::from_millis(millis))
}

/// A size in bytes: a whole number and a unit (`B`, `KiB`, `MiB`, `GiB`,
/// `KB`, `MB`, `GB`), or a bare integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .ok()
                    .filter(|&v| v > 0)
                    .map(ByteSize)
                    .ok_or_else(|| {
                        E::custom(format!("invalid size {v}: must be greater than zero"))
                    })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "invalid size {s:?}: write a whole number and a unit (B, KiB, MiB, GiB, KB, MB, GB), e.g. \"256MiB\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let factor: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    let bytes = n.checked_mul(factor).ok_or_else(err)?;
    if bytes == 0 {
        return Err(format!("invalid size {s:?}: must be greater than zero"));
    }
    Ok(bytes)
}

/// A non-negative, finite number (a cost in dollars).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NonNegative(pub f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v >= 0.0 {
            Ok(NonNegative(v))
        } else {
            Err(de::Error::custom(format!(
                "invalid amount {v}: must be a finite number of at least 0"
            )))
        }
    }
}

/// A tool-name pattern as a policy's `[tools]` lists write it.
impl std::str::FromStr for ToolPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<ToolPattern, String> {
        parse_tool_pattern(s)
    }
}

fn parse_tool_pattern(s: &str) -> Result<ToolPattern, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'*');
    if ok {
        Ok(ToolPattern(s.to_owned()))
    } else {
        Err(format!(
            "invalid tool pattern {s:?}: use letters, digits, `_`, `-` and `*` (at most 64)"
        ))
    }
}

fn parse_host_pattern(s: &str) -> Result<HostPattern, String> {
    let err = |why: &str| format!("invalid network entry {s:?}: {why}");
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| err("write host:port, e.g. \"api.github.com:443\""))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| err("the port must be a number from 1 to 65535"))?;
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip = v6
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| err("not an IPv6 address inside [ ]"))?;
        HostMatch::Ip(IpAddr::V6(ip))
    } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        HostMatch::Ip(IpAddr::V4(ip))
    } else {
        let host = host.to_ascii_lowercase();
        let (wild, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest.to_owned()),
            None => (false, host.clone()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(err(
                "the host must be a DNS name, `*.` and a DNS name, an IPv4 address or [IPv6]",
            ));
        }
        if wild {
            HostMatch::Subdomains(name)
        } else {
            HostMatch::Exact(name)
        }
    };
    Ok(HostPattern { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_matches_prefixes_suffixes_and_middles() {
        let p = |s: &str| ToolPattern(s.to_owned());
        assert!(p("fs_*").matches("fs_read"));
        assert!(p("*").matches("anything"));
        assert!(p("*_get").matches("http_get"));
        assert!(p("a*c*e").matches("abcde"));
        assert!(!p("fs_*").matches("notes_get"));
        assert!(!p("fs_read").matches("fs_read2"));
    }

    #[test]
    fn subdomain_patterns_do_not_match_the_bare_suffix_or_lookalikes() {
        let p = parse_host_pattern("*.wikipedia.org:443").unwrap();
        assert!(p.matches("en.wikipedia.org", 443));
        assert!(!p.matches("wikipedia.org", 443));
        assert!(!p.matches("evilwikipedia.org", 443));
        assert!(!p.matches("en.wikipedia.org", 80));
    }

    #[test]
    fn durations_and_sizes_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("72h"), Ok(Duration::from_secs(72 * 3600)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("1 MiB").is_err());
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        assert_eq!(line_column("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncdé\nx", 4), (2, 2));
        assert_eq!(line_column("ab\ncdé\nx", 8), (3, 1));
    }
}
