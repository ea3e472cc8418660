//! The hostile-tool suite: a tool built with the SDK tries to escape its
//! sandbox in every way we know of. Each test asserts the specific refusal,
//! that nothing leaked, and that the host is still healthy afterwards (the
//! next call of a well-behaved tool succeeds in the same host).

mod common;

use std::net::SocketAddr;
use std::path::Path;

use longrun_host::policy::Policy;
use longrun_host::sandbox::{CallError, CallReport, CallRequest, Toolbox};

const SECRET: &str = "TOP-SECRET-HOST-DATA";

async fn host() -> &'static Toolbox {
    common::shared_toolbox(true).await
}

/// A workspace (read-write), a read-only mount, a secret file beside them
/// (outside every mount), symlinks that point out, and a loopback server
/// that the policy names by IP literal.
struct Fixture {
    dir: tempfile::TempDir,
    policy: Policy,
    server: SocketAddr,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_extra_policy("").await
    }

    async fn with_extra_policy(extra_tools: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("workspace")).unwrap();
        std::fs::create_dir(root.join("readonly")).unwrap();
        std::fs::write(root.join("readonly/data.txt"), "read me").unwrap();
        std::fs::write(root.join("secret.txt"), SECRET).unwrap();
        std::os::unix::fs::symlink("../secret.txt", root.join("workspace/link_out")).unwrap();
        std::os::unix::fs::symlink(root.join("secret.txt"), root.join("workspace/link_abs"))
            .unwrap();
        let server = common::http_server().await;
        let port = server.port();
        let text = format!(
            r#"
[limits]
timeout = "2s"
memory = "64MiB"
max_output = "1MiB"
max_args = "16KiB"
max_log = "16KiB"

[[filesystem]]
host = "{root}/workspace"
guest = "/workspace"
access = "read-write"

[[filesystem]]
host = "{root}/readonly"
guest = "/readonly"
access = "read-only"

[network]
allow = ["127.0.0.1:{port}", "localhost:{port}"]

[tools]
allow = ["evil_*", "echo"{extra_tools}]
approve = ["word_count"]
"#,
            root = root.display()
        );
        Fixture {
            policy: common::policy(&text),
            dir,
            server,
        }
    }

    async fn attack(&self, tool: &str, args: &str) -> CallReport {
        let report = common::call(host().await, &self.policy, tool, args).await;
        self.assert_healthy().await;
        report
    }

    /// The same host runs a well-behaved tool right after the attack.
    async fn assert_healthy(&self) {
        let report = common::call(
            host().await,
            &self.policy,
            "echo",
            r#"{"text":"still here"}"#,
        )
        .await;
        assert_eq!(report.outcome, Ok(r#"{"text":"still here"}"#.to_owned()));
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

fn refused(report: &CallReport) -> &CallError {
    match &report.outcome {
        Ok(output) => panic!("the attack succeeded: {output}"),
        Err(e) => e,
    }
}

/// A refusal from the sandbox's filesystem, reported by the tool as an
/// I/O error, with no secret in it.
fn assert_fs_refusal(report: &CallReport, expected: &[&str]) {
    let error = refused(report).to_string();
    assert!(!error.contains(SECRET), "secret leaked: {error}");
    assert!(
        expected.iter().any(|e| error.contains(e)),
        "expected one of {expected:?}, got: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dotdot_traversal_out_of_a_mount_is_refused() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_read", r#"{"path":"/workspace/../secret.txt"}"#)
        .await;
    assert_fs_refusal(&report, &["denied: Operation not permitted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_host_path_outside_every_mount_is_not_found() {
    let f = Fixture::new().await;
    let path = f.root().join("secret.txt");
    let report = f
        .attack("evil_read", &format!(r#"{{"path":"{}"}}"#, path.display()))
        .await;
    assert_fs_refusal(&report, &["reported failure: No such file or directory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_etc_passwd_is_not_found() {
    let f = Fixture::new().await;
    let report = f.attack("evil_read", r#"{"path":"/etc/passwd"}"#).await;
    assert_fs_refusal(&report, &["reported failure: No such file or directory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_symlink_out_of_a_mount_is_refused() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_read", r#"{"path":"/workspace/link_out"}"#)
        .await;
    assert_fs_refusal(&report, &["denied: Operation not permitted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_symlink_out_of_a_mount_is_refused() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_read", r#"{"path":"/workspace/link_abs"}"#)
        .await;
    assert_fs_refusal(&report, &["denied: Operation not permitted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_into_a_read_only_mount_is_denied() {
    let f = Fixture::new().await;
    let report = f
        .attack(
            "evil_write",
            r#"{"path":"/readonly/data.txt","content":"overwritten"}"#,
        )
        .await;
    assert_fs_refusal(&report, &["denied:"]);
    assert_eq!(
        std::fs::read_to_string(f.root().join("readonly/data.txt")).unwrap(),
        "read me"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_directory_in_a_read_only_mount_is_denied() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_mkdir", r#"{"path":"/readonly/newdir"}"#)
        .await;
    assert_fs_refusal(&report, &["denied:"]);
    assert!(!f.root().join("readonly/newdir").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proc_self_environ_is_not_reachable() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_read", r#"{"path":"/proc/self/environ"}"#)
        .await;
    assert_fs_refusal(&report, &["reported failure: No such file or directory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_devices_are_not_reachable() {
    let f = Fixture::new().await;
    let report = f.attack("evil_read", r#"{"path":"/dev/urandom"}"#).await;
    assert_fs_refusal(&report, &["reported failure: No such file or directory"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_and_arguments_are_empty() {
    // SAFETY: set before any tool call reads the host environment; the
    // tests that run beside this one never read this variable.
    unsafe { std::env::set_var("LONGRUN_TEST_HOST_SECRET", SECRET) };
    let f = Fixture::new().await;
    let report = f.attack("evil_env", "{}").await;
    assert_eq!(
        report.outcome,
        Ok(r#"{"text":"vars=[] args=[]"}"#.to_owned())
    );
}

/// An HTTP attack, refused by the network gate with `code`; the gate's own
/// record names why.
async fn assert_http_refused(f: &Fixture, url: &str, code: &str, why: &str) {
    // Never let a broken gate send traffic off this machine: ask the gate
    // first, and only let the tool try what the gate refuses.
    let uri: hyper::Uri = url.parse().unwrap();
    let verdict = longrun_host::netgate::would_allow(&f.policy.network.allow, &uri).await;
    assert!(
        verdict.is_err(),
        "the gate would let {url} out; not sending it"
    );
    let report = f
        .attack("evil_http", &format!(r#"{{"url":"{url}"}}"#))
        .await;
    let error = refused(&report).to_string();
    assert!(error.contains(code), "expected {code}, got: {error}");
    assert!(
        report.log.net_denials.iter().any(|d| d.contains(why)),
        "expected a denial saying {why:?}, got {:?}",
        report.log.net_denials
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_a_host_not_on_the_allow_list_is_denied() {
    let f = Fixture::new().await;
    assert_http_refused(
        &f,
        "https://example.com/",
        "HttpRequestDenied",
        "example.com:443 is not in",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_loopback_on_another_port_is_denied() {
    let f = Fixture::new().await;
    let url = format!("http://127.0.0.1:{}/ok", f.server.port() + 1);
    assert_http_refused(&f, &url, "HttpRequestDenied", "is not in the policy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_ipv6_loopback_is_denied() {
    let f = Fixture::new().await;
    let url = format!("http://[::1]:{}/ok", f.server.port());
    assert_http_refused(&f, &url, "HttpRequestDenied", "::1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_a_private_10_network_address_is_denied() {
    let f = Fixture::new().await;
    assert_http_refused(&f, "http://10.0.0.1/", "HttpRequestDenied", "10.0.0.1:80").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_the_cloud_metadata_address_is_denied() {
    let f = Fixture::new().await;
    assert_http_refused(
        &f,
        "http://169.254.169.254/latest/meta-data/",
        "HttpRequestDenied",
        "169.254.169.254:80",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_that_resolves_to_loopback_is_prohibited() {
    // `localhost:PORT` is on the allow-list by name, but names never reach
    // loopback addresses: only the IP literal entry could.
    let f = Fixture::new().await;
    let url = format!("http://localhost:{}/ok", f.server.port());
    assert_http_refused(
        &f,
        &url,
        "DestinationIpProhibited",
        "loopback, private or link-local",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowed_loopback_literal_is_reachable() {
    // The control for the tests above: the server is there and the
    // allow-list entry that names it works.
    let f = Fixture::new().await;
    let url = format!("http://127.0.0.1:{}/ok", f.server.port());
    let report = f
        .attack("evil_http", &format!(r#"{{"url":"{url}"}}"#))
        .await;
    assert_eq!(report.outcome, Ok(r#"{"text":"200 fine"}"#.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_forbidden_host_is_denied_at_the_redirect() {
    let f = Fixture::new().await;
    let port = f.server.port();
    // 127.0.0.2 is loopback too, but the policy names only 127.0.0.1.
    let url = format!("http://127.0.0.1:{port}/redirect?to=http://127.0.0.2:{port}/ok");
    let report = f
        .attack("evil_http", &format!(r#"{{"url":"{url}","follow":true}}"#))
        .await;
    let error = refused(&report).to_string();
    assert!(error.contains("HttpRequestDenied"), "got: {error}");
    assert_eq!(
        report.log.net_denials.len(),
        1,
        "{:?}",
        report.log.net_denials
    );
    assert!(report.log.net_denials[0].contains(&format!("127.0.0.2:{port}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_sockets_are_refused() {
    let f = Fixture::new().await;
    let report = f
        .attack("evil_tcp", &format!(r#"{{"addr":"{}"}}"#, f.server))
        .await;
    let error = refused(&report).to_string();
    assert!(error.contains("denied: Permission denied"), "got: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_stopped_at_the_timeout() {
    let f = Fixture::new().await;
    let report = f.attack("evil_spin", "{}").await;
    assert_eq!(
        report.outcome,
        Err(CallError::Timeout(std::time::Duration::from_secs(2)))
    );
    assert!(report.elapsed < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_in_a_host_call_is_stopped_at_the_timeout() {
    let f = Fixture::new().await;
    let report = f.attack("evil_sleep", r#"{"ms":600000}"#).await;
    assert_eq!(
        report.outcome,
        Err(CallError::Timeout(std::time::Duration::from_secs(2)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_hits_the_memory_limit() {
    let f = Fixture::new().await;
    let report = f.attack("evil_alloc", r#"{"mib":1024}"#).await;
    assert_eq!(
        report.outcome,
        Err(CallError::MemoryLimit { limit: 64 << 20 })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_on_the_shadow_stack_runs_out_of_memory_bounds() {
    // Rust keeps large frames in linear memory, below its data; overflowing
    // that stack walks off address 0, which wasm refuses.
    let f = Fixture::new().await;
    let report = f.attack("evil_recurse", "{}").await;
    assert_eq!(
        report.outcome,
        Err(CallError::Crashed(
            "wasm trap: out of bounds memory access".into()
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_on_the_wasm_stack_is_a_stack_overflow() {
    let f = Fixture::new().await;
    let report = f.attack("evil_recurse_native", "{}").await;
    assert_eq!(
        report.outcome,
        Err(CallError::Crashed("stack overflow".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_stdout_flood_is_cut_at_max_log_and_counted() {
    let f = Fixture::new().await;
    let report = f.attack("evil_flood", r#"{"mib":8}"#).await;
    assert_eq!(report.outcome, Ok(r#"{"text":"flooded"}"#.to_owned()));
    assert_eq!(report.log.stdout.len(), 16 << 10);
    assert_eq!(report.log.stdout_dropped, (8 << 20) - (16 << 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_result_is_refused_over_max_output() {
    let f = Fixture::new().await;
    let report = f.attack("evil_output", r#"{"mib":2}"#).await;
    match refused(&report) {
        CallError::OutputTooLarge { size, limit } => {
            assert!(*size > 2 << 20);
            assert_eq!(*limit, 1 << 20);
        }
        other => panic!("expected OutputTooLarge, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_reported_as_a_crash_with_its_message() {
    let f = Fixture::new().await;
    let report = f.attack("evil_panic", "{}").await;
    let error = refused(&report).to_string();
    assert!(error.starts_with("tool crashed:"), "got: {error}");
    assert!(
        report
            .log
            .stderr
            .contains("hostile tool panicked on purpose")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_is_reported_as_a_crash() {
    let f = Fixture::new().await;
    let report = f.attack("evil_trap", "{}").await;
    let error = refused(&report).to_string();
    assert!(
        error.contains("wasm `unreachable` instruction executed"),
        "got: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_violate_the_schema_never_reach_the_tool() {
    let f = Fixture::new().await;
    for (args, expected) in [
        (r#"{"count":300}"#, "at /count"),
        (r#"{"count":"many"}"#, "at /count"),
        (r#"{}"#, "\"count\" is a required property"),
        (
            r#"{"count":1,"extra":true}"#,
            "Additional properties are not allowed",
        ),
    ] {
        let report = f.attack("evil_strict", args).await;
        match refused(&report) {
            CallError::SchemaViolation { tool, errors } => {
                assert_eq!(tool, "evil_strict");
                assert!(
                    errors.iter().any(|e| e.contains(expected)),
                    "{args}: {errors:?}"
                );
            }
            other => panic!("{args}: expected a schema violation, got {other}"),
        }
        assert!(report.log.stdout.is_empty() && report.log.stderr.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_that_are_not_json_are_refused() {
    let f = Fixture::new().await;
    let report = f.attack("evil_strict", "{count: 1").await;
    assert!(matches!(refused(&report), CallError::ArgsNotJson(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_arguments_are_refused_before_parsing() {
    let f = Fixture::new().await;
    let args = format!(r#"{{"path":"{}"}}"#, "a".repeat(20 << 10));
    let report = f.attack("evil_read", &args).await;
    assert_eq!(
        report.outcome,
        Err(CallError::ArgsTooLarge {
            size: args.len() as u64,
            limit: 16 << 10
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_outside_the_allow_list_is_refused_by_policy() {
    let f = Fixture::new().await;
    let report = f.attack("fs_read", r#"{"path":"/workspace/x"}"#).await;
    assert!(matches!(refused(&report), CallError::PolicyDenied(why) if why.contains("fs_read")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_needs_approval_does_not_run_without_it() {
    let f = Fixture::with_extra_policy(r#", "word_count""#).await;
    let report = f.attack("word_count", r#"{"text":"a b"}"#).await;
    assert_eq!(
        report.outcome,
        Err(CallError::NeedsApproval {
            tool: "word_count".into(),
            pattern: "word_count".into()
        })
    );
    let approved = host()
        .await
        .call(
            &f.policy,
            &CallRequest {
                tool: "word_count",
                args: r#"{"text":"a b"}"#,
                approved: true,
            },
        )
        .await;
    assert_eq!(
        approved.outcome,
        Ok(r#"{"words":2,"lines":1,"chars":3}"#.to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_gets_a_fresh_instance_so_globals_do_not_survive() {
    let f = Fixture::new().await;
    for _ in 0..3 {
        let report = f.attack("evil_count", "{}").await;
        assert_eq!(report.outcome, Ok(r#"{"text":"1"}"#.to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_empty_not_inherited() {
    let f = Fixture::new().await;
    let report = f.attack("evil_stdin", "{}").await;
    assert_eq!(report.outcome, Ok(r#"{"text":"stdin=\"\""}"#.to_owned()));
}
