//! Three `longrun serve` hosts on one PostgreSQL journal (a private
//! cluster per test): sessions survive their host's `kill -9` on another
//! host, a host paused past its lease is fenced when it wakes, and an event
//! stream on one host follows a session that another host runs, across a
//! takeover. Every session writes one file per step through `fs_write`
//! with `append` (not idempotent), so a call run twice would show.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use longrun_host::journal::payload::{ControlAction, LeaseTaken, Payload, ToolIntent, ToolResult};
use longrun_host::journal::{Journal, Location, RecordKind, SessionId, SessionState, Unpriced};
use serde_json::{Value, json};

mod common;
use common::{Rng, TOKEN, builtin_tools_dir, spawn_listening};

/// The sessions' lease: hosts renew at a third of it.
const LEASE: Duration = Duration::from_secs(2);

/// Scripted models, one per session (each writes files of its own).
const MODELS: usize = 48;

/// A directory with one configuration per host, a scripted model per
/// session, a policy that lets sessions write `/workspace`, and the
/// PostgreSQL cluster they share.
struct Site {
    dir: tempfile::TempDir,
    url: String,
    _database: longrun_test_postgres::Cluster,
}

impl Site {
    /// `steps` tool-call steps per session, each model call taking
    /// `delay_ms`.
    fn new(steps: usize, delay_ms: u64) -> Site {
        let database = longrun_test_postgres::Cluster::start().unwrap();
        let url = database.create_database("journal").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("ws")).unwrap();
        let mount =
            "[[filesystem]]\nhost = \"ws\"\nguest = \"/workspace\"\naccess = \"read-write\"\n";
        std::fs::write(
            p.join("policy.toml"),
            format!("[tools]\nallow = [\"fs_write\"]\n{mount}"),
        )
        .unwrap();
        std::fs::write(
            p.join("approve.toml"),
            format!("[tools]\nallow = [\"fs_write\"]\napprove = [\"fs_write\"]\n{mount}"),
        )
        .unwrap();
        let mut models = String::new();
        for m in 0..MODELS {
            let mut lines: Vec<String> = (0..steps)
                .map(|i| {
                    format!(
                        r#"{{"delay_ms": {delay_ms}, "tool_calls": [{{"name": "fs_write", "arguments": {{"path": "/workspace/m{m}-{i}.txt", "content": "x", "append": true}}}}]}}"#
                    )
                })
                .collect();
            lines.push(format!(r#"{{"content": "m{m} done"}}"#));
            std::fs::write(p.join(format!("m{m}.jsonl")), lines.join("\n")).unwrap();
            models.push_str(&format!("m{m} = \"scripted:m{m}.jsonl\"\n"));
        }
        for host in ["host-a", "host-b", "host-c"] {
            std::fs::write(
                p.join(format!("{host}.toml")),
                format!(
                    "store = \"{url}\"\ndefault_policy = \"default\"\n[models]\n{models}[policies]\ndefault = \"policy.toml\"\napprove = \"approve.toml\"\n\
                     [tenants.acme]\ntoken = \"{TOKEN}\"\n[cluster]\nhost = \"{host}\"\nlease = \"{}ms\"\n",
                    LEASE.as_millis()
                ),
            )
            .unwrap();
        }
        Site {
            dir,
            url,
            _database: database,
        }
    }

    fn start(&self, name: &str) -> Host {
        let log = self.dir.path().join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let (child, url) = spawn_listening(
            Command::new(env!("CARGO_BIN_EXE_longrun"))
                .arg("serve")
                .arg("--config")
                .arg(self.dir.path().join(format!("{name}.toml")))
                .args(["--listen", "127.0.0.1:0", "--tools-dir"])
                .arg(builtin_tools_dir())
                .env("LONGRUN_LOG", "info")
                .stdin(Stdio::null())
                .stderr(stderr),
        );
        Host {
            name: name.to_owned(),
            child,
            addr: url.strip_prefix("http://").unwrap().parse().unwrap(),
            log,
        }
    }

    fn reader(&self) -> std::sync::Arc<Journal> {
        Journal::open_location_read_only(&Location::Postgres(self.url.clone()), Default::default())
            .unwrap()
    }

    fn ws(&self) -> PathBuf {
        self.dir.path().join("ws")
    }
}

/// A `longrun serve` process; SIGKILLed when dropped.
struct Host {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Host {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Start a session of model `m{model}`; its id.
    fn create(&self, model: usize) -> SessionId {
        let (status, body) = http(
            self.addr,
            "POST",
            "/v1/sessions",
            Some(
                json!({"goal": format!("write the m{model} files"), "model": format!("m{model}")}),
            ),
        );
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    }

