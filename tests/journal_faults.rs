//! The journal under faults, with the real `longrun` binary: kills at random
//! points (start-up included), bytes overwritten in the store's tail, and a
//! disk that fills. What must hold every time: the journal opens, no
//! acknowledged record is lost without being named, a session that lost
//! records is not resumed on its own, and no non-idempotent call runs twice.
//! The kills, the damaged tail and the full disk run on each store that
//! keeps a directory: segment files (the default) and sled.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use longrun_host::journal::payload::{Payload, ToolResult};
use longrun_host::journal::store::segments::segment_files;
use longrun_host::journal::{
    Journal, Location, RecordKind, SessionId, SessionState, Status, Unpriced,
};

mod common;
use common::Rng;

/// A directory with a read-write workspace, a policy allowing `fs_*`, and a
/// script of `steps` appends of "x" to `step-N.txt` (not idempotent), each
/// response carrying `padding` bytes of reasoning, then an answer.
struct Setup {
    dir: tempfile::TempDir,
    journal: PathBuf,
}

/// The store a journal directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    Segments,
    Sled,
}

impl Setup {
    /// The journal in `journal` (or in the set-up's directory) is made on
    /// `store` before the binary first opens it, which then keeps to it.
    fn new(steps: usize, padding: usize, journal: Option<PathBuf>, store: Store) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::write(
            dir.path().join("policy.toml"),
            "[tools]\nallow = [\"fs_*\"]\n\n[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n",
        )
        .unwrap();
        let reasoning = "r".repeat(padding);
        let mut lines = vec![format!(
            r#"{{"reasoning_content": "{reasoning}", "tool_calls": [{{"name": "fs_write", "arguments": {{"path": "/workspace/step-{{step}}.txt", "content": "x", "append": true}}}}], "repeat": {steps}}}"#
        )];
        lines.push(r#"{"content": "all steps written"}"#.to_owned());
        std::fs::write(dir.path().join("script.jsonl"), lines.join("\n")).unwrap();
        let journal = journal.unwrap_or_else(|| dir.path().join("journal"));
        let location = match store {
            Store::Segments => Location::Segments(journal.clone()),
            Store::Sled => Location::Sled(journal.clone()),
        };
        drop(Journal::open_location(&location, Default::default()).unwrap());
        Setup { dir, journal }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_longrun"));
        command.args(args).stdin(Stdio::null());
        command
    }

    /// `longrun run` the first time, `longrun resume` once the journal holds
    /// the session (a kill during start-up may come before it does).
    fn run(&self) -> Command {
        let started = Journal::open_read_only(&self.journal, Default::default())
            .is_ok_and(|journal| !journal.sessions().unwrap_or_default().is_empty());
        let mut command = if started {
            self.command(&["resume", "--policy"])
        } else {
            self.command(&["run", "write the steps", "--policy"])
        };
        command
            .arg(self.dir.path().join("policy.toml"))
            .arg("--model")
            .arg(format!(
                "scripted:{}",
                self.dir.path().join("script.jsonl").display()
            ))
            .arg("--journal")
            .arg(&self.journal);
        command
    }

    fn replay_verify(&self) -> Output {
        self.command(&["replay", "verify", "--all", "--journal"])
            .arg(&self.journal)
            .output()
            .unwrap()
    }

    fn step_file(&self, step: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("ws/step-{step}.txt")))
            .unwrap_or_default()
    }
}

/// Spawn `command` with its standard error piped, and kill it (SIGKILL)
/// after it printed `steps` step lines and `micros` more microseconds; with
/// `steps` = None, `micros` after it started.
fn kill_after(mut command: Command, steps: Option<u64>, micros: u64) {
    let mut child: Child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, steps_seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = 0;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("step ") {
                seen += 1;
                let _ = tx.send(seen);
            }
        }
    });
    if let Some(steps) = steps {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        while seen < steps && Instant::now() < deadline {
            match steps_seen.recv_timeout(Duration::from_secs(20)) {
                Ok(n) => seen = n,
                Err(_) => break,
            }
        }
    }
    std::thread::sleep(Duration::from_micros(micros));
    let _ = child.kill();
    let _ = child.wait();
}

