//! A private PostgreSQL cluster for tests: the server binaries of the
//! system's PostgreSQL packages (Debian's `postgresql`, which
//! `scripts/test-deps` installs), a cluster made by `initdb` in a temporary
//! directory, run as an unprivileged user (PostgreSQL refuses to run as
//! root, so under root the cluster belongs to `nobody`) on a free loopback
//! port, with no Unix socket, and removed when the [`Cluster`] is dropped.
//!
//! Never a mock: the tests that use it speak the real protocol to a real
//! server, which they can also crash ([`Cluster::crash`]) and restart.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The unprivileged user a cluster runs as when the tests run as root.
const NOBODY: (u32, u32) = (65534, 65534);

/// What went wrong setting a cluster up, with what to do about it.
pub type Error = String;

pub struct Cluster {
    bin: PathBuf,
    /// The superuser, a name of this cluster's own: a client that reaches
    /// another test's cluster (one that took this one's port after a
    /// crash) is refused there rather than served.
    user: String,
    data: PathBuf,
    port: u16,
    server: Option<Child>,
    log: PathBuf,
    /// Removed last: the server's files live in it.
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Make a cluster and start its server.
    pub fn start() -> Result<Cluster, Error> {
        let bin = server_binaries()?;
        let dir = tempfile::Builder::new()
            .prefix("longrun-pg-")
            .tempdir()
            .map_err(|e| format!("a directory for the cluster: {e}"))?;
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        std::fs::create_dir(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        if is_root() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dir.path().display()))?;
            for path in [&data, dir.path()] {
                std::os::unix::fs::chown(path, Some(NOBODY.0), Some(NOBODY.1))
                    .map_err(|e| format!("giving {} to nobody: {e}", path.display()))?;
            }
        }
        static CLUSTERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let user = format!(
            "longrun_{}_{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let initdb = unprivileged(Command::new(bin.join("initdb")))
            .arg("-D")
            .arg(&data)
            .args(["-U", &user, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        check("initdb", &initdb)?;
        let mut cluster = Cluster {
            bin,
            user,
            data,
            port: free_port()?,
            server: None,
            log,
            _dir: dir,
        };
        cluster.serve(PortTaken::PickAnother)?;
        Ok(cluster)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", self.user, self.port)
    }

    /// A new, empty database.
    pub fn create_database(&self, db: &str) -> Result<String, Error> {
        self.psql("postgres", &format!("CREATE DATABASE \"{db}\""))?;
        Ok(self.url(db))
    }

    /// Run `sql` in database `db` with `psql`, and give back what it printed
    /// (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let output = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", &self.user, "-p"])
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .output()
            .map_err(|e| format!("running psql: {e}"))?;
        check("psql", &output)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Kill the server at once (SIGKILL to the postmaster and every backend,
    /// as a machine losing power would stop them): nothing is shut down
    /// cleanly, and what was committed must come back on restart.
    pub fn crash(&mut self) {
        if let Some(mut server) = self.server.take() {
            let postmaster = server.id();
            // Every child of the postmaster makes itself a session of its
            // own (postgres calls setsid() in each), so killing the
            // postmaster's process group leaves the backends running: a
            // client's next commit could still succeed on its connection
            // (a flake once). So the postmaster is frozen first, forking no
            // more, and killed with each child it has.
            signal("-STOP", &[postmaster]);
            let mut doomed = children_of(postmaster);
            doomed.push(postmaster);
            signal("-KILL", &doomed);
            let _ = server.kill();
            let _ = server.wait();
            // The backends now belong to init, which reaps them when it
            // will: a zombie holds no socket and no shared memory.
            let deadline = Instant::now() + Duration::from_secs(10);
            while doomed.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Start the server (again, after [`Cluster::crash`]) and wait until it
    /// takes connections.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.serve(PortTaken::Wait)
    }

    fn serve(&mut self, port_taken: PortTaken) -> Result<(), Error> {
        let log = std::fs::File::create(&self.log).map_err(|e| format!("server log: {e}"))?;
        if is_root() {
            let _ = std::os::unix::fs::chown(&self.log, Some(NOBODY.0), Some(NOBODY.1));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = log.try_clone().map_err(|e| format!("server log: {e}"))?;
            let mut server = unprivileged(Command::new(self.bin.join("postgres")))
                .arg("-D")
                .arg(&self.data)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                ])
                .args(["-c", "max_connections=200", "-c", "fsync=on"])
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("starting postgres: {e}"))?;
            match self.wait_ready(&mut server, deadline) {
                Ok(()) => {
                    self.server = Some(server);
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    let _ = server.kill();
                    let _ = server.wait();
                    // Another cluster starting beside this one may have been
                    // handed the same free port: a new cluster moves on
                    // rather than wait, and perhaps take that cluster's
                    // port once it crashes. A restarted one keeps its
                    // address.
                    if port_taken == PortTaken::PickAnother {
                        self.port = free_port()?;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_ready(&self, server: &mut Child, deadline: Instant) -> Result<(), Error> {
        loop {
            if let Ok(Some(status)) = server.try_wait() {
                return Err(format!(
                    "postgres exited ({status}): {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not take connections within a minute: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The data directory, for tests that damage it.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut server) = self.server.take() {
            // SIGQUIT: immediate shutdown, nothing to keep.
            let _ = Command::new("kill")
                .args(["-QUIT", &server.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// What a server that does not come up on its port does next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PortTaken {
    PickAnother,
    Wait,
}

/// The newest PostgreSQL server binaries installed (`/usr/lib/postgresql/N/bin`).
fn server_binaries() -> Result<PathBuf, Error> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        "no PostgreSQL server found under /usr/lib/postgresql: run scripts/test-deps \
         (it installs Debian's postgresql package)"
            .into()
    })
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// `command`, run as `nobody` when the tests run as root.
/// Send `signal` (`-KILL`, `-STOP`) to each of `pids`.
fn signal(signal: &str, pids: &[u32]) {
    let _ = Command::new("kill")
        .arg(signal)
        .arg("--")
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// The processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// A process's state and parent, from `/proc/PID/stat` (after the command
/// name, which may hold spaces and parentheses: the last `)` ends it).
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = text[text.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let parent = rest.next()?.parse().ok()?;
    Some((state, parent))
}

fn unprivileged(mut command: Command) -> Command {
    if is_root() {
        command.uid(NOBODY.0).gid(NOBODY.1);
        command.env("HOME", "/tmp");
    }
    command
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("a free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("a free loopback port: {e}"))
}

fn check(what: &str, output: &Output) -> Result<(), Error> {
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