    /// Start a session of model `m{model}` under policy `policy`; its id.
    fn create_under(&self, model: usize, policy: &str) -> SessionId {
        let (status, body) = http(
            self.addr,
            "POST",
            "/v1/sessions",
            Some(json!({
                "goal": format!("write the m{model} files"),
                "model": format!("m{model}"),
                "policy": policy,
            })),
        );
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    }

    /// The session as this host shows it.
    fn get(&self, session: SessionId) -> Value {
        let (status, view) = http(self.addr, "GET", &format!("/v1/sessions/{session}"), None);
        assert_eq!(status, 200, "{view}");
        view
    }

    /// Wait until this host shows `session` in `status`; its view.
    fn until(&self, session: SessionId, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = self.get(session);
            if view["status"] == status {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "session {session} is not {status}: {view}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (status, reply) = http(self.addr, "POST", path, Some(body));
        assert_eq!(status, 202, "{path}: {reply}");
        reply
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request over a fresh connection: the status and the JSON body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The records of `session` from `from` on, as the store holds them.
fn payloads(journal: &Journal, session: SessionId, from: u64) -> Vec<(u64, Payload)> {
    journal
        .records_from(session, from)
        .map(|r| {
            let r = r.unwrap();
            (r.seq, Payload::decode(r.kind, &r.payload).unwrap())
        })
        .collect()
}

fn ended(journal: &Journal, session: SessionId) -> bool {
    journal
        .records(session)
        .last()
        .is_some_and(|r| r.unwrap().kind == RecordKind::SessionEnded)
}

/// Wait (up to `limit`) for the first `lease_taken` record of session
/// `session` after record `after` by a host other than `not`: who took it,
/// and when it was seen.
fn next_taker(
    journal: &Journal,
    session: SessionId,
    after: u64,
    not: &str,
    limit: Duration,
) -> Option<(LeaseTaken, Instant)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for (_, payload) in payloads(journal, session, after + 1) {
            if let Payload::LeaseTaken(taken) = payload
                && taken.owner != not
            {
                return Some((taken, Instant::now()));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// The last record's sequence number of `session`.
fn head(journal: &Journal, session: SessionId) -> u64 {
    journal.records(session).count() as u64 - 1
}

/// Every check of a finished session: it completed; each of its `steps`
/// calls was proposed once, announced once and answered once; its file
/// holds one write, or none for a call reported as "outcome unknown";
/// writers took the lease under growing epochs. Returns the hosts that
/// wrote it, in order, and how many calls were outcome unknown.
fn check_session(
    journal: &Journal,
    ws: &Path,
    session: SessionId,
    model: usize,
    steps: usize,
) -> (Vec<String>, usize) {
    let state = SessionState::fold(journal, session, &mut Unpriced).unwrap();
    assert_eq!(
        state.status,
        longrun_host::journal::Status::Completed,
        "session {session}"
    );
    let mut responses = 0;
    let mut intents: BTreeMap<String, usize> = BTreeMap::new();
    let mut results: BTreeMap<String, ToolResult> = BTreeMap::new();
    let mut writers = Vec::new();
    for (_, payload) in payloads(journal, session, 0) {
        match payload {
            Payload::ModelResponse(_) => responses += 1,
            Payload::ToolIntent(ToolIntent { call_id, .. }) => {
                *intents.entry(call_id).or_default() += 1
            }
            Payload::ToolResult(result) => {
                let id = result.call_id.clone();
                assert!(
                    results.insert(id.clone(), result).is_none(),
                    "session {session}: {id} answered twice"
                );
            }
            Payload::LeaseTaken(taken) => writers.push(taken.owner),
            _ => {}
        }
    }
    assert_eq!(
        responses,
        steps + 1,
        "session {session}: one response a step"
    );
    let mut unknown = 0;
    for step in 0..steps {
        let id = format!("call_{step}_0");
        assert_eq!(intents.get(&id), Some(&1), "session {session}: {id}");
        let file = ws.join(format!("m{model}-{step}.txt"));
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        match &results[&id].error {
            None => assert_eq!(content, "x", "session {session}: {id} ran once"),
            Some(e) => {
                assert!(e.starts_with("outcome unknown"), "{id}: {e}");
                assert!(content.len() <= 1, "{id} never ran twice: {content:?}");
                unknown += 1;
            }
        }
    }
    (writers, unknown)
}

fn replay_verify_all(url: &str) {
    common::replay_verify_all(&["--store".as_ref(), url.as_ref()]);
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

#[test]
fn sessions_outlive_twenty_kills_of_their_hosts_with_every_step_once() {
    const STEPS: usize = 60;
    const KILLS: usize = 20;
    let site = Site::new(STEPS, 40);
    let mut hosts: Vec<Host> = ["host-a", "host-b", "host-c"]
        .iter()
        .map(|name| site.start(name))
        .collect();
    let journal = site.reader();
    let mut rng = Rng::from_env("LONGRUN_CLUSTER_SEED");
    let mut sessions: Vec<(SessionId, usize)> = Vec::new();
    let mut takeovers: Vec<Duration> = Vec::new();

    for kill in 0..KILLS {
        // Keep three sessions running, started on hosts at random.
        let unfinished = |sessions: &[(SessionId, usize)]| -> Vec<SessionId> {
            sessions
                .iter()
                .map(|(s, _)| *s)
                .filter(|s| !ended(&journal, *s))
                .collect()
        };
        while unfinished(&sessions).len() < 3 {
            let model = sessions.len();
            assert!(model < MODELS, "more sessions than scripted models");
            let host = &hosts[rng.next() as usize % hosts.len()];
            sessions.push((host.create(model), model));
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 1500));

        // Kill a host that runs sessions, at a random moment.
        let owner = |s: SessionId| journal.lease(s).unwrap().map(|l| l.owner);
        let running = unfinished(&sessions);
        let owners: BTreeSet<String> = running.iter().filter_map(|s| owner(*s)).collect();
        let candidates: Vec<usize> = (0..hosts.len())
            .filter(|i| owners.contains(&hosts[*i].name))
            .collect();
        let victim = match candidates.len() {
            0 => rng.next() as usize % hosts.len(),
            n => candidates[rng.next() as usize % n],
        };
        let victim_name = hosts[victim].name.clone();
        let heads: Vec<(SessionId, u64)> = running
            .iter()
            .filter(|s| owner(**s).as_deref() == Some(victim_name.as_str()))
            .map(|s| (*s, head(&journal, *s)))
            .collect();
        hosts[victim].kill();
        let killed = Instant::now();

        // Each of its unfinished sessions is taken over by another host.
        for (session, before) in heads {
            if ended(&journal, session) {
                continue;
            }
            let Some((_, at)) = next_taker(&journal, session, before, &victim_name, LEASE * 10)
            else {
                panic!(
                    "kill {kill}: session {session} of {victim_name} was not taken over in {:?}",
                    LEASE * 10
                )
            };
            takeovers.push(at - killed);
        }
        hosts[victim] = site.start(&victim_name);
    }

    // Every session completes on a surviving host.
    let deadline = Instant::now() + Duration::from_secs(180);
    while sessions.iter().any(|(s, _)| !ended(&journal, *s)) {
        assert!(Instant::now() < deadline, "sessions did not complete");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut unknown = 0;
    let mut moved = 0;
    for (session, model) in &sessions {
        let (writers, u) = check_session(&journal, &site.ws(), *session, *model, STEPS);
        unknown += u;
        moved += writers.len().saturating_sub(1);
    }
    drop(hosts);
    replay_verify_all(&site.url);

    takeovers.sort();
    assert!(!takeovers.is_empty(), "no session was taken over");
    println!(
        "{KILLS} kills, {} sessions, {} takeovers ({moved} lease changes in the journals), \
         {unknown} calls reported as outcome unknown; time from kill to the session's \
         lease_taken on another host: p50 {:?}, max {:?} (lease {LEASE:?})",
        sessions.len(),
        takeovers.len(),
        percentile(&takeovers, 50),
        takeovers[takeovers.len() - 1],
    );
}

#[test]
fn a_host_paused_past_its_lease_is_fenced_when_it_wakes_and_stops_the_session() {
    const STEPS: usize = 150;
    let site = Site::new(STEPS, 20);
    let host_a = site.start("host-a");
    let host_b = site.start("host-b");
    let journal = site.reader();
    let session = host_a.create(0);
    while head(&journal, session) < 20 {
        std::thread::sleep(Duration::from_millis(10));
    }

    // A is paused past its lease; B takes the session over.
    host_a.signal("-STOP");
    let paused_at = head(&journal, session);
    let (taken, _) = next_taker(&journal, session, paused_at, "host-a", LEASE * 10)
        .expect("B takes the session over");
    assert_eq!((taken.owner.as_str(), taken.epoch), ("host-b", 2));
    // B writes on while A sleeps.
    let taken_at = head(&journal, session);
    while head(&journal, session) < taken_at + 10 {
        std::thread::sleep(Duration::from_millis(10));
    }

    // A wakes: its lease is gone, its writer is refused, and it stops the
    // session and says who runs it now.
    host_a.signal("-CONT");
    let deadline = Instant::now() + LEASE * 5;
    let stopped = "taken over by host-b (epoch 2)";
    while !host_a.log().contains(stopped) {
        assert!(
            Instant::now() < deadline,
            "host A did not say it was fenced:\n{}",
            host_a.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_a.get(session)["runs_elsewhere"], "host-b");

    let deadline = Instant::now() + Duration::from_secs(60);
    while !ended(&journal, session) {
        assert!(Instant::now() < deadline, "the session did not complete");
        std::thread::sleep(Duration::from_millis(50));
    }
    // One writer per stretch: A under epoch 1, then B under epoch 2, and
    // every step once.
    let (writers, _) = check_session(&journal, &site.ws(), session, 0, STEPS);
    assert_eq!(writers, ["host-a", "host-b"]);
    drop((host_a, host_b));
    replay_verify_all(&site.url);
}

#[test]
fn an_event_stream_on_one_host_follows_a_session_run_by_another_across_a_takeover() {
    const STEPS: usize = 80;
    let site = Site::new(STEPS, 30);
    let mut host_a = site.start("host-a");
    let host_b = site.start("host-b");
    let host_c = site.start("host-c");
    let journal = site.reader();
    let session = host_a.create(0);

    // Follow it on B, which does not run it.
    let mut stream = TcpStream::connect(host_b.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /v1/sessions/{session}/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let follower = std::thread::spawn(move || {
        let mut events: Vec<(u64, String)> = Vec::new();
        let mut id = None;
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Some(seq) = line.strip_prefix("id: ") {
                id = Some(seq.trim().parse::<u64>().unwrap());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let record: Value = serde_json::from_str(data).unwrap();
                let seq = id.take().unwrap();
                assert_eq!(record["seq"], seq);
                events.push((seq, record["hash"].as_str().unwrap().to_owned()));
                if record["kind"] == "session_ended" {
                    break;
                }
            }
        }
        events
    });

    while head(&journal, session) < 30 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = head(&journal, session);
    host_a.kill();
    let (taken, _) = next_taker(&journal, session, before, "host-a", LEASE * 10)
        .expect("the session is taken over");
    assert_ne!(taken.owner, "host-a");

    let events = follower.join().unwrap();
    let stored: Vec<(u64, String)> = journal
        .records(session)
        .map(|r| {
            let r = r.unwrap();
            (r.seq, longrun_host::journal::hex(&r.hash))
        })
        .collect();
    // Every durable record, once, in order, as stored.
    assert_eq!(events, stored);
    check_session(&journal, &site.ws(), session, 0, STEPS);
    drop((host_b, host_c));
}

#[test]
fn a_session_run_by_one_host_is_steered_through_another() {
    let site = Site::new(3, 1000);
    let host_a = site.start("host-a");
    let host_b = site.start("host-b");
    let journal = site.reader();
    let approving = host_a.create_under(0, "approve");
    let steered = host_a.create(1);
    let cancelled = host_a.create(2);
    for session in [approving, steered, cancelled] {
        assert_eq!(host_b.get(session)["runs_elsewhere"], "host-a");
    }

    // Through B: a message and a pause, then a resume once it is paused;
    // a cancel of another session.
    host_b.post(
        &format!("/v1/sessions/{steered}/messages"),
        json!({"text": "from the other host"}),
    );
    host_b.post(&format!("/v1/sessions/{steered}/pause"), json!({}));
    host_b.post(&format!("/v1/sessions/{cancelled}/cancel"), json!({}));
    host_b.until(steered, "paused");
    host_b.post(&format!("/v1/sessions/{steered}/resume"), json!({}));

    // Through B: each call of the approving session approved.
    for _ in 0..3 {
        let waiting = host_b.until(approving, "awaiting_approval");
        let step = waiting["awaiting_approval"]["step"].as_u64().unwrap();
        host_b.post(
            &format!("/v1/sessions/{approving}/approvals/{step}"),
            json!({"approve": true}),
        );
        while host_b.get(approving)["awaiting_approval"]["step"] == step {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    host_b.until(approving, "completed");
    host_b.until(steered, "completed");
    host_b.until(cancelled, "cancelled");

    // Each request was journaled by the host that runs the session, once.
    let steering_records = |session| -> Vec<Payload> {
        payloads(&journal, session, 0)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| {
                matches!(
                    p,
                    Payload::UserMessage(_) | Payload::Control(_) | Payload::ApprovalGiven(_)
                )
            })
            .collect()
    };
    // (A message waits for the step's calls to be answered, so it may come
    // after the pause.)
    let steering = steering_records(steered);
    assert_eq!(steering.len(), 3, "{steering:?}");
    let message = steering.iter().filter(|p| {
        matches!(p, Payload::UserMessage(m) if m.text == "from the other host" && m.by == "acme")
    });
    assert_eq!(message.count(), 1, "{steering:?}");
    let controls: Vec<ControlAction> = steering
        .iter()
        .filter_map(|p| match p {
            Payload::Control(c) => Some(c.action),
            _ => None,
        })
        .collect();
    assert_eq!(controls, [ControlAction::Pause, ControlAction::Resume]);
    let approvals = steering_records(approving);
    assert_eq!(approvals.len(), 3, "{approvals:?}");
    assert!(
        approvals
            .iter()
            .all(|p| matches!(p, Payload::ApprovalGiven(v) if v.approved && v.by == "acme"))
    );
    check_session(&journal, &site.ws(), approving, 0, 3);
    check_session(&journal, &site.ws(), steered, 1, 3);
    drop((host_a, host_b));
    replay_verify_all(&site.url);
}