/// The state of the journal's only session, checked: the journal opens, it
/// lost nothing it acknowledged, and its chain verifies.
fn check_journal(journal_dir: &Path) -> Option<SessionState> {
    let journal = Journal::open(journal_dir).expect("the journal always opens");
    assert_eq!(journal.losses(), vec![], "no acknowledged record is lost");
    let sessions = journal.sessions().unwrap();
    assert!(sessions.len() <= 1, "one session, resumed: {sessions:?}");
    let session = *sessions.first()?;
    journal.verify(session).expect("the chain verifies");
    Some(SessionState::fold(&journal, session, &mut Unpriced).expect("the records follow"))
}

/// Every non-idempotent call of the session ran at most once: each step's
/// file holds "x" once, or nothing when its outcome was unknown (the call
/// was interrupted and not run again).
fn check_effects(setup: &Setup, session: SessionId, steps: usize) -> usize {
    let journal = Journal::open(&setup.journal).unwrap();
    let mut intents: HashMap<String, usize> = HashMap::new();
    let mut results: HashMap<String, ToolResult> = HashMap::new();
    for record in journal.records(session) {
        let record = record.unwrap();
        match longrun_host::journal::state::decode(&record).unwrap() {
            Payload::ToolIntent(intent) => *intents.entry(intent.call_id).or_default() += 1,
            Payload::ToolResult(result) => {
                let id = result.call_id.clone();
                assert!(results.insert(id.clone(), result).is_none(), "{id} twice");
            }
            _ => {}
        }
    }
    let mut unknown = 0;
    for step in 0..steps {
        let id = format!("call_{step}_0");
        assert_eq!(intents.get(&id), Some(&1), "{id}: one intent");
        let content = setup.step_file(step);
        match &results[&id].error {
            None => assert_eq!(content, "x", "{id} ran once"),
            Some(e) => {
                assert!(e.starts_with("outcome unknown"), "{id}: {e}");
                assert!(content.len() <= 1, "{id} never ran twice: {content:?}");
                unknown += 1;
            }
        }
    }
    unknown
}

#[test]
fn five_hundred_kills_including_start_up_lose_nothing_acknowledged_and_repeat_no_effect() {
    kills_lose_nothing_acknowledged_and_repeat_no_effect(Store::Segments, 500);
}

#[test]
fn on_sled_two_hundred_kills_including_start_up_lose_nothing_acknowledged() {
    kills_lose_nothing_acknowledged_and_repeat_no_effect(Store::Sled, 200);
}

fn kills_lose_nothing_acknowledged_and_repeat_no_effect(store: Store, kills: usize) {
    // Enough that the kills cannot finish it even when a loaded machine lets
    // a run take several steps before its kill lands (measured: up to 4 a
    // kill).
    let steps = kills * 8;
    let setup = Setup::new(steps, 0, None, store);
    let mut rng = Rng::from_env("LONGRUN_FAULT_SEED");
    let mut at_start_up = 0;
    for kill in 0..kills {
        // A third during start-up (opening the journal, loading the tools,
        // resuming), the rest inside one of the next steps.
        if rng.next().is_multiple_of(3) {
            at_start_up += 1;
            kill_after(setup.run(), None, rng.next() % 150_000);
        } else {
            kill_after(setup.run(), Some(rng.next() % 3), rng.next() % 3000);
        }
        if let Some(state) = check_journal(&setup.journal) {
            assert!(
                !state.status.ended(),
                "the session ended after {} kills; the test needs {kills}",
                kill + 1
            );
        }
    }
    let status = setup.run().stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "the last run completes: {status}");
    let state = check_journal(&setup.journal).unwrap();
    assert_eq!(state.status, Status::Completed);
    assert_eq!(state.used.steps, steps as u64 + 1);
    let unknown = check_effects(&setup, state.session, steps);
    println!(
        "{store:?}: {kills} kills ({at_start_up} at start-up); {unknown} calls outcome unknown"
    );
}

