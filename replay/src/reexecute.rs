//! `reexecute`: every recorded tool call run again in the sandbox, with the
//! recorded arguments, never calling the model.
//!
//! The calls run against scratch mounts: each mount of the policy in force
//! is replaced by a directory under a scratch root, filled from the
//! snapshot the session took at its start (see
//! [`longrun_host::snapshot`]), so the operator's real files are never
//! touched and the calls see what they saw, as far as the journal can tell.
//! Calls run in journal order, so a call sees the writes of the calls before
//! it. With `--from`, the calls before it still run (to rebuild the state)
//! but are not compared.
//!
//! Not run again: calls the host answered itself (`read_output`), and calls
//! that a crash interrupted before they had a result.
//!
//! Never repeated on the world by default ([`LiveEffects::Recorded`]): a
//! call of a tool whose effects are `external` (as recorded, or as the
//! installed tool says, or of a tool no longer installed) is not run again;
//! its recorded result stands in, and the report lists it. Every other call
//! runs with no network at all. Only [`LiveEffects::Live`] (the auditor's
//! `--live-effects`) runs them, under the recorded allow-list less every
//! loopback, private and link-local address, which only the auditor's own
//! command line can grant: a journal's policy text is the operator's word,
//! not the auditor's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use longrun_host::agent::{PolicyChanged, SessionCreated, ToolIntent, ToolResult, output_of};
use longrun_host::context::READ_OUTPUT;
use longrun_host::journal::{Journal, RecordKind, SessionId};
use longrun_host::netgate::is_restricted;
use longrun_host::policy::{HostMatch, HostPattern, Policy};
use longrun_host::sandbox::{CallRequest, Effects, Toolbox};
use serde::Serialize;

use crate::{ReplayError, payload, records_between};

/// A call's outcome, recorded or now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Output(String),
    Error(String),
}

/// A call whose result now differs from the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The sequence number of the call's `tool_result` record.
    pub seq: u64,
    pub call_id: String,
    pub tool: String,
    pub arguments: String,
    pub recorded: Outcome,
    pub now: Outcome,
}

/// May a re-execution act on the world outside its scratch mounts?
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LiveEffects {
    /// No: calls with external effects are not run again (their recorded
    /// results stand in), and no call reaches the network.
    #[default]
    Recorded,
    /// Yes: calls with external effects run again, under the recorded
    /// allow-list without its loopback, private and link-local entries,
    /// plus `allow`, the entries the auditor named.
    Live { allow: Vec<HostPattern> },
}

impl LiveEffects {
    /// The network allow-list a re-executed call runs under, given the
    /// recorded one.
    fn allow_list(&self, recorded: &[HostPattern]) -> Vec<HostPattern> {
        match self {
            LiveEffects::Recorded => Vec::new(),
            LiveEffects::Live { allow } => recorded
                .iter()
                .filter(|p| !matches!(p.host, HostMatch::Ip(ip) if is_restricted(ip)))
                .chain(allow)
                .cloned()
                .collect(),
        }
    }
}

/// What a re-execution found.
#[derive(Debug, Clone, Serialize)]
pub struct Reexecuted {
    pub session: SessionId,
    /// Calls run and compared (those in the range asked for).
    pub compared: u64,
    /// Calls run only to rebuild the state before the range.
    pub rebuilt: u64,
    pub differences: Vec<Difference>,
    /// Calls not run again, and why.
    pub skipped: Vec<String>,
    /// Calls with external effects whose recorded results stood in, since
    /// the re-execution was not allowed to act on the world.
    pub effects_not_repeated: Vec<String>,
    /// What may make results differ for reasons other than the tools (no
    /// snapshot, files the snapshot left out, a component that changed).
    pub warnings: Vec<String>,
    /// The policy in force at the last record read, its mounts pointing at
    /// the scratch directories.
    #[serde(skip)]
    pub scratch_policy: Policy,
}

