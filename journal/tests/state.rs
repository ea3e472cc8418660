//! `SessionState` on hand-built histories: what each record does to a
//! session's status, usage and cost, and which records cannot follow which.

use longrun_journal::payload::*;
use longrun_journal::{
    Pricing, Record, RecordKind, SessionId, SessionState, StateError, Status, Unpriced,
};

/// Builds records of one session, as a journal would hold them.
struct History {
    session: SessionId,
    records: Vec<Record>,
}

impl History {
    fn new() -> History {
        History {
            session: 7,
            records: Vec::new(),
        }
    }

    fn record(&mut self, payload: &Payload) -> Record {
        let seq = self.records.len() as u64;
        let prev = self
            .records
            .last()
            .map_or(longrun_journal::record::genesis(self.session), |r| r.hash);
        let (bytes, _) = longrun_journal::record::encode(
            self.session,
            seq,
            payload.kind(),
            &prev,
            &[],
            &payload.encode(),
        )
        .unwrap();
        let record = longrun_journal::record::decode(self.session, &bytes).unwrap();
        self.records.push(record.clone());
        record
    }
}

/// Per million tokens: $1 in, $2 out, whatever the policy.
struct Flat;

impl Pricing for Flat {
    fn cost_usd(&mut self, _: &str, _: &str, usage: &Usage) -> f64 {
        (usage.input_tokens as f64 + 2.0 * usage.output_tokens as f64) / 1e6
    }
}

fn created() -> Payload {
    Payload::SessionCreated(Box::new(SessionCreated {
        goal: "count words".into(),
        policy_text: "[session]\n".into(),
        policy_hash: "p1".into(),
        model: "scripted".into(),
        labels: Default::default(),
        tools: vec![RecordedTool {
            name: "echo".into(),
            parameters: serde_json::json!({"type": "object"}),
            idempotent: true,
            effects: Some(Effects::None),
            component: "example.wasm".into(),
            component_hash: "c1".into(),
        }],
        snapshot: None,
        parent: None,
        spawned_by: None,
        policy_base: None,
        driver: Driver::Model,
        trajectories: None,
    }))
}

fn call(id: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: "echo".into(),
        arguments: "{}".into(),
    }
}

fn response(calls: &[&str], input: u64, output: u64) -> Payload {
    Payload::ModelResponse(ModelResponse {
        message: Message {
            tool_calls: calls.iter().map(|id| call(id)).collect(),
            ..Message::text(Role::Assistant, "ok")
        },
        usage: Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        },
    })
}

fn intent(id: &str) -> Payload {
    Payload::ToolIntent(ToolIntent {
        call_id: id.into(),
        tool: "echo".into(),
        arguments: "{}".into(),
        idempotent: false,
    })
}

fn result(id: &str) -> Payload {
    Payload::ToolResult(ToolResult {
        call_id: id.into(),
        output: Some("hi".into()),
        output_blob: None,
        error: None,
        elapsed_ms: 1,
        view_bytes: None,
    })
}

fn refusal(id: &str) -> Refusal {
    Refusal {
        call_id: id.into(),
        tool: "echo".into(),
        reason: "needs approval".into(),
    }
}