/// Overwrite `len` bytes of `file` ending at the `nth` occurrence of
/// `needle` from the end (0: the last); false when there are fewer.
fn overwrite_before(file: &Path, needle: &[u8], len: usize, nth: usize) -> bool {
    let mut bytes = std::fs::read(file).unwrap();
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect();
    let Some(&at) = found.iter().rev().nth(nth) else {
        return false;
    };
    let end = at + needle.len();
    let start = end.saturating_sub(len);
    bytes[start..end].fill(0xAA);
    std::fs::write(file, bytes).unwrap();
    true
}

#[test]
fn bytes_overwritten_in_the_stores_tail_are_named_and_the_effect_does_not_run_twice() {
    for store in [Store::Segments, Store::Sled] {
        overwritten_tail_is_named(store);
    }
}

/// The file holding the store's log: sled's `db`, or the last segment.
fn log_file(journal: &Path, store: Store) -> PathBuf {
    match store {
        Store::Sled => journal.join("db"),
        Store::Segments => segment_files(journal).unwrap().pop().unwrap().1,
    }
}

/// Damage before the acknowledged head, with whole records after it: the
/// segment store keeps those, and the hole is a loss all the same.
#[test]
fn bytes_overwritten_in_the_middle_are_named_and_nothing_resumes_over_them() {
    for store in [Store::Segments, Store::Sled] {
        overwritten_intent_is_named(store, Damaged::Fifth);
    }
}

/// Which acknowledged `fs_write` intent the damage hits.
#[derive(Debug, Clone, Copy)]
enum Damaged {
    Last,
    Fifth,
}

fn overwritten_tail_is_named(store: Store) {
    overwritten_intent_is_named(store, Damaged::Last);
}

fn overwritten_intent_is_named(store: Store, damaged: Damaged) {
    let setup = Setup::new(40, 0, None, store);
    kill_after(setup.run(), Some(10), 500);
    let before = check_journal(&setup.journal).unwrap();
    let written: Vec<String> = (0..40).map(|s| setup.step_file(s)).collect();
    // The last fs_write intent acknowledged as durable (a read-only journal
    // shows exactly those): losing one never written is no loss.
    let intents: Vec<Vec<u8>> = Journal::open_read_only(&setup.journal, Default::default())
        .unwrap()
        .records(before.session)
        .map(Result::unwrap)
        .filter(|r| r.kind == RecordKind::ToolIntent)
        .map(|r| r.payload)
        .collect();
    let intent = match damaged {
        Damaged::Last => intents.last().unwrap().clone(),
        Damaged::Fifth => intents[4].clone(),
    };
    // 100 bytes of the store's log inside that intent. sled
    // may hold older copies of a record that it no longer reads; damage to
    // one of those is no loss, so for sled the damage moves back a copy at
    // a time until it lands on one sled reads. A segment store has one.
    let tries = match store {
        Store::Segments => 1,
        Store::Sled => 6,
    };
    let mut said = String::new();
    let mut hit = false;
    for nth in 0..tries {
        assert!(overwrite_before(
            &log_file(&setup.journal, store),
            &intent,
            100,
            nth
        ));
        let verify = setup.replay_verify();
        said = String::from_utf8_lossy(&verify.stdout).to_string()
            + &String::from_utf8_lossy(&verify.stderr);
        if !verify.status.success() {
            hit = true;
            break;
        }
    }
    assert!(hit, "verify fails: {said}");
    assert!(
        said.contains("are missing") || said.contains("is missing"),
        "verify names the loss: {said}"
    );

    let run = setup.run().output().unwrap();
    let told = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "run does not resume: {told}");
    assert!(told.contains("missing"), "run names the loss: {told}");
    assert!(told.contains("not resumed automatically"), "{told}");
    let after: Vec<String> = (0..40).map(|s| setup.step_file(s)).collect();
    assert_eq!(after, written, "no step ran again");
    println!(
        "{store:?}, {damaged:?} intent: session {} had {} records; verify said: {}",
        before.session,
        before.records,
        said.lines().find(|l| l.contains("missing")).unwrap_or("")
    );
}

