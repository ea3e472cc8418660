//! Session budgets: the `[session]` section of a policy, enforced before
//! the money is spent.
//!
//! A [`Ledger`] holds what a session has used. The agent loop asks it before
//! every step, every model call and every tool call; it answers with the
//! first budget that the next action would exceed, so a session stops at its
//! limit, never after it.

use std::time::Duration;

use longrun_journal::payload::Spent;

use crate::policy::{HumanDuration, NonNegative, SessionBudgets};

pub use longrun_journal::payload::BudgetKind;

/// A budget that the next action would exceed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind:?} budget exhausted: {used} used of {limit}")]
pub struct BudgetExceeded {
    pub kind: BudgetKind,
    /// What has been used, as text in the budget's unit.
    pub used: String,
    pub limit: String,
}

/// What a session has used so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub steps: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub wall_time: Duration,
}

impl From<&longrun_journal::state::Used> for Usage {
    /// What a session's records say it used (wall time is the clock's, not
    /// the records').
    fn from(used: &longrun_journal::state::Used) -> Usage {
        Usage {
            steps: used.steps,
            tool_calls: used.tool_calls,
            input_tokens: used.input_tokens,
            output_tokens: used.output_tokens,
            cost_usd: used.cost_usd,
            wall_time: Duration::ZERO,
        }
    }
}

/// Budgets and what has been used against them.
#[derive(Debug, Clone)]
pub struct Ledger {
    budgets: SessionBudgets,
    pub used: Usage,
    /// The budgets whose 80% warning has been given.
    warned: Vec<BudgetKind>,
}

/// A budget that has reached 80% of its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetWarning {
    pub kind: BudgetKind,
    pub used: f64,
    pub limit: f64,
}

/// The share of a budget at which a warning is given.
pub const WARNING_SHARE: f64 = 0.8;

fn check_count(
    kind: BudgetKind,
    used: u64,
    more: u64,
    limit: Option<u64>,
) -> Result<(), BudgetExceeded> {
    match limit {
        Some(limit) if used.saturating_add(more) > limit => Err(BudgetExceeded {
            kind,
            used: used.to_string(),
            limit: limit.to_string(),
        }),
        _ => Ok(()),
    }
}

impl Ledger {
    pub fn new(budgets: SessionBudgets) -> Self {
        Ledger {
            budgets,
            used: Usage::default(),
            warned: Vec::new(),
        }
    }

    /// The budgets that have reached 80% since the last call, each once per
    /// ledger. `elapsed` is the session's wall time so far.
    pub fn new_warnings(&mut self, elapsed: Duration) -> Vec<BudgetWarning> {
        let b = &self.budgets;
        let u = &self.used;
        let candidates = [
            (
                BudgetKind::Steps,
                u.steps as f64,
                b.max_steps.map(|v| v as f64),
            ),
            (
                BudgetKind::ToolCalls,
                u.tool_calls as f64,
                b.max_tool_calls.map(|v| v as f64),
            ),
            (
                BudgetKind::InputTokens,
                u.input_tokens as f64,
                b.max_input_tokens.map(|v| v as f64),
            ),
            (
                BudgetKind::OutputTokens,
                u.output_tokens as f64,
                b.max_output_tokens.map(|v| v as f64),
            ),
            (BudgetKind::Cost, u.cost_usd, b.max_cost_usd.map(|v| v.0)),
            (
                BudgetKind::WallTime,
                elapsed.as_secs_f64(),
                b.max_wall_time.map(|v| v.0.as_secs_f64()),
            ),
        ];
        let mut out = Vec::new();
        for (kind, used, limit) in candidates {
            if let Some(limit) = limit
                && used >= limit * WARNING_SHARE
                && !self.warned.contains(&kind)
            {
                self.warned.push(kind);
                out.push(BudgetWarning { kind, used, limit });
            }
        }
        out
    }

    /// May the session take one more step, given the wall time so far?
    pub fn check_step(&self, elapsed: Duration) -> Result<(), BudgetExceeded> {
        check_count(
            BudgetKind::Steps,
            self.used.steps,
            1,
            self.budgets.max_steps,
        )?;
        if let Some(limit) = self.budgets.max_wall_time
            && elapsed >= limit.0
        {
            return Err(BudgetExceeded {
                kind: BudgetKind::WallTime,
                used: format!("{elapsed:?}"),
                limit: format!("{:?}", limit.0),
            });
        }
        Ok(())
    }

