//! `verify`: is the record intact, and was every action allowed?
//!
//! One pass over a session's records checks, for each record in order:
//! - its hash, its place in the chain and its blobs ([`Journal::verify_with`]);
//! - against the policy in force (the text recorded at the session's start,
//!   or by a later `policy_changed` record), for each tool call: the tool is
//!   allowed; a tool that needs approval was approved by a person before it
//!   ran; the call is one the model asked for (for a session that a model
//!   drove); its arguments fit the size limit and the JSON Schema recorded
//!   for the tool; its output fits the output limit;
//! - the session budgets (steps, tool calls, input and output tokens, cost
//!   at the recorded prices, wall time) never exceeded by an action;
//! - the links: a snapshot's blobs are covered by the first record, a fork's
//!   parent record has the hash the fork says, a parent's `forked` record
//!   names a child that points back.
//!
//! The first record that breaks any of these fails verification, named with
//! why. A deleted last record leaves a shorter chain that is still whole;
//! `--anchor SEQ:HASH` (a head that `list` printed earlier, kept elsewhere)
//! catches that.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use longrun_host::children::is_children_tool;
use longrun_host::context::READ_OUTPUT;
use longrun_host::journal::payload::{
    BudgetEvent, ChangesApplied, ChildEnded, ChildStarted, ChosenBy, Control, EndStatus, Forked,
    Input, JournaledCompaction, LeaseTaken, ModelFailure, ModelResponse, NewMessages,
    PolicyChanged, Refusal, RepeatedFailure, SessionCreated, SessionEnded, Spent, ToolCall,
    ToolIntent, ToolResult, TrajectoryChosen, Usage, Verdict,
};
use longrun_host::journal::{
    Hash, Journal, Record, RecordKind, RepeatedFailures, SessionId, StateError, VerifyError,
    Visitor, hex, parse_hex, visit,
};
use longrun_host::policy::{Decision, Policy, Price};

/// Wall-time slack for the record of an action: the agent cuts a model call
/// at the limit, and writing its record takes a moment more.
const WALL_TIME_SLACK_MS: u64 = 1000;

/// A head to check the chain against: record `seq` must exist with `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub seq: u64,
    pub hash: Hash,
}

impl FromStr for Anchor {
    type Err = String;
    fn from_str(text: &str) -> Result<Anchor, String> {
        let (seq, hash) = text
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not SEQ:HASH"))?;
        Ok(Anchor {
            seq: seq
                .parse()
                .map_err(|_| format!("{seq:?} is not a record number"))?,
            hash: parse_hex(hash).ok_or_else(|| format!("{hash:?} is not a hex hash"))?,
        })
    }
}

/// What a verification that passed covered.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verified {
    pub session: SessionId,
    pub records: u64,
    pub tool_calls: u64,
    /// What could not be checked, and why (an older session without
    /// recorded tool schemas, a fork whose parent is in another journal).
    pub warnings: Vec<String>,
}

/// Verify a session: chain, blobs, policy, budgets and links.
pub fn verify(
    journal: &Journal,
    session: SessionId,
    anchor: Option<Anchor>,
) -> Result<Verified, VerifyError> {
    let check = Check {
        journal,
        session,
        in_force: None,
        started: 0,
        used: Used::default(),
        model_driven: true,
        asked: HashMap::new(),
        approvals: HashMap::new(),
        calls: HashMap::new(),
        failures: RepeatedFailures::default(),
        repeat_due: None,
        stuck_due: false,
        writer: None,
        reserved: HashMap::new(),
        apply_due: false,
        trajectories: None,
        warnings: Vec::new(),
    };
    let (records, check) = check_in_parallel(journal, session, check)?;
    if records == 0 {
        return Err(VerifyError {
            session,
            seq: 0,
            why: "the session has no records".into(),
        });
    }
    if let Some(anchor) = anchor {
        let at = |why: String| VerifyError {
            session,
            seq: anchor.seq,
            why,
        };
        if anchor.seq >= records {
            return Err(at(format!(
                "missing: the anchor names record {} but the session ends at record {}",
                anchor.seq,
                records - 1
            )));
        }
        match journal.record(session, anchor.seq) {
            Ok(Some(record)) if record.hash == anchor.hash => {}
            Ok(_) => return Err(at("its hash is not the anchor's".into())),
            Err(e) => return Err(at(e.to_string())),
        }
    }
    Ok(Verified {
        session,
        records,
        tool_calls: check.used.tool_calls,
        warnings: check.warnings,
    })
}