/// A tmpfs of `size` mounted on a new directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if is_root() {
            let dir = tempfile::tempdir().unwrap();
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "mounting a tmpfs as root failed");
            Some(Tmpfs(dir))
        } else {
            None
        }
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.0.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

#[test]
fn a_full_disk_stops_the_run_with_a_clear_error_within_seconds_and_it_resumes_after() {
    for store in [Store::Segments, Store::Sled] {
        full_disk_stops_the_run_and_it_resumes_after(store);
    }
}

fn full_disk_stops_the_run_and_it_resumes_after(store: Store) {
    let Some(disk) = Tmpfs::mount("2m") else {
        eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
        return;
    };
    const STEPS: usize = 1500;
    let setup = Setup::new(STEPS, 2048, Some(disk.0.path().join("journal")), store);
    let mut child = setup
        .run()
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut last_step = Instant::now();
    let mut told = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.starts_with("step ") {
            last_step = Instant::now();
        } else {
            told.push(line);
        }
    }
    let status = child.wait().unwrap();
    let stopped_after = last_step.elapsed();
    let told = told.join("\n");
    assert!(!status.success(), "the run fails: {told}");
    assert!(told.contains("No space left on device"), "{told}");
    assert!(
        stopped_after < Duration::from_secs(10),
        "exited {stopped_after:?} after its last step"
    );

    disk.resize("64m");
    let state = check_journal(&setup.journal).unwrap();
    assert!(!state.status.ended());
    let steps_before = state.used.steps;
    let status = setup.run().stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "it resumes once space is back");
    let state = check_journal(&setup.journal).unwrap();
    assert_eq!(state.status, Status::Completed);
    check_effects(&setup, state.session, STEPS);
    println!(
        "{store:?}: disk full after {steps_before} steps; exited {stopped_after:?} after its last step; error: {}",
        told.lines().last().unwrap_or("")
    );
}

/// What an event-stream follower received: each record's number and hash.
type Received = Vec<(u64, String)>;