fn one_of_each_kind() -> Vec<Payload> {
    vec![
        created(),
        Payload::ModelRequest(NewMessages(vec![Message::text(Role::User, "go")])),
        response(&["a"], 10, 5),
        intent("a"),
        result("a"),
        Payload::PolicyDecision(refusal("b")),
        Payload::BudgetEvent(BudgetEvent::Warning {
            warning: BudgetKind::Cost,
            used: 0.8,
            limit: 1.0,
        }),
        Payload::BudgetEvent(BudgetEvent::Exhausted {
            exhausted: BudgetKind::ToolCalls,
            used: "3".into(),
            limit: "3".into(),
        }),
        Payload::ApprovalAsked(refusal("c")),
        Payload::ApprovalGiven(Verdict {
            call_id: "c".into(),
            approved: true,
            by: "ops".into(),
            reason: None,
        }),
        Payload::Compaction(JournaledCompaction {
            compaction: Compaction {
                from: 1,
                to: 3,
                method: Method::Summary,
                replacement: Message::text(Role::User, "summary"),
                tokens_before: 100,
                tokens_after: 10,
                usage: Some(Usage::default()),
                error: None,
            },
            through_step: 2,
        }),
        Payload::Error(ModelFailure {
            attempt: 1,
            error: "503".into(),
            retry_in_ms: Some(200),
        }),
        Payload::SessionEnded(SessionEnded {
            status: EndStatus::Completed,
            answer: Some("4".into()),
        }),
        Payload::UserMessage(Input {
            text: "hurry".into(),
            by: "ops".into(),
        }),
        Payload::Control(Control {
            action: ControlAction::Pause,
        }),
        Payload::Forked(Forked { child: 9, at: 3 }),
        Payload::PolicyChanged(PolicyChanged {
            policy_text: "[session]\nmax_steps = 3\n".into(),
            policy_hash: "p2".into(),
            policy_base: None,
        }),
        Payload::RepeatedFailure(RepeatedFailure {
            call_id: "call_4_0".into(),
            tool: "fs_list".into(),
            count: 2,
            limit: 3,
        }),
        Payload::LeaseTaken(LeaseTaken {
            owner: "host-b".into(),
            epoch: 2,
        }),
        Payload::ChildStarted(ChildStarted {
            call_id: "call_5_0".into(),
            child: 8,
            goal: "count the other words".into(),
            model: "worker".into(),
            policy_text: "[session]\nmax_tool_calls = 4\n".into(),
            reserved: Spent {
                tool_calls: 4,
                ..Spent::default()
            },
            trajectory: Some(Trajectory {
                index: 1,
                copies: vec![MountCopy {
                    guest: "/workspace".into(),
                    host: "/scratch/7/1/0".into(),
                }],
            }),
        }),
        Payload::ChildEnded(ChildEnded {
            child: 8,
            status: Status::Completed,
            answer: Some("5".into()),
            spent: Spent {
                steps: 2,
                tool_calls: 1,
                input_tokens: 10,
                output_tokens: 3,
                cost_usd: 0.0,
            },
        }),
        Payload::TrajectoryChosen(TrajectoryChosen {
            child: 8,
            index: 1,
            by: ChosenBy::Model { response: 4 },
            apply: true,
            changes: vec![FileChange {
                guest: "/workspace".into(),
                path: "notes/todo.txt".into(),
                before: None,
                after: Some("ab".repeat(32)),
            }],
            left_out: vec![PathNote {
                guest: "/workspace".into(),
                path: "big.bin".into(),
                why: "past the snapshot's size limit".into(),
            }],
        }),
        Payload::ChangesApplied(ChangesApplied {
            applied: 0,
            conflicts: vec![PathNote {
                guest: "/workspace".into(),
                path: "notes/todo.txt".into(),
                why: "the file changed since the session started".into(),
            }],
        }),
    ]
}

#[test]
fn every_record_kind_round_trips_through_its_payload() {
    let payloads = one_of_each_kind();
    let mut kinds: Vec<RecordKind> = payloads.iter().map(Payload::kind).collect();
    kinds.sort();
    kinds.dedup();
    let mut all = RecordKind::ALL.to_vec();
    all.sort();
    assert_eq!(kinds, all, "one payload of every kind");
    for payload in payloads {
        let decoded = Payload::decode(payload.kind(), &payload.encode()).unwrap();
        assert_eq!(decoded, payload);
    }
}

#[test]
fn a_payload_that_is_not_of_its_kind_does_not_decode() {
    let err = Payload::decode(RecordKind::ToolResult, &intent("a").encode()).unwrap_err();
    assert!(err.to_string().contains("tool_result payload"), "{err}");
}

