//! Heavy mode's loop (`run --trajectories N`): the session starts N child
//! sessions on its goal and model, each from the same start with its own
//! copies of the read-write mounts, collects them, asks its model which
//! completed answer is best (journaled like any model call), records the
//! choice with the chosen trajectory's changes, applies them to the real
//! mounts (or only proposes them, as the policy says) and ends with the
//! chosen answer. The parts that are not the loop are in
//! [`crate::trajectories`].
//!
//! Every step is found again on resume: trajectories by their
//! `child_started` records (none started twice), comparison replies by
//! their `model_response` records (none asked twice), the choice by its
//! `trajectory_chosen` record, and an application a crash cut short is
//! finished by [`crate::trajectories::apply`], which writes no file twice.

use longrun_journal::payload::{ChosenBy, TrajectoryChosen};

use super::*;
use crate::children::Copies;
use crate::trajectories::{self as heavy, Candidate, HeavyError};

impl Session<'_> {
    /// Run heavy mode's loop: from wherever the records say it stopped,
    /// until it ends or a budget, a person or a failure stops it.
    pub(super) async fn run_trajectories(&mut self, n: u32) -> Result<SessionStatus, AgentError> {
        if let Some(status) = self.steer().await? {
            return Ok(status);
        }
        let workers = self.workers.clone().ok_or(HeavyError::NoWorkers)?;
        if !workers.models.contains_key(self.model.name()) {
            return Err(HeavyError::NoWorkers.into());
        }
        let limits = self.policy.children.clone().ok_or(HeavyError::NoChildren)?;
        if self.chosen.is_none() {
            for index in 0..n {
                if self.trajectory(index).is_some() {
                    continue;
                }
                while self.running().len() >= limits.max_concurrent as usize {
                    let first = self.running()[0];
                    if let Some(status) = self.collect(first).await? {
                        return Ok(status);
                    }
                }
                self.start_trajectory(index, n, &workers).await?;
            }
            for id in self.running() {
                if let Some(status) = self.collect(id).await? {
                    return Ok(status);
                }
            }
            if let Some(status) = self.choose(limits.trajectory_changes).await? {
                return Ok(status);
            }
        }
        let chosen = self.chosen.clone().ok_or_else(|| {
            AgentError::Inconsistent("heavy mode went on without a chosen trajectory".into())
        })?;
        if chosen.apply && self.applied.is_none() {
            let applied = heavy::apply(&self.journal, &self.policy.filesystem, &chosen.changes)?;
            self.record(Payload::ChangesApplied(applied.clone()))
                .await?;
            self.applied = Some(applied);
        }
        let answer = self
            .children
            .get(&chosen.child)
            .and_then(|c| c.ended.as_ref())
            .and_then(|e| e.answer.clone())
            .unwrap_or_default();
        self.record(Payload::SessionEnded(SessionEnded {
            status: EndStatus::Completed,
            answer: Some(answer.clone()),
        }))
        .await?;
        self.remove_copies(&chosen);
        Ok(SessionStatus::Completed { answer })
    }

    /// Once the session has ended: remove the trajectories' copies, but
    /// the chosen one's while its changes wait for a person (only proposed,
    /// or not all applied). A copy left behind by a crash just before is
    /// left; nothing reads it again.
    fn remove_copies(&self, chosen: &TrajectoryChosen) {
        let settled = self
            .applied
            .as_ref()
            .is_some_and(|a| a.conflicts.is_empty())
            || chosen.changes.is_empty();
        for (id, child) in &self.children {
            let Some(trajectory) = &child.started.trajectory else {
                continue;
            };
            if *id == chosen.child && !settled {
                continue;
            }
            if let Err(e) = heavy::remove_copies(&trajectory.copies) {
                tracing::warn!(
                    session = self.writer.session(),
                    trajectory = trajectory.index,
                    "cannot remove the copies: {e}"
                );
            }
        }
    }

    /// Trajectory `index`'s child, once started.
    fn trajectory(&self, index: u32) -> Option<(&SessionId, &ChildRun)> {
        self.children.iter().find(|(_, c)| {
            c.started
                .trajectory
                .as_ref()
                .is_some_and(|t| t.index == index)
        })
    }

    /// The children that have not ended, oldest first.
    fn running(&self) -> Vec<SessionId> {
        let mut running: Vec<(u64, SessionId)> = self
            .children
            .iter()
            .filter(|(_, c)| c.ended.is_none())
            .map(|(id, c)| (c.started_at, *id))
            .collect();
        running.sort();
        running.into_iter().map(|(_, id)| id).collect()
    }

    fn goal(&self) -> String {
        self.messages
            .first()
            .and_then(|m| m.content.clone())
            .unwrap_or_default()
    }

    /// Journal trajectory `index` (`child_started`, with its policy, its
    /// copies and what is reserved for it: an equal share of what is left
    /// for it, the trajectories not started yet and the comparison) and
    /// start it.
    async fn start_trajectory(
        &mut self,
        index: u32,
        n: u32,
        workers: &Arc<Workers>,
    ) -> Result<(), AgentError> {
        let started_already = self
            .children
            .values()
            .filter(|c| c.started.trajectory.is_some())
            .count() as u64;
        let left = self.ledger.left(self.elapsed());
        let share = share_of(&left, u64::from(n) - started_already + 1);
        let tools: Vec<&str> = self.toolbox.tools().map(|t| t.name.as_str()).collect();
        let derived = crate::narrow::derive(
            self.policy,
            &crate::narrow::ChildRequest::default(),
            &tools,
            &left,
            &share,
        )
        .map_err(|e| HeavyError::Policy(e.to_string()))?;
        let manifest = match &self.snapshot {
            Some(hex) => Some(crate::snapshot::manifest_by_hex(&self.journal, hex)?),
            None => None,
        };
        let (policy, trajectory) = heavy::trajectory_policy(
            &derived,
            manifest.as_ref(),
            self.config.scratch_dir.as_deref(),
            self.writer.session(),
            index,
        )?;
        let reserved = reservation(&self.policy.session, &policy.session);
        let id = self.journal.reserve_session_id()?;
        let started = ChildStarted {
            call_id: heavy::call_id(index),
            child: id,
            goal: self.goal(),
            model: self.model.name().to_owned(),
            policy_text: policy.text.clone(),
            reserved,
            trajectory: Some(trajectory),
        };
        self.launch_child(started, policy, workers.clone()).await
    }

    /// Choose among the completed trajectories and journal the choice with
    /// the chosen one's changes (`trajectory_chosen`). With one completed,
    /// it is chosen; with more, the model compares their answers, and a
    /// reply that names none is asked again once; after that the first
    /// completed is taken, and its changes only proposed. Returns a status
    /// when a budget or a person stops the session first.
    async fn choose(
        &mut self,
        changes_by_policy: crate::policy::TrajectoryChanges,
    ) -> Result<Option<SessionStatus>, AgentError> {
        let mut candidates = Vec::new();
        let mut others = Vec::new();
        for (id, child) in &self.children {
            let (Some(t), Some(ended)) = (&child.started.trajectory, &child.ended) else {
                continue;
            };
            match (&ended.status, &ended.answer) {
                (Status::Completed, Some(answer)) => candidates.push(Candidate {
                    index: t.index,
                    child: *id,
                    answer: answer.clone(),
                }),
                (status, answer) => others.push(format!(
                    "trajectory {} {}{}",
                    t.index,
                    status.as_str(),
                    answer
                        .as_deref()
                        .map(|a| format!(" ({a})"))
                        .unwrap_or_default()
                )),
            }
        }
        candidates.sort_by_key(|c| c.index);
        let (pick, by) = match candidates.len() {
            0 => return Err(HeavyError::NoneCompleted(others.join("; ")).into()),
            1 => (0, ChosenBy::OnlyCompleted),
            of => loop {
                let mut why = String::new();
                let named = self.comparisons.iter().find_map(|(seq, reply)| {
                    match heavy::parse_choice(reply, of) {
                        Ok(n) => Some((n - 1, ChosenBy::Model { response: *seq })),
                        Err(e) => {
                            why = e;
                            None
                        }
                    }
                });
                if let Some(named) = named {
                    break named;
                }
                if self.comparisons.len() >= 2 {
                    break (0, ChosenBy::FirstCompleted { why });
                }
                if let Some(status) = self.compare(&candidates).await? {
                    return Ok(Some(status));
                }
            },
        };
        let chosen = &candidates[pick];
        let copies = self
            .children
            .get(&chosen.child)
            .and_then(|c| c.started.trajectory.as_ref())
            .map(|t| t.copies.clone())
            .unwrap_or_default();
        let found = match (&self.snapshot, copies.is_empty()) {
            (Some(hex), false) => {
                let before = crate::snapshot::manifest_by_hex(&self.journal, hex)?;
                heavy::changes(&self.journal, &before, &copies, self.config.snapshot_bytes)?
            }
            _ => Default::default(),
        };
        let apply = changes_by_policy == crate::policy::TrajectoryChanges::Apply
            && !matches!(by, ChosenBy::FirstCompleted { .. });
        let record = TrajectoryChosen {
            child: chosen.child,
            index: chosen.index,
            by,
            apply,
            changes: found.changes,
            left_out: found.left_out,
        };
        self.writer
            .append_payload_durable(&Payload::TrajectoryChosen(record.clone()), &found.blobs)
            .await?;
        self.chosen = Some(record);
        Ok(None)
    }

    /// Ask the model which of `candidates` answered best (again, after a
    /// reply that named none), within the budgets, and journal its reply.
    async fn compare(
        &mut self,
        candidates: &[Candidate],
    ) -> Result<Option<SessionStatus>, AgentError> {
        if let Err(e) = self.ledger.check_step(self.elapsed()) {
            return self.pause(e).await.map(Some);
        }
        let mut messages = vec![Message::text(
            Role::User,
            heavy::comparison_prompt(&self.goal(), candidates),
        )];
        if let Some((_, reply)) = self.comparisons.last() {
            messages.push(Message::text(Role::Assistant, reply.clone()));
            messages.push(Message::text(
                Role::User,
                heavy::ask_again(candidates.len()),
            ));
        }
        // The first request's prompt, or the request to answer again: what
        // the records do not hold yet.
        let new = if self.comparisons.is_empty() { 0 } else { 2 };
        let estimate = context::estimate(&messages, &[]);
        let worst = self
            .price
            .cost_usd(estimate, 0, self.config.max_output_tokens);
        if let Err(e) = self
            .ledger
            .check_model_call(estimate, self.config.max_output_tokens, worst)
        {
            return self.pause(e).await.map(Some);
        }
        self.writer.append_payload(
            &Payload::ModelRequest(NewMessages(messages[new..].to_vec())),
            &[],
        )?;
        let request = ModelRequest {
            messages,
            tools: Vec::new(),
            max_output_tokens: self.config.max_output_tokens,
            step: self.comparisons.len() as u64,
            purpose: Purpose::Compare,
        };
        let response = match self.complete_with_retries(&request).await? {
            Completion::Response(response) => response,
            Completion::OutOfTime(e) => return self.pause(e).await.map(Some),
            Completion::Interrupted => {
                return Ok(Some(self.steer().await?.unwrap_or(SessionStatus::Halted)));
            }
        };
        let seq = self.writer.next_seq();
        self.record(Payload::ModelResponse(response.clone()))
            .await?;
        charge(&mut self.ledger, &self.price, &response.usage);
        self.ledger.record_step();
        self.comparisons
            .push((seq, response.message.content.unwrap_or_default()));
        Ok(None)
    }
}

/// The copies a trajectory child works in, to be made before its first
/// record; none for a child that is not a trajectory or copies nothing.
pub(super) fn copies_of(started: &ChildStarted, snapshot: Option<&String>) -> Option<Copies> {
    let trajectory = started.trajectory.as_ref()?;
    if trajectory.copies.is_empty() {
        return None;
    }
    Some(Copies {
        snapshot: snapshot?.clone(),
        copies: trajectory.copies.clone(),
    })
}