/// Follow session `id`'s events on whichever address `addr` holds now,
/// reconnecting with `Last-Event-ID` after every drop, until the record
/// that ends the session arrives.
async fn follow(addr: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>, id: u64) -> Received {
    use http_body_util::BodyExt;
    let mut received: Received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    'connect: while Instant::now() < deadline {
        let at = *addr.lock().unwrap();
        let Ok(stream) = tokio::net::TcpStream::connect(at).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
        else {
            continue;
        };
        tokio::spawn(connection);
        let mut request = hyper::Request::get(format!("/v1/sessions/{id}/events"))
            .header("host", "localhost")
            .header("authorization", format!("Bearer {}", common::TOKEN));
        if let Some((last, _)) = received.last() {
            request = request.header("last-event-id", last.to_string());
        }
        let request = request
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let Ok(response) = sender.send_request(request).await else {
            continue;
        };
        if response.status() != hyper::StatusCode::OK {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let mut body = response.into_body();
        let mut buffer = String::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let record: serde_json::Value = serde_json::from_str(data).unwrap();
                let seq = record["seq"].as_u64().unwrap();
                received.push((seq, record["hash"].as_str().unwrap().to_owned()));
                if record["kind"] == "session_ended" {
                    break 'connect;
                }
            }
        }
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_follower_across_serve_crashes_receives_exactly_the_durable_records() {
    const CRASHES: usize = 6;
    let script = r#"{"tool_calls": [{"name": "fs_list", "arguments": {"path": "/workspace"}}], "delay_ms": 40, "repeat": 60}
{"content": "listed"}"#;
    let mut server = common::serve_scripted(script, "", "", None);
    let created = http(
        server.addr,
        "POST",
        "/v1/sessions",
        r#"{"goal": "list the workspace sixty times"}"#,
    );
    let id = created["id"].as_u64().unwrap();

    let addr = std::sync::Arc::new(std::sync::Mutex::new(server.addr));
    let follower = tokio::spawn(follow(addr.clone(), id));
    let mut rng = Rng::from_env("LONGRUN_FAULT_SEED");
    for _ in 0..CRASHES {
        tokio::time::sleep(Duration::from_millis(150 + rng.next() % 350)).await;
        tokio::task::block_in_place(|| server.crash_and_restart());
        *addr.lock().unwrap() = server.addr;
    }
    let received = tokio::time::timeout(Duration::from_secs(120), follower)
        .await
        .expect("the follower reaches the end")
        .unwrap();
    server.stop();

    let journal = Journal::open(&server.dir.path().join("journal")).unwrap();
    let stored: Received = journal
        .records(id)
        .map(|r| {
            let r = r.unwrap();
            (r.seq, longrun_host::journal::hex(&r.hash))
        })
        .collect();
    assert_eq!(journal.verify(id), Ok(stored.len() as u64));
    assert_eq!(
        received.len(),
        stored.len(),
        "each durable record exactly once"
    );
    assert_eq!(received, stored, "exactly the journal's records, in order");
    println!(
        "{CRASHES} crashes; {} records followed, all durable",
        received.len()
    );
}

#[test]
fn a_server_whose_journal_disk_fills_exits_with_a_clear_error_and_resumes_after() {
    let Some(disk) = Tmpfs::mount("2m") else {
        eprintln!("SKIPPED: mounting a small tmpfs needs root (CI runs as root)");
        return;
    };
    let journal = disk.0.path().join("journal");
    let reasoning = "r".repeat(2048);
    let script = format!(
        r#"{{"reasoning_content": "{reasoning}", "tool_calls": [{{"name": "fs_list", "arguments": {{"path": "/workspace"}}}}], "repeat": 1500}}
{{"content": "listed"}}"#
    );
    let mut server = common::serve_scripted_on(&script, "", "", None, &journal);
    let created = http(
        server.addr,
        "POST",
        "/v1/sessions",
        r#"{"goal": "list the workspace"}"#,
    );
    let id = created["id"].as_u64().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server is still running on a full disk"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "the server exits non-zero: {status}");
    let failed_after = started.elapsed();

    disk.resize("64m");
    let state = {
        let journal = Journal::open(&journal).unwrap();
        assert_eq!(journal.losses(), vec![]);
        journal.verify(id).unwrap();
        SessionState::fold(&journal, id, &mut Unpriced).unwrap()
    };
    assert!(!state.status.ended());
    server.crash_and_restart();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let view = http(server.addr, "GET", &format!("/v1/sessions/{id}"), "");
        if view["status"] != "running" {
            break view;
        }
        assert!(Instant::now() < deadline, "the session resumes and ends");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        failed_after < Duration::from_secs(20),
        "the server exited {failed_after:?} after the session started"
    );
    println!(
        "the server exited {failed_after:?} after the session started, {} steps in; resumed, it ended after {} steps",
        state.used.steps, done["usage"]["steps"]
    );
}

/// One request to a `longrun serve` on loopback as its tenant; the JSON
/// answer.
fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        common::TOKEN,
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let at = reply.find("\r\n\r\n").expect("a response") + 4;
    serde_json::from_str(&reply[at..]).unwrap_or_else(|e| panic!("{e}: {reply}"))
}