    /// May the session call the model with a prompt of `input_tokens`,
    /// asking for at most `max_output_tokens`, at the given prices?
    pub fn check_model_call(
        &self,
        input_tokens: u64,
        max_output_tokens: u64,
        worst_case_cost_usd: f64,
    ) -> Result<(), BudgetExceeded> {
        check_count(
            BudgetKind::InputTokens,
            self.used.input_tokens,
            input_tokens,
            self.budgets.max_input_tokens,
        )?;
        check_count(
            BudgetKind::OutputTokens,
            self.used.output_tokens,
            max_output_tokens,
            self.budgets.max_output_tokens,
        )?;
        if let Some(limit) = self.budgets.max_cost_usd
            && self.used.cost_usd + worst_case_cost_usd > limit.0
        {
            return Err(BudgetExceeded {
                kind: BudgetKind::Cost,
                used: format!("${:.4}", self.used.cost_usd),
                limit: format!("${:.4}", limit.0),
            });
        }
        Ok(())
    }

    /// May the session run one more tool call?
    pub fn check_tool_call(&self) -> Result<(), BudgetExceeded> {
        check_count(
            BudgetKind::ToolCalls,
            self.used.tool_calls,
            1,
            self.budgets.max_tool_calls,
        )
    }

    /// Whether the next step is the last one in which a tool call could
    /// still do anything: the step budget allows only it (a call made in it
    /// would run, but its result would never reach the model), or no tool
    /// call is left. The agent loop then offers no tools and asks for the
    /// answer, so that the session ends with one instead of a pause.
    pub fn only_an_answer_fits(&self) -> bool {
        self.budgets
            .max_steps
            .is_some_and(|max| self.used.steps.saturating_add(1) >= max)
            || self
                .budgets
                .max_tool_calls
                .is_some_and(|max| self.used.tool_calls >= max)
    }

    pub fn record_step(&mut self) {
        self.used.steps += 1;
    }

    pub fn record_tool_call(&mut self) {
        self.used.tool_calls += 1;
    }

    pub fn record_model_call(&mut self, input_tokens: u64, output_tokens: u64, cost_usd: f64) {
        self.used.input_tokens += input_tokens;
        self.used.output_tokens += output_tokens;
        self.used.cost_usd += cost_usd;
    }

    /// What is left of each budget after `elapsed` of wall time (`None`:
    /// unlimited); the repeated-failure limit as it is.
    pub fn left(&self, elapsed: Duration) -> SessionBudgets {
        let (b, u) = (&self.budgets, &self.used);
        SessionBudgets {
            max_steps: b.max_steps.map(|m| m.saturating_sub(u.steps)),
            max_tool_calls: b.max_tool_calls.map(|m| m.saturating_sub(u.tool_calls)),
            max_input_tokens: b.max_input_tokens.map(|m| m.saturating_sub(u.input_tokens)),
            max_output_tokens: b
                .max_output_tokens
                .map(|m| m.saturating_sub(u.output_tokens)),
            max_cost_usd: b
                .max_cost_usd
                .map(|m| NonNegative((m.0 - u.cost_usd).max(0.0))),
            max_wall_time: b
                .max_wall_time
                .map(|m| HumanDuration(m.0.saturating_sub(elapsed))),
            max_repeated_failures: b.max_repeated_failures,
        }
    }

    /// Count what a child spent, or what was reserved for it, as spent.
    /// Steps are each session's own (numbered model calls): a child's are
    /// capped by what the parent has left, not counted.
    pub fn charge(&mut self, spent: &Spent) {
        self.used.tool_calls += spent.tool_calls;
        self.used.input_tokens += spent.input_tokens;
        self.used.output_tokens += spent.output_tokens;
        self.used.cost_usd += spent.cost_usd;
    }

