//! The longrun HTTP agent API (`longrun serve`), on hyper 1.
//!
//! Applications create sessions, read their journals, follow them live as
//! Server-Sent Events, and steer them: a person's messages, approvals,
//! pause, resume, cancel. Each bearer token belongs to a tenant, and a
//! tenant sees only its own sessions. Errors are `application/problem+json`
//! ([`problem`]). The routes are one table ([`routes::ROUTES`]) that the
//! OpenAPI document served at `/openapi.json` is tested against; a session
//! viewer for people is served at `/`.
//!
//! - [`config`]: the configuration file.
//! - [`sessions`]: the session tasks and what the API knows of them.
//! - [`api`]: the handlers.
//! - [`metrics`]: counters in the Prometheus text format.
//! - [`mcp`]: the tools as an MCP server (`longrun mcp`).
//! - [`cluster`]: several hosts on one shared store (leases, takeover).

pub mod admission;
pub mod api;
pub mod cluster;
pub mod config;
pub mod mcp;
pub mod metrics;
pub mod problem;
pub mod routes;
pub mod sessions;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use longrun_host::agent::AgentConfig;
use longrun_host::journal::Journal;
use longrun_host::model::Model;
use longrun_host::policy::Policy;
use longrun_host::sandbox::Toolbox;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::{ConfigError, HttpLimits, ServerConfig, Tenant};