/// Records handed from the chain check to the policy check at a time.
const BATCH: usize = 512;

/// The hash chain on this thread and the policy check on another, each
/// record handed over once its chain holds: on two cores the two take
/// about as long as the slower alone. The first bad record either finds is
/// the one named (the chain stops at its own; the policy check never sees
/// records after it).
fn check_in_parallel<'j>(
    journal: &'j Journal,
    session: SessionId,
    mut check: Check<'j>,
) -> Result<(u64, Check<'j>), VerifyError> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(8);
        let checker = scope.spawn(move || {
            for record in rx.into_iter().flatten() {
                let seq = record.seq;
                check
                    .record(&record)
                    .map_err(|why| VerifyError { session, seq, why })?;
            }
            Ok(check)
        });
        let mut batch = Vec::with_capacity(BATCH);
        let chain = journal.verify_with(session, |record| {
            batch.push(record);
            if batch.len() == BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                // Closed only when the policy check has already failed.
                tx.send(full).map_err(|_| "not checked".to_owned())?;
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        let checked = checker.join().unwrap_or_else(|_| {
            Err(VerifyError {
                session,
                seq: 0,
                why: "the policy check failed unexpectedly".into(),
            })
        });
        match (chain, checked) {
            (Ok(records), Ok(check)) => Ok((records, check)),
            (Err(bad), Ok(_)) | (Ok(_), Err(bad)) => Err(bad),
            (Err(chain), Err(policy)) => Err(if policy.seq <= chain.seq {
                policy
            } else {
                chain
            }),
        }
    })
}

/// The policy a session runs under, ready to check calls against.
struct InForce {
    policy: Policy,
    price: Option<Price>,
    /// Validators of the recorded tools' schemas; `None` when the session
    /// recorded none (older journals).
    schemas: Option<HashMap<String, jsonschema::Validator>>,
    model: String,
}

#[derive(Default)]
struct Used {
    steps: u64,
    tool_calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

struct Check<'j> {
    journal: &'j Journal,
    session: SessionId,
    in_force: Option<InForce>,
    started: u64,
    used: Used,
    /// Whether a model proposes the calls (not so for an MCP server's
    /// session, whose calls come from its client).
    model_driven: bool,
    /// The calls of the last model response, by id: (tool, arguments).
    asked: HashMap<String, (String, String)>,
    /// People's decisions, by call id.
    approvals: HashMap<String, bool>,
    /// The tool of each announced call, by call id.
    calls: HashMap<String, String>,
    /// How often each failing call failed, and the repeat that the next
    /// record must report (call id, tool, count).
    failures: RepeatedFailures,
    repeat_due: Option<(String, String, u64)>,
    /// A repeat past the policy's limit: the session must end as stuck next.
    stuck_due: bool,
    /// The last `lease_taken`: who writes the session from there on.
    writer: Option<LeaseTaken>,
    /// What is reserved for each child that has not ended.
    reserved: HashMap<SessionId, Spent>,
    /// Heavy mode: the chosen changes are to be applied, and have not been
    /// yet.
    apply_due: bool,
    /// Heavy mode: how many trajectories the session runs.
    trajectories: Option<u32>,
    warnings: Vec<String>,
}

fn parse<T: serde::de::DeserializeOwned>(record: &Record) -> Result<T, String> {
    serde_json::from_slice(&record.payload)
        .map_err(|e| format!("its {} payload does not parse: {e}", record.kind.as_str()))
}

/// Why a record fails the audit, as the visitor returns it.
struct Failure(String);

impl From<String> for Failure {
    fn from(why: String) -> Failure {
        Failure(why)
    }
}

impl From<StateError> for Failure {
    fn from(e: StateError) -> Failure {
        Failure(e.to_string())
    }
}

