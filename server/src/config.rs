//! The server's configuration file: where it listens, which models and
//! policies sessions may name, which bearer tokens belong to which tenant,
//! and the limits of each request.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! journal = ".longrun/journal"             # a directory; or, instead:
//! # store = "postgres://longrun@db.internal:5432/longrun"
//! default_model = "smollm2"
//! default_policy = "default"
//!
//! [models]
//! smollm2 = "local:smollm2-135m"
//!
//! [policies]
//! default = "policies/default.toml"      # relative to this file
//!
//! [tenants.acme]
//! token_env = "ACME_TOKEN"               # or: token = "..."
//! inline_policies = false                # may its sessions bring their own policy?
//!
//! [http]
//! max_body = "1MiB"
//! request_timeout = "30s"
//! header_timeout = "10s"                 # also how long a kept-alive connection may idle
//! max_connections = 1024
//! max_connections_per_peer = 256
//! shutdown_grace = "10s"
//!
//! [sandbox]
//! max_concurrent_calls = 32              # tool calls at once; more wait their turn
//!
//! [cluster]                              # only with `store`: hosts sharing it
//! host = "host-a"                        # unique per host (default: name-pid)
//! lease = "10s"                          # a session's host renews at a third of it
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use longrun_host::journal::Location;
use longrun_host::model::ModelSpec;
use longrun_host::policy::{ByteSize, HumanDuration};
use serde::Deserialize;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// One tenant: who presents which token.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub token: String,
    /// May this tenant's sessions bring a policy of their own? An inline
    /// policy can mount host directories, so only a trusted tenant may.
    pub inline_policies: bool,
}

/// Limits on each HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// How long a request (but an event stream) may take, headers included.
    pub request_timeout: Duration,
    /// How long a shutdown waits for sessions to reach a step boundary.
    pub shutdown_grace: Duration,
    /// How long a client has to send a request's head, and so also how long
    /// a kept-alive connection may sit idle before it is closed.
    pub header_timeout: Duration,
    /// Connections served at once, in all; more are shed (see
    /// [`crate::admission`]).
    pub max_connections: usize,
    /// Connections served at once from one peer address.
    pub max_connections_per_peer: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body: 1 << 20,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_peer: 256,
        }
    }
}

/// The configuration, checked and with paths resolved.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The journal: `journal` (a directory, resolved) or `store` (a
    /// database).
    pub journal: Location,
    pub tools_dir: Option<PathBuf>,
    pub models: BTreeMap<String, ModelSpec>,
    pub default_model: String,
    /// Policy files by name.
    pub policies: BTreeMap<String, PathBuf>,
    pub default_policy: String,
    pub tenants: Vec<Tenant>,
    pub http: HttpLimits,
    /// How many tool calls may run at once (the sandbox's instance pool).
    pub max_concurrent_calls: u32,
    /// Where relative paths of an inline policy are resolved.
    pub base_dir: PathBuf,
    /// With a shared store: this host's name and the sessions' lease.
    pub cluster: Option<Cluster>,
}

/// How a host shares a store with others: each unfinished session is
/// leased to one host, which renews the lease at a third of its length;
/// a session whose lease lapses is taken over by another host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// This host's name, unique among the hosts sharing the store.
    pub host: String,
    pub lease: Duration,
}

impl Cluster {
    /// The default lease: long enough that a busy database or a garbage
    /// collection pause does not move sessions, short enough that a dead
    /// host's sessions wait seconds, not minutes.
    pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

    /// A host name for a host that was given none: the machine's name and
    /// the process id, so that a restarted process is a new owner.
    fn default_host() -> String {
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        format!("{machine}-{}", std::process::id())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    journal: Option<PathBuf>,
    store: Option<String>,
    tools_dir: Option<PathBuf>,
    #[serde(default)]
    models: BTreeMap<String, String>,
    default_model: Option<String>,
    #[serde(default)]
    policies: BTreeMap<String, PathBuf>,
    default_policy: Option<String>,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    sandbox: RawSandbox,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    host: Option<String>,
    lease: Option<HumanDuration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    max_concurrent_calls: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    token: Option<String>,
    token_env: Option<String>,
    #[serde(default)]
    inline_policies: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_body: Option<ByteSize>,
    request_timeout: Option<HumanDuration>,
    shutdown_grace: Option<HumanDuration>,
    header_timeout: Option<HumanDuration>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        ServerConfig::parse(&text, &file, &base)
    }

