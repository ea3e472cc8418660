//! The `longrun` command line: a thin layer over `longrun-host`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use longrun_host::agent::{AgentConfig, Resumed, Session, SessionStatus};
use longrun_host::children::Workers;
use longrun_host::journal::{Journal, JournalOptions, Location, SessionId};
use longrun_host::model::{Model, ModelSpec, ScriptedModel};
use longrun_host::openai::{OpenAiConfig, OpenAiModel};
use longrun_host::policy::{Access, Decision, Policy};
use longrun_host::sandbox::{
    CallRequest, ComponentSource, Refused, Sandbox, SandboxConfig, Toolbox,
};
use longrun_model_local::LocalModel;
use longrun_server::mcp::McpServer;

mod replay;
use replay::{ReplayCommand, replay};

#[derive(Parser)]
#[command(
    name = "longrun",
    version,
    about = "A host for AI agents that work for hours or days"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and explain policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List and call tools.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Start a new agent session with GOAL and run it in the foreground.
    /// It never resumes another session (`resume` does).
    Run {
        /// The goal of the new session.
        goal: String,
        /// Heavy mode: run N trajectories on the goal (child sessions on
        /// the same model, each with its own copy of the read-write mounts)
        /// and answer with the one the model finds best; its changes are
        /// applied to the real mounts, or only proposed, as the policy's
        /// `[children] trajectory_changes` says.
        #[arg(long, value_name = "N")]
        trajectories: Option<u32>,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Go on with an unfinished session (one a crash, a kill or a budget
    /// stopped): SESSION, or the journal's most recent unfinished one.
    Resume {
        /// The session to resume (as `replay list` shows it).
        session_id: Option<SessionId>,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Manage local models.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve the HTTP agent API and the session viewer; unfinished sessions
    /// of the journal are resumed first. Stops gracefully on Ctrl-C or
    /// SIGTERM.
    Serve {
        /// The server's configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Listen here instead of at the configuration's address (port 0:
        /// any free port; the address is printed).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        tools: ToolsDir,
    },
    /// Serve the tools, under a policy, as an MCP server: over stdio, or
    /// over streamable HTTP at /mcp with --http. Each call runs in the
    /// sandbox and is journaled.
    Mcp {
        #[arg(long)]
        policy: PathBuf,
        /// Serve streamable HTTP here (e.g. 127.0.0.1:8765; port 0: any free
        /// port, printed) instead of stdio.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
        /// The environment variable holding the bearer token HTTP requests
        /// must carry.
        #[arg(long)]
        token_env: Option<String>,
        #[command(flatten)]
        journal: JournalDir,
        #[command(flatten)]
        tools: ToolsDir,
    },
    /// Audit a journal: list, show, verify, re-execute, fork, stats. Every
    /// command but `fork` reads a private copy of the journal and never
    /// writes to it (so a journal a host has open can be read too).
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Move a journal between stores.
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Copy every session of a journal into an empty one (a directory and a
    /// `postgres://` database, either way round), each under its own id with
    /// its records' bytes unchanged, then verify both sides. The source is
    /// only read.
    Copy {
        /// The journal to copy: a directory or a postgres:// address.
        #[arg(long)]
        from: Location,
        /// Where to: a directory (a new segment journal) or a postgres://
        /// address.
        #[arg(long)]
        to: Location,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Fetch a local model into the cache (once) and print its path.
    Fetch {
        /// The local model's name.
        #[arg(default_value = longrun_host::fetch::DEFAULT_MODEL)]
        name: String,
    },
}

/// How a session runs: `run` and `resume` take the same.
#[derive(clap::Args)]
struct SessionArgs {
    #[command(flatten)]
    policy: PolicyArg,
    #[command(flatten)]
    model: ModelArgs,
    /// The most tokens of context sent to the model; older steps are
    /// compacted past it.
    #[arg(long, default_value_t = AgentConfig::default().context_tokens)]
    context_tokens: u64,
    /// The most tokens the model may write in one step (its answer or its
    /// calls); the budgets reserve this much before each model call.
    #[arg(long, default_value_t = AgentConfig::default().max_output_tokens)]
    max_output_tokens: u64,
    /// Tool outputs longer than this many bytes reach the model cut, with a
    /// handle to page through the rest (`read_output`).
    #[arg(long, default_value_t = AgentConfig::default().output_view_bytes)]
    output_view: usize,
    #[command(flatten)]
    journal: JournalDir,
    #[command(flatten)]
    tools: ToolsDir,
    /// A model child sessions may run on, as NAME=SPEC (the policy's
    /// `[children] models` lists the names); repeat for more.
    #[arg(long = "worker", value_name = "NAME=SPEC")]
    workers: Vec<String>,
}

/// Which session `run_session` runs.
enum Start {
    New {
        goal: String,
        trajectories: Option<u32>,
    },
    Resume {
        session: Option<SessionId>,
    },
}

/// The policy a command runs under.
#[derive(clap::Args)]
struct PolicyArg {
    /// The policy file (default: the built-in policy: the current directory
    /// read-only at /workspace, no network, the tools that only read, modest
    /// budgets; `longrun policy explain` shows it).
    #[arg(long = "policy", id = "policy_file")]
    file: Option<PathBuf>,
}

impl PolicyArg {
    fn load(&self) -> Result<Policy> {
        match &self.file {
            Some(file) => Ok(Policy::load(file)?),
            None => built_in_policy(),
        }
    }
}

/// The built-in policy, for the current directory.
fn built_in_policy() -> Result<Policy> {
    let here = std::env::current_dir().context("the current directory")?;
    Ok(Policy::built_in(&here)?)
}

#[derive(clap::Args)]
struct JournalDir {
    /// The journal directory.
    // Distinct ids: clap names an argument after its field, and both
    // flattened directories' fields are `dir`.
    #[arg(
        long = "journal",
        id = "journal_dir",
        default_value = ".longrun/journal"
    )]
    dir: PathBuf,
    /// A journal in a PostgreSQL database instead of a directory
    /// (`postgres://user@host:port/db`; the schema is created on first
    /// use).
    #[arg(long = "store", id = "journal_store", conflicts_with = "journal_dir")]
    store: Option<Location>,
}

impl JournalDir {
    /// Where the journal is: the database `--store` names, or the
    /// directory.
    fn location(&self) -> Result<Location> {
        match &self.store {
            None => Ok(Location::Dir(self.dir.clone())),
            Some(location @ Location::Postgres(_)) => Ok(location.clone()),
            Some(other) => bail!(
                "--store takes a postgres:// address, not {other}: a directory is --journal DIR"
            ),
        }
    }

    /// Open (or create) the journal, for writing.
    fn open(&self) -> Result<Arc<Journal>> {
        open_journal(&self.location()?)
    }
}

/// `longrun journal copy`.
fn copy_journal(from: &Location, to: &Location) -> Result<ExitCode> {
    let source = Journal::open_location_read_only(from, JournalOptions::AUDIT)
        .with_context(|| format!("reading the journal in {from}"))?;
    let target = open_journal(to)?;
    let copied = longrun_host::journal::copy::copy(&source, &target)
        .with_context(|| format!("copying {from} into {to}"))?;
    println!(
        "copied {} sessions ({} records, {} blobs) from {from} to {to}; both sides verify",
        copied.sessions, copied.records, copied.blobs
    );
    Ok(ExitCode::SUCCESS)
}

/// Open (or create) the journal at `location`, for a host.
fn open_journal(location: &Location) -> Result<Arc<Journal>> {
    if let Location::Dir(dir) | Location::Segments(dir) | Location::Sled(dir) = location {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the journal directory {}", dir.display()))?;
    }
    Journal::open_location(location, JournalOptions::HOST)
        .with_context(|| format!("opening the journal in {location}"))
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse a policy strictly; exit non-zero with file:line:column on error.
    Check { file: PathBuf },
    /// Print the built-in policy (for the current directory) as a policy
    /// file to start from.
    Default,
    /// Say what a policy (default: the built-in one) lets each tool touch.
    Explain {
        file: Option<PathBuf>,
        #[command(flatten)]
        tools: ToolsDir,
    },
}

#[derive(Subcommand)]
enum ToolCommand {
    /// List the tools and their argument schemas.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tools: ToolsDir,
    },
    /// Run one tool once under a policy and print its JSON result.
    Call {
        name: String,
        /// The arguments, as a JSON object.
        args: String,
        #[command(flatten)]
        policy: PolicyArg,
        /// Approve the call if the policy says it needs a person's approval.
        #[arg(long)]
        approve: bool,
        #[command(flatten)]
        tools: ToolsDir,
    },
}

/// Which model a session runs on.
#[derive(clap::Args)]
struct ModelArgs {
    /// The model: `local:NAME` (a GGUF file, or the default model's name),
    /// `openai-compatible:PROFILE` (e.g. `kimi-k2.6`, or a model id with
    /// --base-url) or `scripted:FILE` (a recorded script, JSON Lines).
    /// Default: the embedded default model, fetched once.
    #[arg(long, default_value = DEFAULT_MODEL_SPEC)]
    model: ModelSpec,
    /// The API's base URL, for an `openai-compatible` model.
    #[arg(long)]
    base_url: Option<String>,
    /// The environment variable holding the API key, for an
    /// `openai-compatible` model (the profile's default otherwise).
    #[arg(long)]
    api_key_env: Option<String>,
    /// Ask an `openai-compatible` API for whole answers instead of streams.
    #[arg(long)]
    no_stream: bool,
}

impl ModelArgs {
    async fn load(self) -> Result<Box<dyn Model>> {
        load_model(&self.model, self.base_url, self.api_key_env, self.no_stream).await
    }
}

/// The model a session runs on when `--model` is not given.
const DEFAULT_MODEL_SPEC: &str = "local:smollm2-135m";

/// The built-in tool components, built and embedded by `build.rs`.
mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_tools.rs"));
}