/// One method per record kind: a kind added to the journal does not
/// compile here until someone says what audit checks of it.
impl Visitor for Check<'_> {
    type Error = Failure;

    fn session_created(&mut self, _: &Record, _: &SessionCreated) -> Result<(), Failure> {
        Err(Failure("a second session_created record".into()))
    }

    fn policy_changed(&mut self, _: &Record, changed: &PolicyChanged) -> Result<(), Failure> {
        let model = self.in_force()?.model.clone();
        let schemas = self.in_force.take().and_then(|f| f.schemas);
        self.in_force = Some(in_force(
            &changed.policy_text,
            &changed.policy_hash,
            changed.policy_base.as_deref(),
            model,
            schemas,
        )?);
        Ok(())
    }

    fn model_response(&mut self, r: &Record, response: &ModelResponse) -> Result<(), Failure> {
        self.used.steps += 1;
        self.charge(&response.usage)?;
        self.asked = response
            .message
            .tool_calls
            .iter()
            .map(|c| (c.id.clone(), (c.name.clone(), c.arguments.clone())))
            .collect();
        let budgets = &self.in_force()?.policy.session;
        over("steps", self.used.steps, budgets.max_steps)?;
        Ok(self.wall_time(r)?)
    }

    fn compaction(&mut self, _: &Record, compaction: &JournaledCompaction) -> Result<(), Failure> {
        match &compaction.compaction.usage {
            Some(usage) => Ok(self.charge(usage)?),
            None => Ok(()),
        }
    }

    fn approval_given(&mut self, _: &Record, verdict: &Verdict) -> Result<(), Failure> {
        self.approvals
            .insert(verdict.call_id.clone(), verdict.approved);
        Ok(())
    }

    fn tool_intent(&mut self, r: &Record, intent: &ToolIntent) -> Result<(), Failure> {
        Ok(self.intent(r, intent)?)
    }

    fn tool_result(&mut self, r: &Record, result: &ToolResult) -> Result<(), Failure> {
        self.result(r, result)?;
        if let Some(error) = &result.error {
            self.failed(&result.call_id, error);
        }
        Ok(())
    }

    fn repeated_failure(&mut self, _: &Record, repeat: &RepeatedFailure) -> Result<(), Failure> {
        let due = self.repeat_due.take();
        let said = (repeat.call_id.clone(), repeat.tool.clone(), repeat.count);
        if due.as_ref() != Some(&said) {
            return Err(Failure(format!(
                "it says call {} ({}) failed the same way {} times, but the records before it do not",
                repeat.call_id, repeat.tool, repeat.count
            )));
        }
        let allowed = self.in_force()?.policy.session.repeated_failures_allowed();
        if repeat.limit != allowed {
            return Err(Failure(format!(
                "it says the limit was {}, but the policy in force allowed {allowed}",
                repeat.limit
            )));
        }
        self.stuck_due = repeat.count > allowed;
        Ok(())
    }

    fn forked(&mut self, _: &Record, forked: &Forked) -> Result<(), Failure> {
        Ok(self.fork(forked)?)
    }

    /// A child's policy narrowed its parent's at the moment it started
    /// (budgets: out of what the parent had left, reservations counted);
    /// what is reserved for it counts as the parent's until it ends.
    fn child_started(&mut self, _: &Record, started: &ChildStarted) -> Result<(), Failure> {
        let in_force = self.in_force()?;
        let child = Policy::parse_recorded(
            &started.policy_text,
            "the child's recorded policy",
            Path::new("/"),
        )
        .map_err(|e| {
            Failure(format!(
                "child {}: its policy does not parse: {e}",
                started.child
            ))
        })?;
        let tools: Vec<&str> = in_force
            .schemas
            .as_ref()
            .map(|s| s.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let budgets = &in_force.policy.session;
        let left = longrun_host::policy::SessionBudgets {
            max_steps: budgets.max_steps.map(|m| m.saturating_sub(self.used.steps)),
            max_tool_calls: budgets
                .max_tool_calls
                .map(|m| m.saturating_sub(self.used.tool_calls)),
            max_input_tokens: budgets
                .max_input_tokens
                .map(|m| m.saturating_sub(self.used.input_tokens)),
            max_output_tokens: budgets
                .max_output_tokens
                .map(|m| m.saturating_sub(self.used.output_tokens)),
            max_cost_usd: budgets
                .max_cost_usd
                .map(|m| longrun_host::policy::NonNegative((m.0 - self.used.cost_usd).max(0.0))),
            // A child's wall time is bounded by its parent's, which is
            // checked against the records' times.
            max_wall_time: None,
            max_repeated_failures: budgets.max_repeated_failures,
        };
        // A trajectory's copies stand for the parent's read-write mounts
        // they were made from.
        let child = match &started.trajectory {
            Some(trajectory) => {
                let n = self.trajectories;
                if n.is_none_or(|n| trajectory.index >= n) {
                    return Err(Failure(format!(
                        "child {} is trajectory {}, and the session runs {} trajectories",
                        started.child,
                        trajectory.index,
                        n.unwrap_or(0)
                    )));
                }
                longrun_host::trajectories::as_derived(&child, &in_force.policy, trajectory)
                    .map_err(|e| Failure(format!("trajectory child {}: {e}", started.child)))?
            }
            None => child,
        };
        longrun_host::narrow::check(&child, &in_force.policy, &tools, &left)
            .map_err(|e| Failure(format!("child {}: {e}", started.child)))?;
        if self
            .reserved
            .insert(started.child, started.reserved.clone())
            .is_some()
        {
            return Err(Failure(format!(
                "child {} was started twice",
                started.child
            )));
        }
        self.spend(&started.reserved, 1.0)?;
        Ok(())
    }

    /// What a child spent replaces what was reserved for it, and the
    /// parent's budgets still hold.
    fn child_ended(&mut self, _: &Record, ended: &ChildEnded) -> Result<(), Failure> {
        let Some(reserved) = self.reserved.remove(&ended.child) else {
            return Err(Failure(format!(
                "child {} ended, and was not started, or ended before",
                ended.child
            )));
        };
        self.spend(&reserved, -1.0)?;
        self.spend(&ended.spent, 1.0)?;
        Ok(())
    }

    /// The chosen changes' new contents are blobs the record references
    /// (so the chain covers them); they are to be applied exactly when the
    /// policy in force says `apply` and the model made the choice; a choice
    /// the model made names its reply.
    fn trajectory_chosen(&mut self, r: &Record, chosen: &TrajectoryChosen) -> Result<(), Failure> {
        for change in &chosen.changes {
            let Some(after) = &change.after else {
                continue;
            };
            if !parse_hex(after).is_some_and(|h| r.blobs.contains(&h)) {
                return Err(Failure(format!(
                    "the change to {} under {} names contents the record does not reference",
                    change.path, change.guest
                )));
            }
        }
        let policy_applies = self.in_force()?.policy.children.as_ref().is_some_and(|c| {
            c.trajectory_changes == longrun_host::policy::TrajectoryChanges::Apply
        });
        let may_apply = policy_applies && !matches!(chosen.by, ChosenBy::FirstCompleted { .. });
        if chosen.apply != may_apply {
            return Err(Failure(format!(
                "the chosen changes are {} where the policy in force ({}) and the way the trajectory was chosen say they are {}",
                if chosen.apply {
                    "to be applied"
                } else {
                    "only proposed"
                },
                if policy_applies { "apply" } else { "propose" },
                if may_apply {
                    "to be applied"
                } else {
                    "only proposed"
                },
            )));
        }
        if let ChosenBy::Model { response } = chosen.by {
            let kind = self
                .journal
                .record(self.session, response)
                .map_err(|e| Failure(format!("its comparison record is unreadable: {e}")))?
                .map(|r| r.kind);
            if kind != Some(RecordKind::ModelResponse) || response >= r.seq {
                return Err(Failure(format!(
                    "it says the model chose in record {response}, which is no earlier model_response"
                )));
            }
        }
        self.apply_due = chosen.apply;
        Ok(())
    }

    fn changes_applied(&mut self, _: &Record, _: &ChangesApplied) -> Result<(), Failure> {
        self.apply_due = false;
        Ok(())
    }

    fn lease_taken(&mut self, _: &Record, taken: &LeaseTaken) -> Result<(), Failure> {
        taken.follows(self.writer.as_ref()).map_err(Failure)?;
        self.writer = Some(taken.clone());
        Ok(())
    }

    // Not reached: `Check::record` passes model requests by without
    // decoding them (see there); nothing in them to re-check either.
    fn model_request(&mut self, _: &Record, _: &NewMessages) -> Result<(), Failure> {
        Ok(())
    }

    fn policy_decision(&mut self, _: &Record, refusal: &Refusal) -> Result<(), Failure> {
        self.failed(&refusal.call_id, &refusal.reason);
        Ok(())
    }

    fn budget_event(&mut self, _: &Record, _: &BudgetEvent) -> Result<(), Failure> {
        Ok(())
    }

    fn approval_asked(&mut self, _: &Record, _: &Refusal) -> Result<(), Failure> {
        Ok(())
    }

    fn error(&mut self, _: &Record, _: &ModelFailure) -> Result<(), Failure> {
        Ok(())
    }

    fn session_ended(&mut self, _: &Record, ended: &SessionEnded) -> Result<(), Failure> {
        if self.apply_due {
            return Err(Failure(
                "the session ended without applying the changes it chose to apply".into(),
            ));
        }
        if ended.status == EndStatus::Stuck && !self.stuck_due {
            return Err(Failure(
                "the session ended as stuck, but no call had failed the same way past max_repeated_failures".into(),
            ));
        }
        Ok(())
    }

    fn user_message(&mut self, _: &Record, _: &Input) -> Result<(), Failure> {
        Ok(())
    }

    fn control(&mut self, _: &Record, _: &Control) -> Result<(), Failure> {
        Ok(())
    }
}