    /// Parse a configuration; relative paths are taken from `base`.
    pub fn parse(text: &str, file: &str, base: &Path) -> Result<ServerConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            file: file.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let journal = match (raw.journal, raw.store) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "journal and store: name one (a directory, or a postgres:// database)".into(),
                ));
            }
            (None, Some(store)) => match store.parse::<Location>() {
                Ok(location @ Location::Postgres(_)) => location,
                Ok(_) => {
                    return Err(invalid(
                        "store: a postgres:// address (a directory is `journal`)".into(),
                    ));
                }
                Err(e) => return Err(invalid(format!("store: {e}"))),
            },
            (dir, None) => {
                Location::Dir(base.join(dir.unwrap_or_else(|| ".longrun/journal".into())))
            }
        };
        let listen = raw
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .map_err(|e| invalid(format!("listen: {e} (write an address and port)")))?;
        let mut models = BTreeMap::new();
        for (name, spec) in raw.models {
            let spec =
                ModelSpec::parse(&spec).map_err(|e| invalid(format!("models.{name}: {e}")))?;
            let spec = match spec {
                ModelSpec::Scripted(path) => ModelSpec::Scripted(base.join(path)),
                other => other,
            };
            models.insert(name, spec);
        }
        let default_model = match raw.default_model {
            Some(name) => name,
            None => models
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| invalid("no [models]: name at least one".into()))?,
        };
        if !models.contains_key(&default_model) {
            return Err(invalid(format!(
                "default_model {default_model:?} is not in [models]"
            )));
        }
        let policies: BTreeMap<String, PathBuf> = raw
            .policies
            .into_iter()
            .map(|(name, path)| (name, base.join(path)))
            .collect();
        let default_policy = match raw.default_policy {
            Some(name) => name,
            None => policies
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| invalid("no [policies]: name at least one".into()))?,
        };
        if !policies.contains_key(&default_policy) {
            return Err(invalid(format!(
                "default_policy {default_policy:?} is not in [policies]"
            )));
        }
        let mut tenants = Vec::new();
        for (name, t) in raw.tenants {
            let token = match (t.token, t.token_env) {
                (Some(token), None) => token,
                (None, Some(var)) => std::env::var(&var).map_err(|_| {
                    invalid(format!(
                        "tenants.{name}.token_env: the environment variable {var} is not set"
                    ))
                })?,
                _ => {
                    return Err(invalid(format!(
                        "tenants.{name}: give exactly one of token or token_env"
                    )));
                }
            };
            if token.len() < 16 {
                return Err(invalid(format!(
                    "tenants.{name}: the token is shorter than 16 characters"
                )));
            }
            if tenants.iter().any(|other: &Tenant| other.token == token) {
                return Err(invalid(format!(
                    "tenants.{name}: the same token belongs to another tenant"
                )));
            }
            tenants.push(Tenant {
                name,
                token,
                inline_policies: t.inline_policies,
            });
        }
        if tenants.is_empty() {
            return Err(invalid("no [tenants]: name at least one".into()));
        }
        let defaults = HttpLimits::default();
        let at_least_one = |key: &str, n: Option<usize>, default: usize| match n {
            Some(0) => Err(invalid(format!("{key}: must be at least 1"))),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_connections = at_least_one(
            "http.max_connections",
            raw.http.max_connections,
            defaults.max_connections,
        )?;
        let max_connections_per_peer = at_least_one(
            "http.max_connections_per_peer",
            raw.http.max_connections_per_peer,
            defaults.max_connections_per_peer,
        )?;
        let max_concurrent_calls = match raw.sandbox.max_concurrent_calls {
            Some(0) => {
                return Err(invalid(
                    "sandbox.max_concurrent_calls: must be at least 1".into(),
                ));
            }
            Some(n) => n,
            None => longrun_host::sandbox::SandboxConfig::default().max_concurrent_calls,
        };
        let cluster = match (&journal, raw.cluster) {
            (Location::Postgres(_), cluster) => {
                let cluster = cluster.unwrap_or_default();
                let host = cluster.host.unwrap_or_else(Cluster::default_host);
                if host.trim().is_empty() || host.len() > 200 {
                    return Err(invalid(
                        "cluster.host: a name of 1 to 200 characters".into(),
                    ));
                }
                let lease = cluster.lease.map_or(Cluster::DEFAULT_LEASE, |d| d.0);
                if lease < Duration::from_millis(300) {
                    return Err(invalid("cluster.lease: at least 300ms".into()));
                }
                Some(Cluster { host, lease })
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "[cluster]: only with a shared `store` (a journal directory has one host)"
                        .into(),
                ));
            }
            (_, None) => None,
        };
        let max_body = raw.http.max_body.map_or(defaults.max_body, |s| {
            usize::try_from(s.0).unwrap_or(usize::MAX)
        });
        Ok(ServerConfig {
            listen,
            journal,
            cluster,
            tools_dir: raw.tools_dir.map(|d| base.join(d)),
            models,
            default_model,
            policies,
            default_policy,
            tenants,
            http: HttpLimits {
                max_body,
                request_timeout: raw
                    .http
                    .request_timeout
                    .map_or(defaults.request_timeout, |d| d.0),
                shutdown_grace: raw
                    .http
                    .shutdown_grace
                    .map_or(defaults.shutdown_grace, |d| d.0),
                header_timeout: raw
                    .http
                    .header_timeout
                    .map_or(defaults.header_timeout, |d| d.0),
                max_connections,
                max_connections_per_peer,
            },
            max_concurrent_calls,
            base_dir: base.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[models]\ns = \"scripted:s.jsonl\"\n[policies]\nd = \"d.toml\"\n[tenants.a]\ntoken = \"0123456789abcdef\"\n";

    fn parse(extra: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(&format!("{BASE}{extra}"), "server.toml", Path::new("/srv"))
    }

    #[test]
    fn connection_caps_timeouts_and_the_pool_size_are_read_and_zero_is_refused() {
        let config = parse(
            "[http]\nmax_connections = 9\nmax_connections_per_peer = 3\nheader_timeout = \"2s\"\n[sandbox]\nmax_concurrent_calls = 5\n",
        )
        .unwrap();
        assert_eq!(config.http.max_connections, 9);
        assert_eq!(config.http.max_connections_per_peer, 3);
        assert_eq!(config.http.header_timeout, Duration::from_secs(2));
        assert_eq!(config.max_concurrent_calls, 5);
        let defaults = parse("").unwrap();
        assert_eq!(defaults.http.max_connections, 1024);
        assert_eq!(defaults.max_concurrent_calls, 32);
        for zero in [
            "[http]\nmax_connections = 0\n",
            "[http]\nmax_connections_per_peer = 0\n",
            "[sandbox]\nmax_concurrent_calls = 0\n",
        ] {
            let refused = parse(zero).expect_err("zero is refused").to_string();
            assert!(refused.contains("must be at least 1"), "{refused}");
        }
    }

    #[test]
    fn the_journal_is_a_directory_or_a_postgres_store_but_not_both() {
        let with = |top: &str| {
            ServerConfig::parse(&format!("{top}{BASE}"), "server.toml", Path::new("/srv"))
        };
        assert_eq!(
            with("").unwrap().journal,
            Location::Dir("/srv/.longrun/journal".into())
        );
        assert_eq!(
            with("journal = \"j\"\n").unwrap().journal,
            Location::Dir("/srv/j".into())
        );
        assert_eq!(
            with("store = \"postgres://longrun@db:5432/journal\"\n")
                .unwrap()
                .journal,
            Location::Postgres("postgres://longrun@db:5432/journal".into())
        );
        for (top, says) in [
            ("journal = \"j\"\nstore = \"postgres://db/j\"\n", "name one"),
            ("store = \"sled:/var/j\"\n", "postgres://"),
            ("store = \"mysql://db/j\"\n", "unknown journal store"),
        ] {
            let refused = with(top).expect_err(top).to_string();
            assert!(refused.contains(says), "{top}: {refused}");
        }
    }

    #[test]
    fn a_cluster_is_a_shared_store_with_a_host_name_and_a_lease() {
        const STORE: &str = "store = \"postgres://db/j\"\n";
        let with = |top: &str, cluster: &str| {
            ServerConfig::parse(
                &format!("{top}{BASE}{cluster}"),
                "server.toml",
                Path::new("/srv"),
            )
        };
        let config = with(STORE, "[cluster]\nhost = \"h1\"\nlease = \"2s\"\n").unwrap();
        assert_eq!(
            config.cluster,
            Some(Cluster {
                host: "h1".into(),
                lease: Duration::from_secs(2),
            })
        );
        // A shared store is always a cluster, of one host at least.
        let defaults = with(STORE, "").unwrap().cluster.unwrap();
        assert_eq!(defaults.lease, Cluster::DEFAULT_LEASE);
        assert!(defaults.host.ends_with(&format!("-{}", std::process::id())));
        assert_eq!(with("", "").unwrap().cluster, None);
        for (top, cluster, says) in [
            (
                "",
                "[cluster]\nhost = \"h1\"\n",
                "only with a shared `store`",
            ),
            (STORE, "[cluster]\nlease = \"100ms\"\n", "at least 300ms"),
            (STORE, "[cluster]\nhost = \"\"\n", "1 to 200 characters"),
            (STORE, "[cluster]\nleases = \"1s\"\n", "unknown field"),
        ] {
            let refused = with(top, cluster).expect_err(cluster).to_string();
            assert!(refused.contains(says), "{cluster}: {refused}");
        }
    }
}