/// The body of every response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).boxed_unsync()
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Journal(#[from] longrun_host::journal::JournalError),
    #[error("policy {name:?}: {source}")]
    Policy {
        name: String,
        #[source]
        source: longrun_host::policy::PolicyError,
    },
    #[error("no model {0:?} among the models given to the server")]
    MissingModel(String),
    #[error("cannot listen: {0}")]
    Listen(#[source] std::io::Error),
}

/// A named policy, loaded from its file.
pub struct NamedPolicy {
    pub policy: Arc<Policy>,
    /// Where the file's relative paths are resolved.
    pub base_dir: PathBuf,
}

/// What the server's handlers and session tasks share.
pub struct Shared {
    pub config: ServerConfig,
    pub journal: Arc<Journal>,
    pub toolbox: Arc<Toolbox>,
    pub models: BTreeMap<String, Arc<dyn Model>>,
    pub policies: BTreeMap<String, NamedPolicy>,
    pub agent: AgentConfig,
    pub sessions: sessions::Registry,
    pub metrics: metrics::Metrics,
    tasks: Mutex<JoinSet<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Run a session task; the server waits for it when it shuts down.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished tasks, so that a server of many sessions does not
        // keep one handle per session it ever ran.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    /// What a session on `model` needs to start children: this server's
    /// journal, tools, models (by their configured names, and the session's
    /// own under the name it records, for heavy mode's trajectories) and
    /// loop settings.
    fn workers(&self, model: &Arc<dyn Model>) -> Arc<longrun_host::children::Workers> {
        let mut models = self.models.clone();
        models
            .entry(model.name().to_owned())
            .or_insert_with(|| model.clone());
        Arc::new(longrun_host::children::Workers {
            journal: self.journal.clone(),
            toolbox: self.toolbox.clone(),
            models,
            config: self.agent.clone(),
        })
    }

    /// Whether the server has begun to shut down.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Returns when the server shuts down.
    pub async fn shut_down(&self) {
        let mut down = self.shutdown.subscribe();
        // The guard `wait_for` returns is dropped here, not held by callers.
        let _ = down.wait_for(|down| *down).await.map(|_| ());
    }

    /// The policy recorded at a session's start, with the budgets it was
    /// asked for: what a resumed session runs under.
    fn recorded_policy(&self, found: &sessions::Found) -> Result<Policy, String> {
        let base = self
            .policies
            .get(&found.policy_name)
            .map(|p| p.base_dir.clone())
            .unwrap_or_else(|| self.config.base_dir.clone());
        let mut policy = Policy::parse(
            &found.created.policy_text,
            &format!("the policy recorded for {}", found.policy_name),
            &base,
        )
        .map_err(|e| e.to_string())?;
        policy.session = found.budgets.tighten(&policy.session);
        Ok(policy)
    }
}

/// The cap on served connections: the configured one, lowered where the
/// process's open-file limit could not hold it beside what the server
/// keeps for itself (journal, tools, shed connections).
fn connection_cap(configured: usize) -> usize {
    let Some(limit) = longrun_host::process::open_file_limit() else {
        return configured;
    };
    let room = usize::try_from(limit.saturating_sub(admission::RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(1);
    if room < configured {
        tracing::warn!(
            "http.max_connections lowered from {configured} to {room}: the open-file limit is {limit}"
        );
    }
    configured.min(room)
}

/// A connection past a cap: `/healthz` and `/metrics` answered as ever
/// (monitoring must see the flood), anything else a 503, one request, a
/// short time to send it, then closed.
async fn shed(shared: Arc<Shared>, stream: tokio::net::TcpStream, ticket: admission::ShedTicket) {
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        async move {
            let response = if matches!(request.uri().path(), "/healthz" | "/metrics") {
                api::handle(&shared, request).await
            } else {
                problem::Problem::Unavailable
                    .with("the server is at its connection limit: try again shortly".to_owned())
                    .into_response()
            };
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(admission::SHED_HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(admission::SHED_HEADER_TIMEOUT * 2, connection).await;
    drop(ticket);
}

/// A running server.
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Load the policies, find the journal's sessions (resuming the
    /// unfinished ones), and serve on `listener`.
    pub async fn start(
        config: ServerConfig,
        journal: Arc<Journal>,
        toolbox: Arc<Toolbox>,
        models: BTreeMap<String, Arc<dyn Model>>,
        agent: AgentConfig,
        listener: TcpListener,
    ) -> Result<Server, ServerError> {
        let mut policies = BTreeMap::new();
        for (name, path) in &config.policies {
            let policy = Policy::load(path).map_err(|source| ServerError::Policy {
                name: name.clone(),
                source,
            })?;
            let base_dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            policies.insert(
                name.clone(),
                NamedPolicy {
                    policy: Arc::new(policy),
                    base_dir,
                },
            );
        }
        for name in config.models.keys() {
            if !models.contains_key(name) {
                return Err(ServerError::MissingModel(name.clone()));
            }
        }
        let local_addr = listener.local_addr().map_err(ServerError::Listen)?;
        let cluster = config.cluster.clone();
        if let Some(cluster) = &cluster {
            cluster::join(&journal, cluster)?;
        }
        let shared = Arc::new(Shared {
            config,
            journal,
            toolbox,
            models,
            policies,
            agent,
            sessions: Default::default(),
            metrics: Default::default(),
            tasks: Mutex::new(JoinSet::new()),
            shutdown: tokio::sync::watch::channel(false).0,
        });
        let resumed = sessions::load(&shared)?;
        if resumed > 0 {
            tracing::info!("resumed {resumed} unfinished sessions");
        }
        if let Some(cluster) = cluster {
            tokio::spawn(cluster::keep(shared.clone(), cluster));
        }
        let accept = tokio::spawn(accept_loop(shared.clone(), listener));
        Ok(Server {
            shared,
            local_addr,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stop accepting, end the event streams, halt every session at its
    /// next step boundary (waiting up to the grace period; a session still
    /// in a step after it is dropped, which its journal is built to
    /// survive), and flush the journal.
    pub async fn shutdown(self) {
        // `send_replace`, not `send`: with no receiver yet (the accept loop not
        // polled once), `send` would drop the value and the loop would wait on.
        self.shared.shutdown.send_replace(true);
        let _ = self.accept.await;
        for entry in self.shared.sessions.all() {
            entry.steering.halt();
        }
        let mut tasks =
            std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let grace = self.shared.config.http.shutdown_grace;
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("sessions still in a step after {grace:?}: stopped there");
            tasks.shutdown().await;
        }
        if let Err(e) = self.shared.journal.flush_now() {
            tracing::error!("flushing the journal at shutdown: {e}");
        }
        // Other hosts take this one's unfinished sessions over at once,
        // rather than when their leases lapse.
        if self.shared.journal.lessee().is_some()
            && let Err(e) = self.shared.journal.release_leases()
        {
            tracing::error!("releasing the leases at shutdown: {e}");
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    use admission::{Admission, Admit};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let http = shared.config.http;
    let max_connections = connection_cap(http.max_connections);
    let admission = Admission::new(max_connections, http.max_connections_per_peer);
    shared.metrics.set_connection_limits(admission.clone());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait, do not spin.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shared.shut_down() => break,
        };
        let _ = stream.set_nodelay(true);
        let ticket = match admission.admit(peer.ip()) {
            Admit::Serve(ticket) => ticket,
            Admit::Shed(ticket) => {
                tokio::spawn(shed(shared.clone(), stream, ticket));
                continue;
            }
            Admit::Refuse => continue,
        };
        let service_shared = shared.clone();
        let service = service_fn(move |request| {
            let shared = service_shared.clone();
            async move { Ok::<_, Infallible>(api::handle(&shared, request).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(http.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
            drop(ticket);
        });
    }
    drop(listener);
    // Requests in flight finish; event streams end on the shutdown signal.
    let grace = shared.config.http.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {grace:?}: closed");
    }
}