#[test]
fn payloads_written_by_earlier_releases_still_decode() {
    let old_exhausted = br#"{"exhausted":"ToolCalls","used":"3","limit":"3"}"#;
    assert_eq!(
        Payload::decode(RecordKind::BudgetEvent, old_exhausted).unwrap(),
        Payload::BudgetEvent(BudgetEvent::Exhausted {
            exhausted: BudgetKind::ToolCalls,
            used: "3".into(),
            limit: "3".into()
        })
    );
    let old_warning = br#"{"warning":"WallTime","used":80.0,"limit":100.0}"#;
    assert!(Payload::decode(RecordKind::BudgetEvent, old_warning).is_ok());
    let old_end = br#"{"status":"completed","answer":"4"}"#;
    assert!(Payload::decode(RecordKind::SessionEnded, old_end).is_ok());
    let old_control = br#"{"action":"pause"}"#;
    assert_eq!(
        Payload::decode(RecordKind::Control, old_control).unwrap(),
        Payload::Control(Control {
            action: ControlAction::Pause
        })
    );
    assert!(Payload::decode(RecordKind::Control, br#"{"action":"stop"}"#).is_err());
}

/// Fold `payloads` one by one, returning the status after each.
fn statuses(payloads: &[Payload]) -> (SessionState, Vec<Status>) {
    let mut history = History::new();
    let mut state = SessionState::new(history.session);
    let mut seen = Vec::new();
    for payload in payloads {
        let record = history.record(payload);
        state.apply(&record, payload, &mut Flat).unwrap();
        seen.push(state.status);
    }
    (state, seen)
}

#[test]
fn every_status_follows_from_the_records() {
    use Status::*;
    let approval = |approved| {
        Payload::ApprovalGiven(Verdict {
            call_id: "b".into(),
            approved,
            by: "ops".into(),
            reason: None,
        })
    };
    let control = |action| Payload::Control(Control { action });
    let (state, seen) = statuses(&[
        created(),
        response(&["a", "b"], 100, 10),
        intent("a"),
        result("a"),
        Payload::ApprovalAsked(refusal("b")),
        control(ControlAction::Pause),
        control(ControlAction::Resume),
        approval(true),
        intent("b"),
        Payload::BudgetEvent(BudgetEvent::Exhausted {
            exhausted: BudgetKind::Cost,
            used: "1.2".into(),
            limit: "1".into(),
        }),
        result("b"),
        Payload::Error(ModelFailure {
            attempt: 1,
            error: "rate limited".into(),
            retry_in_ms: Some(100),
        }),
        Payload::Error(ModelFailure {
            attempt: 2,
            error: "bad request".into(),
            retry_in_ms: None,
        }),
        response(&[], 50, 5),
        Payload::SessionEnded(SessionEnded {
            status: EndStatus::Completed,
            answer: Some("done".into()),
        }),
    ]);
    assert_eq!(
        seen,
        vec![
            Running,
            Running,
            Running,
            Running,
            AwaitingApproval,
            Paused,
            AwaitingApproval,
            Running,
            Running,
            BudgetExhausted,
            Running,
            Running,
            Failed,
            Running,
            Completed,
        ]
    );
    assert_eq!(state.answer.as_deref(), Some("done"));
    assert_eq!(state.used.steps, 2);
    assert_eq!(state.used.tool_calls, 2);
    assert_eq!(state.approvals["b"].asked_at, 4);
    assert_eq!(state.approvals["b"].decided.as_ref().unwrap().0, 7);
    assert_eq!(state.records, 15);
    let (_, seen) = statuses(&[
        created(),
        Payload::SessionEnded(SessionEnded {
            status: EndStatus::Cancelled,
            answer: None,
        }),
        Payload::Forked(Forked { child: 3, at: 1 }),
    ]);
    assert_eq!(seen, vec![Running, Cancelled, Cancelled]);
}

#[test]
fn usage_and_cost_count_every_model_call_summaries_included() {
    let summary = Payload::Compaction(JournaledCompaction {
        compaction: Compaction {
            from: 1,
            to: 3,
            method: Method::Summary,
            replacement: Message::text(Role::User, "summary"),
            tokens_before: 100,
            tokens_after: 10,
            usage: Some(Usage {
                input_tokens: 1_000_000,
                output_tokens: 0,
                ..Usage::default()
            }),
            error: None,
        },
        through_step: 1,
    });
    let (state, _) = statuses(&[
        created(),
        response(&["a"], 1_000_000, 500_000),
        intent("a"),
        result("a"),
        summary,
        response(&[], 0, 0),
    ]);
    assert_eq!(state.used.input_tokens, 2_000_000);
    assert_eq!(state.used.output_tokens, 500_000);
    assert_eq!(state.used.compactions, 1);
    assert!(
        (state.used.cost_usd - 3.0).abs() < 1e-9,
        "{}",
        state.used.cost_usd
    );
    assert_eq!(state.compacted_through, 1);
}

#[test]
fn an_interrupted_call_is_the_one_with_an_intent_and_no_result() {
    let (state, _) = statuses(&[created(), response(&["a", "b"], 1, 1), intent("a")]);
    assert_eq!(
        state.interrupted.keys().collect::<Vec<_>>(),
        vec!["a"],
        "a ran (or may have); b never started"
    );
    assert_eq!(
        state
            .pending
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

/// The error folding `payloads` gives at their last record.
fn lease(owner: &str, epoch: u64) -> Payload {
    Payload::LeaseTaken(LeaseTaken {
        owner: owner.into(),
        epoch,
    })
}

fn refused(payloads: &[Payload]) -> String {
    let mut history = History::new();
    let mut state = SessionState::new(history.session);
    for (i, payload) in payloads.iter().enumerate() {
        let record = history.record(payload);
        match state.apply(&record, payload, &mut Unpriced) {
            Ok(()) => assert!(i + 1 < payloads.len(), "the last record was accepted"),
            Err(e @ StateError::OutOfOrder { .. }) => {
                assert_eq!(i + 1, payloads.len(), "refused early: {e}");
                return e.to_string();
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!()
}

#[test]
fn a_record_that_cannot_follow_the_ones_before_it_is_refused() {
    let end = || {
        Payload::SessionEnded(SessionEnded {
            status: EndStatus::Completed,
            answer: None,
        })
    };
    let cases: Vec<(Vec<Payload>, &str)> = vec![
        (vec![response(&[], 1, 1)], "has not been created"),
        (vec![created(), created()], "created already"),
        (vec![created(), result("a")], "not waiting for a result"),
        (vec![created(), intent("a")], "not waiting to run"),
        (
            vec![created(), response(&["a"], 1, 1), response(&[], 1, 1)],
            "call a has no answer yet",
        ),
        (
            vec![
                created(),
                Payload::ApprovalGiven(Verdict {
                    call_id: "a".into(),
                    approved: true,
                    by: "ops".into(),
                    reason: None,
                }),
            ],
            "no approval was asked",
        ),
        (vec![created(), end(), response(&[], 1, 1)], "has ended"),
        (vec![created(), end(), end()], "has ended"),
        (
            vec![created(), lease("host-a", 2), lease("host-b", 2)],
            "host-b took the lease under epoch 2, but host-a had taken it under epoch 2",
        ),
        (
            vec![created(), lease("host-a", 3), lease("host-b", 2)],
            "under epoch 2, but host-a had taken it under epoch 3",
        ),
    ];
    for (payloads, why) in cases {
        let error = refused(&payloads);
        assert!(error.contains(why), "{error}");
        assert!(error.contains("cannot follow"), "{error}");
    }
}

#[tokio::test]
async fn a_session_folds_from_the_journal_as_from_its_records() {
    let journal = longrun_journal::Journal::in_memory().unwrap();
    let mut writer = journal.create_session().unwrap();
    for payload in [created(), response(&[], 3, 4)] {
        writer
            .append_durable(payload.kind(), &payload.encode(), &[])
            .await
            .unwrap();
    }
    let state = SessionState::fold(&journal, writer.session(), &mut Flat).unwrap();
    assert_eq!(state.status, Status::Running);
    assert_eq!(state.used.steps, 1);
    assert_eq!(state.model(), "scripted");
    // A payload that is not what its kind says is named, not skipped.
    writer
        .append_durable(RecordKind::ToolResult, b"{\"nonsense\":1}", &[])
        .await
        .unwrap();
    let err = SessionState::fold(&journal, writer.session(), &mut Flat).unwrap_err();
    assert!(err.to_string().contains("record 2"), "{err}");
}
