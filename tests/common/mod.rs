//! Shared set-up for the system tests: where the tool components are, a
//! host to run them in, and a small HTTP server on loopback.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use longrun_host::policy::Policy;
use longrun_host::sandbox::{CallReport, CallRequest, Sandbox, SandboxConfig, Toolbox};

pub mod tamper;

/// `target/longrun-tools`, as `scripts/build-tools` lays it out.
pub fn builtin_tools_dir() -> PathBuf {
    longrun_host::tooldir::builtin_tools_dir()
        .expect("built-in tool components not found: run scripts/build-tools first")
}

/// `target/longrun-test-tools` (the hostile tool).
pub fn test_tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LONGRUN_TEST_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    builtin_tools_dir()
        .parent()
        .expect("tools dir has a parent")
        .join("longrun-test-tools")
}

fn components_in(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    paths.sort();
    paths
}

static BUILTIN: tokio::sync::OnceCell<Toolbox> = tokio::sync::OnceCell::const_new();
static WITH_HOSTILE: tokio::sync::OnceCell<Toolbox> = tokio::sync::OnceCell::const_new();

/// One host per test binary, shared by its tests (which also shows that
/// calls of many tests, run side by side, do not disturb each other).
pub async fn shared_toolbox(with_hostile: bool) -> &'static Toolbox {
    let cell = if with_hostile {
        &WITH_HOSTILE
    } else {
        &BUILTIN
    };
    cell.get_or_init(|| toolbox(with_hostile)).await
}

/// A toolbox with the built-in tools, and the hostile tool if asked.
pub async fn toolbox(with_hostile: bool) -> Toolbox {
    let mut paths = components_in(&builtin_tools_dir());
    if with_hostile {
        paths.extend(components_in(&test_tools_dir()));
    }
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("engine"));
    Toolbox::load(sandbox, &paths).await.expect("tools load")
}

pub fn policy(text: &str) -> Policy {
    Policy::parse(text, "test-policy.toml", Path::new("/")).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn call(toolbox: &Toolbox, policy: &Policy, tool: &str, args: &str) -> CallReport {
    toolbox
        .call(
            policy,
            &CallRequest {
                tool,
                args,
                approved: false,
            },
        )
        .await
}

/// A loopback HTTP server (hyper) answering:
/// `/ok` → 200 "fine"; `/redirect?to=URL` → 302 to URL; `/echo` → the
/// request's method and body. Returns its address; it runs until the test's
/// runtime ends.
pub async fn http_server() -> SocketAddr {
    serve(handle).await
}

/// Serve HTTP/1 on a loopback port with `handler`, one task per connection,
/// until the test's runtime ends. Returns the address.
pub async fn serve<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(handler);
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let method = req.method().to_string();
    let response = match path.as_str() {
        "/ok" => Response::new(Full::new(Bytes::from_static(b"fine"))),
        "/redirect" => {
            let to = query.strip_prefix("to=").unwrap_or("/ok").to_owned();
            Response::builder()
                .status(302)
                .header("location", to)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        "/echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut text = format!("{method} ").into_bytes();
            text.extend_from_slice(&body);
            Response::new(Full::new(Bytes::from(text)))
        }
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not found")))
            .unwrap(),
    };
    Ok(response)
}

/// An HTTP/1 client connection to `addr` on loopback.
pub async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// Start a server process that announces itself with a first line
/// `listening on URL` on stdout; the process and its URL.
pub fn spawn_listening(command: &mut std::process::Command) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, url)
}

/// The bearer token of the one tenant of [`serve_scripted`]'s servers.
pub const TOKEN: &str = "acme-token-0123456789";

/// A `longrun serve` process in a directory of its own; stopped (SIGTERM,
/// then waited for) when dropped.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// What runs before `longrun serve` in its shell (the limits).
    prelude: String,
}

impl ServerProcess {
    /// Kill the server with SIGKILL, as a crash would, and start it again
    /// on the same directory (and journal); it listens on a new port.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, addr) = spawn_serve(self.dir.path(), &self.prelude);
        self.child = child;
        self.addr = addr;
    }

    /// SIGTERM, and wait for the graceful shutdown.
    pub fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `longrun serve` on a loopback port with the scripted model running
/// `script`, one policy (`fs_*` over a read-only `/workspace` holding
/// `hello.txt`), one tenant ([`TOKEN`]), `http` and `sandbox` lines added to
/// those sections of its configuration, and, when given, an open-file
/// limit (soft and hard) set before it starts.
pub fn serve_scripted(
    script: &str,
    http: &str,
    sandbox: &str,
    nofile: Option<u64>,
) -> ServerProcess {
    serve_scripted_on(script, http, sandbox, nofile, Path::new("journal"))
}

/// [`serve_scripted`] with its journal in `journal` (relative to the
/// server's directory, or absolute).
pub fn serve_scripted_on(
    script: &str,
    http: &str,
    sandbox: &str,
    nofile: Option<u64>,
    journal: &Path,
) -> ServerProcess {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir(p.join("ws")).unwrap();
    std::fs::write(p.join("ws/hello.txt"), "hello").unwrap();
    std::fs::write(p.join("script.jsonl"), script).unwrap();
    std::fs::write(
        p.join("default.toml"),
        "[tools]\nallow = [\"fs_*\"]\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-only\"\n",
    )
    .unwrap();
    std::fs::write(
        p.join("server.toml"),
        format!(
            "journal = {journal:?}\n[models]\nscripted = \"scripted:script.jsonl\"\n[policies]\ndefault = \"default.toml\"\n[tenants.acme]\ntoken = \"{TOKEN}\"\n[http]\n{http}\n[sandbox]\n{sandbox}\n"
        ),
    )
    .unwrap();
    let prelude = nofile
        .map(|n| format!("ulimit -Sn {n} && ulimit -Hn {n} && "))
        .unwrap_or_default();
    let (child, addr) = spawn_serve(p, &prelude);
    ServerProcess {
        child,
        addr,
        dir,
        prelude,
    }
}

/// `longrun serve` on the configuration in `dir`, after `prelude` in its
/// shell; the process and where it listens.
fn spawn_serve(dir: &Path, prelude: &str) -> (std::process::Child, SocketAddr) {
    let (child, url) = spawn_listening(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{prelude}exec \"$0\" serve --config \"$1\" --listen 127.0.0.1:0 --tools-dir \"$2\""
            ))
            .arg(env!("CARGO_BIN_EXE_longrun"))
            .arg(dir.join("server.toml"))
            .arg(builtin_tools_dir()),
    );
    (child, url.strip_prefix("http://").unwrap().parse().unwrap())
}

/// A small deterministic generator for fault tests, seeded from `var` when
/// it is set (so that a failure can be replayed) and from the clock
/// otherwise; the seed is printed.
pub struct Rng(u64);

impl Rng {
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("{var}={seed}");
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `longrun replay verify --all` on the journal `location` names (`--journal
/// DIR` or `--store URL`), which must pass.
pub fn replay_verify_all(location: &[&std::ffi::OsStr]) {
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_longrun"))
        .args(["replay", "verify", "--all"])
        .args(location)
        .output()
        .unwrap();
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}