impl Check<'_> {
    fn record(&mut self, record: &Record) -> Result<(), String> {
        if record.seq == 0 {
            return self.created(record);
        }
        // A repeated failure is reported right after it, and one past the
        // limit ends the session right after that.
        if let Some((call, tool, count)) = &self.repeat_due
            && record.kind != RecordKind::RepeatedFailure
        {
            return Err(format!(
                "call {call} ({tool}) failed the same way for the {count}th time, and no repeated_failure record says so"
            ));
        }
        if self.stuck_due && record.kind != RecordKind::SessionEnded {
            let allowed = self.in_force()?.policy.session.repeated_failures_allowed();
            return Err(format!(
                "the session went on after a call failed the same way more than max_repeated_failures ({allowed}) times"
            ));
        }
        if record.kind == RecordKind::ModelRequest {
            // The messages sent hold nothing the policy limits, and the hash
            // chain already vouches for their bytes; they are a quarter of
            // a session's records, and parsing them a third of audit's
            // time. (Their payloads are decoded by `replay show` and by the
            // session state.)
            return Ok(());
        }
        visit(self, record).map_err(|Failure(why)| why)
    }

    fn in_force(&self) -> Result<&InForce, String> {
        self.in_force
            .as_ref()
            .ok_or_else(|| "no policy is in force".to_owned())
    }

    fn created(&mut self, record: &Record) -> Result<(), String> {
        if record.kind != RecordKind::SessionCreated {
            return Err(format!(
                "the first record is {}, not session_created",
                record.kind.as_str()
            ));
        }
        let created: SessionCreated = parse(record)?;
        self.started = record.unix_millis;
        self.trajectories = created.trajectories;
        self.model_driven = !created.labels.contains_key("mcp");
        let schemas = if created.tools.is_empty() {
            self.warnings.push(
                "the session recorded no tool schemas: arguments were not checked against them"
                    .into(),
            );
            None
        } else {
            let mut schemas = HashMap::new();
            for tool in &created.tools {
                let validator = jsonschema::validator_for(&tool.parameters).map_err(|e| {
                    format!(
                        "the recorded schema of tool {:?} is not valid: {e}",
                        tool.name
                    )
                })?;
                schemas.insert(tool.name.clone(), validator);
            }
            Some(schemas)
        };
        self.in_force = Some(in_force(
            &created.policy_text,
            &created.policy_hash,
            created.policy_base.as_deref(),
            created.model.clone(),
            schemas,
        )?);
        if let Some(manifest) = &created.snapshot {
            self.snapshot_covered(record, manifest)?;
        }
        if let Some(parent) = &created.parent {
            match self.journal.record(parent.session, parent.at) {
                Ok(Some(at)) if hex(&at.hash) == parent.hash => {}
                Ok(Some(_)) => {
                    return Err(format!(
                        "it says it was forked from record {} of session {}, whose hash differs",
                        parent.at, parent.session
                    ));
                }
                Ok(None) => self.warnings.push(format!(
                    "the parent session {} (record {}) is not in this journal: the fork's link was not checked",
                    parent.session, parent.at
                )),
                Err(e) => return Err(format!("its parent record is unreadable: {e}")),
            }
        }
        Ok(())
    }

    /// The snapshot's manifest and files are blobs the first record covers.
    fn snapshot_covered(&self, record: &Record, manifest: &str) -> Result<(), String> {
        let covered = |hash: &str| parse_hex(hash).is_some_and(|h| record.blobs.contains(&h));
        if !covered(manifest) {
            return Err("its snapshot manifest is not among the blobs it references".into());
        }
        let manifest = longrun_host::snapshot::manifest_by_hex(self.journal, manifest)
            .map_err(|e| e.to_string())?;
        for file in manifest.mounts.iter().flat_map(|m| &m.files) {
            if !covered(&file.blob) {
                return Err(format!(
                    "its snapshot file {:?} is not among the blobs it references",
                    file.path
                ));
            }
        }
        Ok(())
    }

    /// Count `spent` (`sign` 1) or take it back (`sign` -1), and check the
    /// budgets.
    fn spend(&mut self, spent: &Spent, sign: f64) -> Result<(), String> {
        let apply = |used: u64, n: u64| {
            if sign < 0.0 {
                used.saturating_sub(n)
            } else {
                used + n
            }
        };
        // Steps are each session's own (see `Ledger::charge`).
        let u = &mut self.used;
        u.tool_calls = apply(u.tool_calls, spent.tool_calls);
        u.input_tokens = apply(u.input_tokens, spent.input_tokens);
        u.output_tokens = apply(u.output_tokens, spent.output_tokens);
        u.cost_usd = (u.cost_usd + sign * spent.cost_usd).max(0.0);
        let budgets = &self.in_force()?.policy.session;
        over("tool calls", self.used.tool_calls, budgets.max_tool_calls)?;
        self.charge(&Usage::default())
    }

    fn charge(&mut self, usage: &Usage) -> Result<(), String> {
        let price = self.in_force()?.price.unwrap_or(Price::FREE);
        self.used.input_tokens += usage.input_tokens;
        self.used.output_tokens += usage.output_tokens;
        self.used.cost_usd += price.cost_of(usage);
        let budgets = &self.in_force()?.policy.session;
        over(
            "input tokens",
            self.used.input_tokens,
            budgets.max_input_tokens,
        )?;
        over(
            "output tokens",
            self.used.output_tokens,
            budgets.max_output_tokens,
        )?;
        if let Some(limit) = budgets.max_cost_usd
            && self.used.cost_usd > limit.0 * (1.0 + 1e-9)
        {
            return Err(format!(
                "the cost budget is exceeded: ${:.6} used of ${:.6}",
                self.used.cost_usd, limit.0
            ));
        }
        Ok(())
    }

    fn wall_time(&self, record: &Record) -> Result<(), String> {
        if let Some(limit) = self.in_force()?.policy.session.max_wall_time {
            let elapsed = record.unix_millis.saturating_sub(self.started);
            let limit_ms = limit.0.as_millis() as u64;
            if elapsed > limit_ms + WALL_TIME_SLACK_MS {
                return Err(format!(
                    "the wall-time budget is exceeded: this action came {elapsed} ms after the start, the limit is {limit_ms} ms"
                ));
            }
        }
        Ok(())
    }

    fn intent(&mut self, record: &Record, intent: &ToolIntent) -> Result<(), String> {
        self.used.tool_calls += 1;
        self.calls
            .insert(intent.call_id.clone(), intent.tool.clone());
        if self.model_driven {
            match self.asked.get(&intent.call_id) {
                Some((tool, arguments))
                    if *tool == intent.tool && *arguments == intent.arguments => {}
                Some(_) => {
                    return Err(format!(
                        "call {} runs {} with other arguments or another tool than the model asked for",
                        intent.call_id, intent.tool
                    ));
                }
                None => {
                    return Err(format!(
                        "call {} ({}) is not among the calls of the model's last response",
                        intent.call_id, intent.tool
                    ));
                }
            }
        }
        let in_force = self.in_force()?;
        over(
            "tool calls",
            self.used.tool_calls,
            in_force.policy.session.max_tool_calls,
        )?;
        self.wall_time(record)?;
        if intent.tool == READ_OUTPUT && self.model_driven {
            // The host's own pager over this session's outputs.
            return Ok(());
        }
        let in_force = self.in_force()?;
        if is_children_tool(&intent.tool) && in_force.policy.children.is_some() && self.model_driven
        {
            // The host's own tools over the policy's `[children]`: what
            // they started is checked at `child_started`.
            return Ok(());
        }
        match in_force.policy.decide(&intent.tool) {
            Decision::Allow => {}
            Decision::Deny(why) => {
                return Err(format!(
                    "tool call {} is outside the recorded policy: {why}",
                    intent.call_id
                ));
            }
            Decision::NeedsApproval(pattern) => {
                if self.approvals.get(&intent.call_id) != Some(&true) {
                    return Err(format!(
                        "tool call {} ({}) needs a person's approval (pattern {pattern:?}) and ran without it",
                        intent.call_id, intent.tool
                    ));
                }
            }
        }
        let limits = in_force.policy.limits_for(&intent.tool);
        if intent.arguments.len() as u64 > limits.max_args {
            return Err(format!(
                "the arguments of call {} are {} bytes, over the limit of {}",
                intent.call_id,
                intent.arguments.len(),
                limits.max_args
            ));
        }
        if let Some(schemas) = &in_force.schemas {
            let validator = schemas.get(&intent.tool).ok_or_else(|| {
                format!(
                    "tool {:?} is not among the session's recorded tools",
                    intent.tool
                )
            })?;
            let args: serde_json::Value = serde_json::from_str(&intent.arguments).map_err(|e| {
                format!("the arguments of call {} are not JSON: {e}", intent.call_id)
            })?;
            if let Some(error) = validator.iter_errors(&args).next() {
                return Err(format!(
                    "the arguments of call {} do not match the recorded schema of {}: {error}",
                    intent.call_id, intent.tool
                ));
            }
        }
        Ok(())
    }

    fn result(&mut self, record: &Record, result: &ToolResult) -> Result<(), String> {
        // Taken out: a call has one result, and the map stays small over a
        // long session.
        let tool = self.calls.remove(&result.call_id).ok_or_else(|| {
            format!(
                "a result for call {}, which no tool_intent announced or another result answered",
                result.call_id
            )
        })?;
        let size = match (&result.output, record.blobs.first()) {
            (Some(output), _) => output.len() as u64,
            (None, Some(blob)) => self
                .journal
                .blob_len(blob)
                .map_err(|e| e.to_string())?
                .unwrap_or(0),
            (None, None) => 0,
        };
        if tool != READ_OUTPUT && !is_children_tool(&tool) {
            let limit = self.in_force()?.policy.limits_for(&tool).max_output;
            if size > limit {
                return Err(format!(
                    "the output of call {} is {size} bytes, over the limit of {limit}",
                    result.call_id
                ));
            }
        }
        Ok(())
    }

    /// Count a failure of a call the model asked for (an MCP client's calls
    /// are not the loop's, and not counted).
    fn failed(&mut self, call_id: &str, error: &str) {
        let Some((name, arguments)) = self.asked.get(call_id).filter(|_| self.model_driven) else {
            return;
        };
        let call = ToolCall {
            id: call_id.to_owned(),
            name: name.clone(),
            arguments: arguments.clone(),
        };
        let count = self.failures.failed(&call, error);
        if count >= 2 {
            self.repeat_due = Some((call.id, call.name, count));
        }
    }

    fn fork(&self, forked: &Forked) -> Result<(), String> {
        let first = self
            .journal
            .record(forked.child, 0)
            .map_err(|e| format!("the fork's first record is unreadable: {e}"))?
            .ok_or_else(|| {
                format!(
                    "it names fork {}, which is not in the journal",
                    forked.child
                )
            })?;
        let child: SessionCreated = parse(&first)?;
        match child.parent {
            Some(p) if p.session == self.session && p.at == forked.at => Ok(()),
            _ => Err(format!(
                "it names fork {}, which does not name this session and record {} as its parent",
                forked.child, forked.at
            )),
        }
    }
}

/// A count over its budget, as an error.
fn over(what: &str, used: u64, limit: Option<u64>) -> Result<(), String> {
    match limit {
        Some(limit) if used > limit => Err(format!(
            "the {what} budget is exceeded: {used} used of {limit}"
        )),
        _ => Ok(()),
    }
}

fn in_force(
    text: &str,
    hash: &str,
    base: Option<&str>,
    model: String,
    schemas: Option<HashMap<String, jsonschema::Validator>>,
) -> Result<InForce, String> {
    if blake3::hash(text.as_bytes()).to_hex().as_str() != hash {
        return Err("the recorded policy text does not match its recorded hash".into());
    }
    let base = Path::new(base.unwrap_or("/"));
    let policy = Policy::parse_recorded(text, "the recorded policy", base)
        .map_err(|e| format!("the recorded policy does not parse: {e}"))?;
    let price = policy.price_for(&model);
    if price.is_none() && policy.session.max_cost_usd.is_some() {
        return Err(format!(
            "the recorded policy sets a cost budget but has no price for model {model:?}"
        ));
    }
    Ok(InForce {
        policy,
        price,
        schemas,
        model,
    })
}