#[derive(clap::Args)]
struct ToolsDir {
    /// A directory of more tool components, loaded beside the built-in ones
    /// (which this binary holds); a tool it exports replaces the built-in
    /// tool of the same name.
    #[arg(long = "tools-dir", id = "tools_dir", env = "LONGRUN_TOOLS_DIR")]
    dir: Option<PathBuf>,
}

impl ToolsDir {
    async fn load(&self) -> Result<Toolbox> {
        self.load_with(SandboxConfig::default()).await
    }

    async fn load_with(&self, sandbox: SandboxConfig) -> Result<Toolbox> {
        let mut sources: Vec<ComponentSource> = builtin::BUILTIN_TOOLS
            .iter()
            .map(|(file, bytes)| ComponentSource::built_in(file, bytes))
            .collect();
        let mut refused = Vec::new();
        if let Some(dir) = &self.dir {
            let paths = ComponentSource::read_dir(dir)
                .with_context(|| format!("loading tools from {}", dir.display()))?;
            for path in paths {
                match ComponentSource::read(&path) {
                    Ok(source) => sources.push(source),
                    Err(e) => refused.push(Refused {
                        file: path.display().to_string(),
                        reason: e.to_string(),
                    }),
                }
            }
        }
        let sandbox = Arc::new(Sandbox::new(sandbox)?);
        Ok(Toolbox::load_sources(sandbox, sources, refused).await?)
    }
}