/// Run the recorded calls of `session` whose results lie in `from..=to`
/// again with `toolbox`, under scratch mounts in `scratch_root`.
pub async fn reexecute(
    journal: &Journal,
    session: SessionId,
    toolbox: &Toolbox,
    from: u64,
    to: Option<u64>,
    scratch_root: &Path,
    live: &LiveEffects,
) -> Result<Reexecuted, ReplayError> {
    let (_, created) = crate::created(journal, session)?;
    let mut warnings = Vec::new();
    let mut policy = scratch_policy(&created.policy_text, scratch_root)?;
    restore(journal, &created, &policy, &mut warnings)?;
    for recorded in &created.tools {
        match toolbox.tool(&recorded.name) {
            Some(now) if now.component_hash == recorded.component_hash => {}
            Some(now) => warnings.push(format!(
                "tool {} now comes from component {} ({}), not the recorded {} ({})",
                recorded.name,
                now.component,
                short(&now.component_hash),
                recorded.component,
                short(&recorded.component_hash)
            )),
            None => warnings.push(format!("tool {} is not installed now", recorded.name)),
        }
    }
    let total = records_between(journal, session, 0, to)
        .filter(|r| matches!(r, Ok(r) if r.kind == RecordKind::ToolResult))
        .count() as u64;
    let bar = crate::progress(total, "re-executing");
    let mut out = Reexecuted {
        session,
        compared: 0,
        rebuilt: 0,
        differences: Vec::new(),
        skipped: Vec::new(),
        effects_not_repeated: Vec::new(),
        warnings,
        scratch_policy: Policy::deny_all(),
    };
    let mut intents: HashMap<String, ToolIntent> = HashMap::new();
    for record in records_between(journal, session, 0, to) {
        let record = record?;
        match record.kind {
            RecordKind::PolicyChanged => {
                let changed: PolicyChanged = payload(&record)?;
                policy = scratch_policy(&changed.policy_text, scratch_root)?;
            }
            RecordKind::ToolIntent => {
                let intent: ToolIntent = payload(&record)?;
                intents.insert(intent.call_id.clone(), intent);
            }
            RecordKind::ToolResult => {
                bar.inc(1);
                let result: ToolResult = payload(&record)?;
                let Some(intent) = intents.remove(&result.call_id) else {
                    out.skipped.push(format!(
                        "record {}: a result for call {} without an intent",
                        record.seq, result.call_id
                    ));
                    continue;
                };
                if intent.tool == READ_OUTPUT
                    || longrun_host::children::is_children_tool(&intent.tool)
                {
                    out.skipped.push(format!(
                        "record {}: {READ_OUTPUT} is answered by the host from the journal",
                        record.seq
                    ));
                    continue;
                }
                if result.output.is_none()
                    && record.blobs.is_empty()
                    && result
                        .error
                        .as_deref()
                        .is_some_and(|e| e.starts_with("outcome unknown"))
                {
                    out.skipped.push(format!(
                        "record {}: call {} was interrupted by a crash and never run again",
                        record.seq, result.call_id
                    ));
                    continue;
                }
                let recorded_effects = created
                    .tools
                    .iter()
                    .find(|t| t.name == intent.tool)
                    .and_then(|t| t.effects);
                let now_effects = toolbox.tool(&intent.tool).map(|t| t.effects);
                let external = recorded_effects == Some(Effects::External)
                    || now_effects.is_none_or(|e| e == Effects::External);
                if external && *live == LiveEffects::Recorded {
                    out.effects_not_repeated.push(format!(
                        "record {}: {} acts outside the sandbox (effects: external): its recorded result stands in (--live-effects runs it again)",
                        record.seq, intent.tool
                    ));
                    continue;
                }
                let mut call_policy = policy.clone();
                call_policy.network.allow = live.allow_list(&policy.network.allow);
                let report = toolbox
                    .call(
                        &call_policy,
                        &CallRequest {
                            tool: &intent.tool,
                            args: &intent.arguments,
                            // It ran, so it was allowed; whether it should
                            // have been is `verify`'s question.
                            approved: true,
                        },
                    )
                    .await;
                if record.seq < from {
                    out.rebuilt += 1;
                    continue;
                }
                out.compared += 1;
                let recorded = match output_of(journal, &record, &result)? {
                    Some(output) => Outcome::Output(output),
                    None => Outcome::Error(result.error.clone().unwrap_or_default()),
                };
                let now = match report.outcome {
                    Ok(output) => Outcome::Output(output),
                    Err(e) => Outcome::Error(e.to_string()),
                };
                if now != recorded {
                    out.differences.push(Difference {
                        seq: record.seq,
                        call_id: intent.call_id,
                        tool: intent.tool,
                        arguments: intent.arguments,
                        recorded,
                        now,
                    });
                }
            }
            // Nothing to run again: only tools act, under the policy in force.
            RecordKind::SessionCreated
            | RecordKind::ModelRequest
            | RecordKind::ModelResponse
            | RecordKind::PolicyDecision
            | RecordKind::BudgetEvent
            | RecordKind::ApprovalAsked
            | RecordKind::ApprovalGiven
            | RecordKind::Compaction
            | RecordKind::Error
            | RecordKind::SessionEnded
            | RecordKind::UserMessage
            | RecordKind::Control
            | RecordKind::Forked
            | RecordKind::RepeatedFailure
            | RecordKind::LeaseTaken
            | RecordKind::ChildStarted
            | RecordKind::ChildEnded
            // Heavy mode's changes came from a trajectory's tool calls,
            // which its own session re-executes.
            | RecordKind::TrajectoryChosen
            | RecordKind::ChangesApplied => {}
        }
    }
    bar.finish_and_clear();
    for intent in intents.values() {
        out.skipped.push(format!(
            "call {} ({}) has an intent and no result: a crash interrupted it",
            intent.call_id, intent.tool
        ));
    }
    out.scratch_policy = policy;
    Ok(out)
}