    /// Take back what [`Ledger::charge`] counted (a reservation, once the
    /// child's real spending replaces it).
    pub fn refund(&mut self, spent: &Spent) {
        let u = &mut self.used;
        u.tool_calls = u.tool_calls.saturating_sub(spent.tool_calls);
        u.input_tokens = u.input_tokens.saturating_sub(spent.input_tokens);
        u.output_tokens = u.output_tokens.saturating_sub(spent.output_tokens);
        u.cost_usd = (u.cost_usd - spent.cost_usd).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{HumanDuration, NonNegative};

    fn ledger(budgets: SessionBudgets) -> Ledger {
        Ledger::new(budgets)
    }

    #[test]
    fn max_steps_allows_exactly_that_many_steps() {
        let mut l = ledger(SessionBudgets {
            max_steps: Some(2),
            ..Default::default()
        });
        for _ in 0..2 {
            l.check_step(Duration::ZERO).unwrap();
            l.record_step();
        }
        assert_eq!(
            l.check_step(Duration::ZERO).unwrap_err().kind,
            BudgetKind::Steps
        );
    }

    #[test]
    fn only_an_answer_fits_in_the_last_step_or_once_the_tool_calls_are_spent() {
        let mut steps = Ledger::new(SessionBudgets {
            max_steps: Some(3),
            ..Default::default()
        });
        steps.record_step();
        assert!(!steps.only_an_answer_fits(), "steps 2 and 3 are left");
        steps.record_step();
        assert!(steps.only_an_answer_fits(), "step 3 is the last");

        let mut calls = Ledger::new(SessionBudgets {
            max_tool_calls: Some(1),
            ..Default::default()
        });
        assert!(!calls.only_an_answer_fits());
        calls.record_tool_call();
        assert!(calls.only_an_answer_fits());

        let mut unlimited = Ledger::new(SessionBudgets::default());
        for _ in 0..1000 {
            unlimited.record_step();
            unlimited.record_tool_call();
        }
        assert!(!unlimited.only_an_answer_fits());
    }

    #[test]
    fn max_tool_calls_refuses_the_call_past_the_limit() {
        let mut l = ledger(SessionBudgets {
            max_tool_calls: Some(1),
            ..Default::default()
        });
        l.check_tool_call().unwrap();
        l.record_tool_call();
        assert_eq!(l.check_tool_call().unwrap_err().kind, BudgetKind::ToolCalls);
    }

    #[test]
    fn token_budgets_refuse_a_model_call_that_could_exceed_them() {
        let l = ledger(SessionBudgets {
            max_input_tokens: Some(100),
            max_output_tokens: Some(50),
            ..Default::default()
        });
        l.check_model_call(100, 50, 0.0).unwrap();
        assert_eq!(
            l.check_model_call(101, 1, 0.0).unwrap_err().kind,
            BudgetKind::InputTokens
        );
        assert_eq!(
            l.check_model_call(1, 51, 0.0).unwrap_err().kind,
            BudgetKind::OutputTokens
        );
    }

    #[test]
    fn cost_budget_counts_what_was_spent_and_the_worst_case_of_the_next_call() {
        let mut l = ledger(SessionBudgets {
            max_cost_usd: Some(NonNegative(1.0)),
            ..Default::default()
        });
        l.record_model_call(10, 10, 0.75);
        l.check_model_call(1, 1, 0.25).unwrap();
        assert_eq!(
            l.check_model_call(1, 1, 0.26).unwrap_err().kind,
            BudgetKind::Cost
        );
    }

    #[test]
    fn a_warning_is_given_once_when_a_budget_reaches_80_percent() {
        let mut l = ledger(SessionBudgets {
            max_steps: Some(10),
            ..Default::default()
        });
        for _ in 0..7 {
            l.record_step();
        }
        assert!(l.new_warnings(Duration::ZERO).is_empty());
        l.record_step();
        let warnings = l.new_warnings(Duration::ZERO);
        assert_eq!(
            warnings,
            vec![BudgetWarning {
                kind: BudgetKind::Steps,
                used: 8.0,
                limit: 10.0
            }]
        );
        l.record_step();
        assert!(l.new_warnings(Duration::ZERO).is_empty(), "once only");
    }

    #[test]
    fn wall_time_budget_stops_the_step_at_the_limit() {
        let l = ledger(SessionBudgets {
            max_wall_time: Some(HumanDuration(Duration::from_secs(60))),
            ..Default::default()
        });
        l.check_step(Duration::from_secs(59)).unwrap();
        assert_eq!(
            l.check_step(Duration::from_secs(60)).unwrap_err().kind,
            BudgetKind::WallTime
        );
    }
}