fn main() -> ExitCode {
    longrun_host::process::limit_malloc_arenas();
    longrun_host::process::raise_open_file_limit();
    // The local backend (mistral.rs) must never reach for a model hub: the
    // model is a local file. Set before any thread exists that could read it.
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LONGRUN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.command.only_prints() {
        longrun_host::process::end_quietly_when_output_closes();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the command's job is printing what it finds (an audit, a
    /// listing), so that a reader closing its output ends it.
    fn only_prints(&self) -> bool {
        match self {
            Command::Replay(ReplayCommand::Fork { .. }) => false,
            Command::Replay(_) | Command::Policy(_) | Command::Model(_) => true,
            Command::Tool(ToolCommand::List { .. }) => true,
            Command::Tool(ToolCommand::Call { .. })
            | Command::Run { .. }
            | Command::Resume { .. }
            | Command::Serve { .. }
            | Command::Mcp { .. }
            | Command::Journal(_) => false,
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            goal,
            trajectories,
            session,
        } => run_session(Start::New { goal, trajectories }, session).await,
        Command::Resume {
            session_id,
            session,
        } => {
            let start = Start::Resume {
                session: session_id,
            };
            run_session(start, session).await
        }
        Command::Serve {
            config,
            listen,
            tools,
        } => serve(&config, listen, tools).await,
        Command::Mcp {
            policy,
            http,
            token_env,
            journal,
            tools,
        } => {
            let policy = Arc::new(Policy::load(&policy)?);
            let toolbox = Arc::new(tools.load().await?);
            let journal = journal.open()?;
            let transport = if http.is_some() { "http" } else { "stdio" };
            let server = Arc::new(McpServer::new(toolbox, policy, journal, transport).await?);
            match http {
                None => server.serve_stdio().await?,
                Some(addr) => {
                    let token = match token_env {
                        Some(var) => Some(std::env::var(&var).with_context(|| {
                            format!("the environment variable {var} is not set")
                        })?),
                        None => None,
                    };
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("listening on {addr}"))?;
                    println!(
                        "listening on {}",
                        longrun_server::mcp::endpoint(listener.local_addr()?)
                    );
                    server.serve_http(listener, token, shutdown_signal()).await;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Model(ModelCommand::Fetch { name }) => {
            let path = longrun_host::fetch::fetch(&name)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(command) => replay(command).await,
        Command::Journal(JournalCommand::Copy { from, to }) => copy_journal(&from, &to),
        Command::Policy(PolicyCommand::Check { file }) => {
            let policy = Policy::load(&file)?;
            println!("{}: ok", file.display());
            for warning in mount_warnings(&policy) {
                println!("warning: {warning}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Default) => {
            let here = std::env::current_dir().context("the current directory")?;
            print!("{}", Policy::built_in_text(&here));
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy(PolicyCommand::Explain { file, tools }) => {
            let policy = match file {
                Some(file) => Policy::load(&file)?,
                None => built_in_policy()?,
            };
            let toolbox = tools.load().await?;
            explain(&policy, &toolbox);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tool(ToolCommand::List { json, tools }) => {
            let toolbox = tools.load().await?;
            if json {
                let all: Vec<_> = toolbox.tools().collect();
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for tool in toolbox.tools() {
                    println!(
                        "{:<14} {:<9} {:<14} {}",
                        tool.name,
                        format!("{:?}", tool.effects).to_lowercase(),
                        if tool.idempotent {
                            "idempotent"
                        } else {
                            "not-idempotent"
                        },
                        tool.description
                    );
                    println!("    args: {}", schema_summary(&tool.parameters));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tool(ToolCommand::Call {
            name,
            args,
            policy,
            approve,
            tools,
        }) => {
            let policy = policy.load()?;
            let toolbox = tools.load().await?;
            let approved = approve || ask_approval(&policy, &name, &args)?;
            let report = toolbox
                .call(
                    &policy,
                    &CallRequest {
                        tool: &name,
                        args: &args,
                        approved,
                    },
                )
                .await;
            for line in report.log.stdout.lines() {
                eprintln!("[{name} stdout] {line}");
            }
            for line in report.log.stderr.lines() {
                eprintln!("[{name} stderr] {line}");
            }
            for denial in &report.log.net_denials {
                eprintln!("[{name} network refused] {denial}");
            }
            for denial in &report.log.fs_denials {
                eprintln!("[{name} file system refused] {denial}");
            }
            match report.outcome {
                Ok(output) => {
                    let pretty = serde_json::from_str::<serde_json::Value>(&output)
                        .and_then(|v| serde_json::to_string_pretty(&v))
                        .unwrap_or(output);
                    println!("{pretty}");
                    eprintln!("({name} ran in {:.1?})", report.elapsed);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => bail!("{name}: {e}"),
            }
        }
    }
}

/// The model a `--model` spec names, ready to use.
async fn load_model(
    spec: &ModelSpec,
    base_url: Option<String>,
    api_key_env: Option<String>,
    no_stream: bool,
) -> Result<Box<dyn Model>> {
    match spec {
        ModelSpec::Scripted(path) => Ok(Box::new(ScriptedModel::load(path)?)),
        ModelSpec::OpenAiCompatible(name) => {
            let mut config = match (OpenAiConfig::profile(name), &base_url) {
                (Some(profile), _) => profile,
                (None, Some(_)) => OpenAiConfig {
                    name: format!("openai-compatible:{name}"),
                    model: name.clone(),
                    api_key_env: None,
                    temperature: None,
                    top_p: None,
                    max_tokens: None,
                    thinking: None,
                    ..OpenAiConfig::profile("kimi-k2.6").context("the built-in profile")?
                },
                (None, None) => bail!(
                    "no built-in profile for {name:?}: pass --base-url (and --api-key-env) for it"
                ),
            };
            if let Some(url) = base_url {
                config.base_url = url;
            }
            if let Some(var) = api_key_env {
                config.api_key_env = Some(var);
            }
            config.stream = !no_stream;
            Ok(Box::new(OpenAiModel::new(config)?))
        }
        ModelSpec::Local(name) => {
            // A model `longrun model fetch` knows (fetched now if it is not
            // cached yet), or the path of a GGUF file.
            let path = if name == longrun_host::fetch::DEFAULT_MODEL {
                if longrun_host::fetch::cached(name)?.is_none() {
                    eprintln!("fetching the default model {name} (once; it is cached)");
                }
                longrun_host::fetch::fetch(name)?
            } else {
                PathBuf::from(name)
            };
            eprintln!("loading {} ...", path.display());
            let model = LocalModel::load(&format!("local:{name}"), &path).await?;
            Ok(Box::new(model))
        }
    }
}

/// Run the HTTP API until Ctrl-C or SIGTERM, then shut down gracefully.
async fn serve(
    config_file: &Path,
    listen: Option<std::net::SocketAddr>,
    tools: ToolsDir,
) -> Result<ExitCode> {
    let mut config = longrun_server::ServerConfig::load(config_file)?;
    if let Some(addr) = listen {
        config.listen = addr;
    }
    let tools = ToolsDir {
        dir: tools.dir.or_else(|| config.tools_dir.clone()),
    };
    let toolbox = Arc::new(
        tools
            .load_with(SandboxConfig {
                max_concurrent_calls: config.max_concurrent_calls,
                ..SandboxConfig::default()
            })
            .await?,
    );
    let mut models = std::collections::BTreeMap::new();
    for (name, spec) in &config.models {
        let model = load_model(spec, None, None, false)
            .await
            .with_context(|| format!("model {name:?}"))?;
        models.insert(name.clone(), Arc::<dyn Model>::from(model));
    }
    let journal = open_journal(&config.journal)?;
    let config_journal = config.journal.clone();
    let watched = journal.clone();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let server = longrun_server::Server::start(
        config,
        journal,
        toolbox,
        models,
        AgentConfig {
            scratch_dir: longrun_host::trajectories::scratch_dir(&config_journal),
            ..AgentConfig::default()
        },
        listener,
    )
    .await?;
    println!("listening on http://{}", server.local_addr());
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        why = journal_failure(&watched) => Some(why),
    };
    eprintln!("shutting down");
    server.shutdown().await;
    match failure {
        // A server whose journal takes no more records can run nothing:
        // it says why and exits, for a supervisor to restart it once the
        // disk has room again (its sessions resume then).
        Some(why) => {
            eprintln!("error: the journal failed: {why}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Returns once the journal has stopped taking records, with why.
async fn journal_failure(journal: &Journal) -> String {
    loop {
        if let Some(why) = journal.failure() {
            return why;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Returns on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resume the first unfinished session of the journal, or start one.
/// Start a new session, or resume one, and drive it; says which on
/// standard error.
async fn run_session(start: Start, args: SessionArgs) -> Result<ExitCode> {
    let config = AgentConfig {
        context_tokens: args.context_tokens,
        max_output_tokens: args.max_output_tokens,
        output_view_bytes: args.output_view,
        scratch_dir: longrun_host::trajectories::scratch_dir(&args.journal.location()?),
        ..AgentConfig::default()
    };
    let location = args.journal.location()?;
    let model: Arc<dyn Model> = Arc::from(args.model.load().await?);
    let policy = args.policy.load()?;
    let toolbox = Arc::new(args.tools.load().await?);
    let journal = open_journal(&location)?;
    let workers = workers(&args.workers, &model, &journal, &toolbox, &config).await?;
    let mut session = match start {
        Start::New { goal, trajectories } => {
            let unfinished = last_unfinished(&journal)?;
            let session = Session::start_labelled(
                &journal,
                &toolbox,
                &policy,
                model.as_ref(),
                config,
                &goal,
                Default::default(),
                trajectories,
            )
            .await?;
            eprintln!("new session {}", session.id());
            if let Some(last) = unfinished {
                eprintln!(
                    "(session {last} in this journal is unfinished; `longrun resume {last}` goes on with it)"
                );
            }
            session
        }
        Start::Resume { session } => {
            let id = match session {
                Some(id) if !journal.sessions()?.contains(&id) => {
                    bail!("there is no session {id} in {location}")
                }
                Some(id) if !longrun_host::agent::resumable(&journal, id)? => {
                    bail!("session {id} cannot be resumed: it has ended, or it is a fork")
                }
                Some(id) => id,
                None => last_unfinished(&journal)?.with_context(|| {
                    format!("no unfinished session in {location}: `longrun run GOAL` starts one")
                })?,
            };
            match Session::resume(&journal, id, &toolbox, &policy, model.as_ref(), config).await? {
                Resumed::Session(session) => {
                    eprintln!("resuming session {id}");
                    *session
                }
                Resumed::Ended => bail!("session {id} has already ended"),
            }
        }
    };
    if policy.children.is_some() {
        session.with_workers(workers);
    }
    drive(&mut session, &policy).await
}

/// The models child sessions may run on: those `--worker NAME=SPEC` names,
/// and the session's own `model` under its name (heavy mode's trajectories
/// run on it).
async fn workers(
    specs: &[String],
    model: &Arc<dyn Model>,
    journal: &Arc<Journal>,
    toolbox: &Arc<Toolbox>,
    config: &AgentConfig,
) -> Result<Arc<Workers>> {
    let mut models = std::collections::BTreeMap::new();
    models.insert(model.name().to_owned(), model.clone());
    for spec in specs {
        let (name, spec) = spec
            .split_once('=')
            .with_context(|| format!("--worker {spec:?}: write NAME=SPEC"))?;
        let spec = ModelSpec::parse(spec).map_err(|e| anyhow::anyhow!("--worker {name}: {e}"))?;
        let model: Arc<dyn Model> = Arc::from(load_model(&spec, None, None, false).await?);
        models.insert(name.to_owned(), model);
    }
    Ok(Arc::new(Workers {
        journal: journal.clone(),
        toolbox: toolbox.clone(),
        models,
        config: config.clone(),
    }))
}

/// The most recent session that can be resumed, looking from the newest
/// back and stopping at the first.
fn last_unfinished(journal: &Journal) -> Result<Option<SessionId>> {
    for session in journal.sessions()?.into_iter().rev() {
        if longrun_host::agent::resumable(journal, session)? {
            return Ok(Some(session));
        }
    }
    Ok(None)
}

/// Run a session to its end or a pause, showing each step; the exit code
/// says how it stopped.
async fn drive(session: &mut Session<'_>, policy: &Policy) -> Result<ExitCode> {
    let budgets = policy.session.clone();
    session.on_step(move |p| {
        let of = |limit: Option<u64>| limit.map(|l| format!("/{l}")).unwrap_or_default();
        eprintln!(
            "step {}{}  tokens in {}{} out {}{}  tool calls {}{}  cost ${:.4}{}",
            p.step,
            of(budgets.max_steps),
            p.usage.input_tokens,
            of(budgets.max_input_tokens),
            p.usage.output_tokens,
            of(budgets.max_output_tokens),
            p.usage.tool_calls,
            of(budgets.max_tool_calls),
            p.usage.cost_usd,
            budgets
                .max_cost_usd
                .map(|l| format!("/${:.2}", l.0))
                .unwrap_or_default(),
        );
        for call in &p.calls {
            eprintln!("  call {} {}", call.name, call.arguments);
        }
    });
    let status = session.run().await?;
    let used = &session.ledger().used;
    eprintln!(
        "session {}: {} steps, {} tool calls, {} input / {} output tokens, ${:.4}",
        session.id(),
        used.steps,
        used.tool_calls,
        used.input_tokens,
        used.output_tokens,
        used.cost_usd
    );
    match status {
        SessionStatus::Completed { answer } => {
            println!("{answer}");
            Ok(ExitCode::SUCCESS)
        }
        SessionStatus::BudgetExhausted(e) => {
            eprintln!("paused: {e}; raise the budget in the policy and run again to resume");
            Ok(ExitCode::from(3))
        }
        SessionStatus::AwaitingApproval { call } => {
            eprintln!(
                "paused: {}({}) needs a person's approval",
                call.name, call.arguments
            );
            Ok(ExitCode::from(4))
        }
        SessionStatus::Stuck { call, error, count } => {
            eprintln!(
                "stopped: {}({}) failed the same way {count} times ({error}); the policy's max_repeated_failures ended the session",
                call.name, call.arguments
            );
            Ok(ExitCode::from(6))
        }
        // Only a steered session (the HTTP API) pauses or is cancelled.
        SessionStatus::Paused | SessionStatus::Cancelled | SessionStatus::Halted => {
            eprintln!("paused or cancelled from outside");
            Ok(ExitCode::from(5))
        }
    }
}

/// For a tool the policy says needs approval: ask on a terminal, refuse
/// otherwise (the caller can pass `--approve`).
fn ask_approval(policy: &Policy, tool: &str, args: &str) -> Result<bool> {
    let Decision::NeedsApproval(pattern) = policy.decide(tool) else {
        return Ok(false);
    };
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("policy pattern {pattern:?} asks a person to approve {tool}({args}). Approve? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn mount_warnings(policy: &Policy) -> Vec<String> {
    policy
        .filesystem
        .iter()
        .filter(|m| !m.host.is_dir())
        .map(|m| {
            format!(
                "mount {} -> {}: the host directory does not exist yet; calls fail until it does",
                m.host.display(),
                m.guest
            )
        })
        .collect()
}

fn explain(policy: &Policy, toolbox: &Toolbox) {
    println!("policy {}", policy.source);
    println!();
    println!("Every allowed tool sees:");
    if policy.filesystem.is_empty() {
        println!("  files: nothing (no mounts)");
    }
    for m in &policy.filesystem {
        let access = match m.access {
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        };
        let links = match m.symlinks {
            longrun_host::policy::Symlinks::WithinMount => "links it makes must stay inside",
            longrun_host::policy::Symlinks::Any => "may make relative links pointing anywhere",
        };
        println!(
            "  files: {} = {} ({access}; {links})",
            m.guest,
            display(&m.host)
        );
    }
    if policy.network.allow.is_empty() {
        println!("  network: nothing (no hosts allowed)");
    }
    for entry in &policy.network.allow {
        println!("  network: {entry}");
    }
    println!("  environment, arguments, stdin: none; stdout/stderr captured");
    println!();
    println!("Tools:");
    for tool in toolbox.tools() {
        let decision = match policy.decide(&tool.name) {
            Decision::Allow => "allowed".to_owned(),
            Decision::NeedsApproval(p) => {
                format!("allowed after a person approves (pattern {p:?})")
            }
            Decision::Deny(_) => "denied".to_owned(),
        };
        let limits = policy.limits_for(&tool.name);
        println!("  {:<14} {decision}", tool.name);
        if !matches!(policy.decide(&tool.name), Decision::Deny(_)) {
            println!(
                "  {:<14} limits: timeout {:?}, memory {} MiB, output {} KiB, args {} KiB, log {} KiB",
                "",
                limits.timeout,
                limits.memory >> 20,
                limits.max_output >> 10,
                limits.max_args >> 10,
                limits.max_log >> 10
            );
        }
    }
    let s = &policy.session;
    let limit = |v: Option<String>| v.unwrap_or_else(|| "unlimited".to_owned());
    println!();
    println!("Session budgets:");
    println!(
        "  steps {}, tool calls {}, input tokens {}, output tokens {}, cost {}, wall time {}",
        limit(s.max_steps.map(|v| v.to_string())),
        limit(s.max_tool_calls.map(|v| v.to_string())),
        limit(s.max_input_tokens.map(|v| v.to_string())),
        limit(s.max_output_tokens.map(|v| v.to_string())),
        limit(s.max_cost_usd.map(|c| format!("${}", c.0))),
        limit(s.max_wall_time.map(|t| format!("{:?}", t.0)))
    );
    println!(
        "  the same call failing the same way: {} times, then the session ends as stuck",
        s.repeated_failures_allowed()
    );
    if !policy.prices.is_empty() {
        println!("Prices (dollars per million tokens):");
        for (model, price) in &policy.prices {
            println!(
                "  {model}: input {}, cached input {}, output {}",
                price.input_per_million.0,
                price
                    .cached_input_per_million
                    .unwrap_or(price.input_per_million)
                    .0,
                price.output_per_million.0
            );
        }
    }
    println!(
        "Always available to a session: {} (pages through its own long tool outputs)",
        longrun_host::context::READ_OUTPUT
    );
    for warning in mount_warnings(policy) {
        println!("warning: {warning}");
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `name: type` for each property of an object schema, required ones marked.
fn schema_summary(schema: &serde_json::Value) -> String {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let Some(props) = schema["properties"].as_object() else {
        return "(none)".to_owned();
    };
    props
        .iter()
        .map(|(name, prop)| {
            let ty = match &prop["type"] {
                serde_json::Value::String(t) => t.clone(),
                serde_json::Value::Array(ts) => ts
                    .iter()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
                _ => "any".to_owned(),
            };
            let mark = if required.contains(&name.as_str()) {
                ""
            } else {
                "?"
            };
            format!("{name}{mark}: {ty}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_and_tools_directories_are_separate_arguments() {
        for command in ["mcp", "run", "resume"] {
            let mut args = vec!["longrun", command, "--policy", "p.toml"];
            match command {
                "run" => args.extend(["goal", "--model", "scripted:s.jsonl"]),
                "resume" => args.extend(["7", "--model", "scripted:s.jsonl"]),
                _ => {}
            }
            args.extend(["--journal", "j", "--tools-dir", "t"]);
            let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{command}: {e}"));
            let (journal, tools) = match cli.command {
                Command::Mcp { journal, tools, .. } => (journal, tools),
                Command::Run { session, .. } | Command::Resume { session, .. } => {
                    (session.journal, session.tools)
                }
                _ => unreachable!(),
            };
            assert_eq!(journal.dir, PathBuf::from("j"));
            assert_eq!(tools.dir, Some(PathBuf::from("t")));
        }
    }
}