/// The policy `text` with each mount's host directory replaced by one
/// under `root` (`mount-0`, `mount-1`, … in the policy's order).
pub fn scratch_policy(text: &str, root: &Path) -> Result<Policy, ReplayError> {
    let mut policy = Policy::parse_recorded(text, "the recorded policy", root)?;
    for (i, mount) in policy.filesystem.iter_mut().enumerate() {
        mount.host = scratch_mount(root, i);
    }
    Ok(policy)
}

fn scratch_mount(root: &Path, index: usize) -> PathBuf {
    root.join(format!("mount-{index}"))
}

/// Fill the scratch mounts from the session's snapshot (empty when it has
/// none), saying what that leaves out.
fn restore(
    journal: &Journal,
    created: &SessionCreated,
    policy: &Policy,
    warnings: &mut Vec<String>,
) -> Result<(), ReplayError> {
    let manifest = match &created.snapshot {
        Some(hash) => Some(longrun_host::snapshot::manifest_by_hex(journal, hash)?),
        None => {
            if !policy.filesystem.is_empty() {
                warnings.push(
                    "the session recorded no snapshot of its mounts: calls run against empty ones"
                        .into(),
                );
            }
            None
        }
    };
    for mount in &policy.filesystem {
        std::fs::create_dir_all(&mount.host).map_err(ReplayError::Scratch)?;
        let Some(manifest) = &manifest else { continue };
        match manifest.mounts.iter().find(|m| m.guest == mount.guest) {
            Some(contents) => {
                longrun_host::snapshot::restore(journal, manifest, &mount.guest, &mount.host)?;
                for left in &contents.left_out {
                    warnings.push(format!(
                        "the snapshot left out {}/{}: {}",
                        mount.guest, left.path, left.why
                    ));
                }
            }
            None => warnings.push(format!(
                "the snapshot has no contents for mount {}: it starts empty",
                mount.guest
            )),
        }
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}
