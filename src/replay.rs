//! `longrun replay`: the auditor's commands, a thin layer over
//! `longrun-replay`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use longrun_host::agent::{AgentConfig, Resumed, Session};
use longrun_replay::{audit, copy, export, reexecute, stats, summary, timeline};

use crate::{JournalDir, ModelArgs, ToolsDir, drive};

#[derive(Subcommand)]
pub enum ReplayCommand {
    /// The sessions: status, steps, tool calls, tokens, cost, start and
    /// last record, policy hash, and the head (for `verify --anchor`).
    List {
        /// Print JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Each child session under the session that started it.
        #[arg(long)]
        tree: bool,
        #[command(flatten)]
        journal: JournalDir,
    },
    /// A session's timeline: model turns with reasoning, tool calls and
    /// results, refusals, approvals, compactions, budget events, errors.
    Show {
        session: u64,
        /// The first record shown.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// The last record shown.
        #[arg(long)]
        to: Option<u64>,
        /// One JSON array of the records.
        #[arg(long, conflicts_with = "jsonl")]
        json: bool,
        /// The stable export: one record per line (see README, "Replay").
        #[arg(long)]
        jsonl: bool,
        /// Write out blobs (long tool outputs) in full.
        #[arg(long)]
        blobs: bool,
        /// Then the timeline of each child session it started, and of
        /// theirs (the text timeline only).
        #[arg(long, conflicts_with_all = ["json", "jsonl"])]
        follow: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        journal: JournalDir,
    },
    /// Check the hash chain and blobs, and every tool call against the
    /// policy recorded at the session's start (tool allowed, approval given,
    /// arguments valid against the recorded schema, budgets never exceeded).
    /// Exits 0 only when all holds; otherwise names the first bad record.
    Verify {
        #[arg(required_unless_present = "all")]
        session: Option<u64>,
        /// Every session of the journal.
        #[arg(long, conflicts_with = "session")]
        all: bool,
        /// SEQ:HASH, a head `list` printed earlier: record SEQ must exist
        /// with this hash (so records deleted from the end are found).
        #[arg(long, conflicts_with = "all")]
        anchor: Option<longrun_replay::audit::Anchor>,
        #[command(flatten)]
        journal: JournalDir,
    },
    /// Run every recorded tool call again in the sandbox, with the recorded
    /// arguments, against scratch mounts rebuilt from the journal's
    /// snapshot; report each call whose result differs (exit 1 if any).
    Reexecute {
        session: u64,
        /// Compare the calls whose results are at or after this record (the
        /// calls before it still run, to rebuild the state).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this record.
        #[arg(long)]
        to: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Run calls of tools with external effects again (an HTTP POST is
        /// sent again). Without it their recorded results stand in and no
        /// call reaches the network.
        #[arg(long)]
        live_effects: bool,
        /// With --live-effects: a loopback, private or link-local
        /// `host:port` the calls may reach (the recorded policy cannot grant
        /// those to an auditor's machine). Repeatable.
        #[arg(
            long = "allow-net",
            value_name = "HOST:PORT",
            requires = "live_effects"
        )]
        allow_net: Vec<longrun_host::policy::HostPattern>,
        #[command(flatten)]
        journal: JournalDir,
        #[command(flatten)]
        tools: ToolsDir,
    },
    /// Start a new session from a session's state at a record and run it
    /// (a what-if run) in a workspace of its own, rebuilt as the mounts were
    /// at that record. Both sessions record the link. Writes to the journal.
    Fork {
        session: u64,
        /// The last record the fork shares with its parent.
        #[arg(long)]
        at: u64,
        /// The model the fork runs on (as for `run`).
        #[command(flatten)]
        model: ModelArgs,
        /// Where the fork's mounts are rebuilt (default:
        /// .longrun/forks/SESSION-at-STEP); must be empty or absent.
        #[arg(long)]
        workspace: Option<PathBuf>,
        #[command(flatten)]
        journal: JournalDir,
        #[command(flatten)]
        tools: ToolsDir,
    },
    /// Calls, errors and time per tool; tokens and cost over time.
    Stats {
        session: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        journal: JournalDir,
    },
}

#[derive(clap::Args)]
pub struct Output {
    /// Never page long output through $PAGER (or `less`) on a terminal.
    #[arg(long)]
    no_pager: bool,
}

pub async fn replay(command: ReplayCommand) -> Result<ExitCode> {
    match command {
        ReplayCommand::List {
            json,
            tree,
            journal,
        } => list(json, tree, &journal),
        ReplayCommand::Show {
            session,
            from,
            to,
            json,
            jsonl,
            blobs,
            follow,
            output,
            journal,
        } => {
            let copy = open(&journal)?;
            let journal = &copy.journal;
            let (first, _) = longrun_replay::created(journal, session)?;
            let records = longrun_replay::records_between(journal, session, from, to);
            let with_blobs = blobs.then_some(&**journal);
            if jsonl || json {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                if json {
                    let all = records
                        .map(|r| export::export(&r?, with_blobs))
                        .collect::<Result<Vec<_>, _>>()?;
                    serde_json::to_writer_pretty(&mut out, &all)?;
                    writeln!(out)?;
                } else {
                    for record in records {
                        writeln!(out, "{}", export::to_line(&record?, with_blobs)?)?;
                    }
                }
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let style = timeline::Style {
                colour: colour(),
                expand_blobs: blobs,
            };
            let mut text = String::new();
            timeline_text(journal, records, first.unix_millis, style, &mut text)?;
            if follow {
                follow_children(journal, session, style, &mut text)?;
            }
            page(&text, output.no_pager)?;
            Ok(ExitCode::SUCCESS)
        }
        ReplayCommand::Verify {
            session,
            all,
            anchor,
            journal,
        } => {
            let copy = open(&journal)?;
            let sessions = match session {
                Some(session) => vec![session],
                None if all => copy.journal.sessions()?,
                None => bail!("name a session, or pass --all"),
            };
            let bar = longrun_replay::progress(sessions.len() as u64, "verifying");
            let mut failed = 0;
            for session in &sessions {
                match audit::verify(&copy.journal, *session, anchor) {
                    Ok(verified) => {
                        bar.suspend(|| {
                            println!(
                                "session {session}: ok ({} records, {} tool calls checked against the recorded policy)",
                                verified.records, verified.tool_calls
                            );
                            for warning in &verified.warnings {
                                println!("  warning: {warning}");
                            }
                        });
                    }
                    Err(bad) => {
                        failed += 1;
                        bar.suspend(|| println!("{bad}"));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ReplayCommand::Reexecute {
            session,
            from,
            to,
            json,
            live_effects,
            allow_net,
            journal,
            tools,
        } => {
            let copy = open(&journal)?;
            let toolbox = tools.load().await?;
            let scratch = tempfile::Builder::new()
                .prefix("longrun-reexecute-")
                .tempdir()
                .context("creating the scratch mounts")?;
            let live = if live_effects {
                reexecute::LiveEffects::Live { allow: allow_net }
            } else {
                reexecute::LiveEffects::Recorded
            };
            let report = reexecute::reexecute(
                &copy.journal,
                session,
                &toolbox,
                from,
                to,
                scratch.path(),
                &live,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for warning in &report.warnings {
                    println!("warning: {warning}");
                }
                for skipped in &report.skipped {
                    println!("skipped: {skipped}");
                }
                for stood_in in &report.effects_not_repeated {
                    println!("not repeated: {stood_in}");
                }
                for d in &report.differences {
                    println!(
                        "record {}: {} {} ({})\n  recorded: {}\n  now:      {}",
                        d.seq,
                        d.tool,
                        d.arguments,
                        d.call_id,
                        outcome(&d.recorded),
                        outcome(&d.now)
                    );
                }
                println!(
                    "session {session}: {} calls run again and compared ({} more to rebuild the state), {} differ",
                    report.compared,
                    report.rebuilt,
                    report.differences.len()
                );
            }
            Ok(if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ReplayCommand::Fork {
            session,
            at,
            model,
            workspace,
            journal,
            tools,
        } => {
            let workspace = workspace
                .unwrap_or_else(|| PathBuf::from(format!(".longrun/forks/{session}-at-{at}")));
            if std::fs::read_dir(&workspace).is_ok_and(|mut d| d.next().is_some()) {
                bail!(
                    "the fork's workspace {} is not empty: name another with --workspace",
                    workspace.display()
                );
            }
            let model = model.load().await?;
            let toolbox = tools.load().await?;
            let journal = journal.open()?;
            let fork =
                longrun_replay::fork::fork(&journal, session, at, &toolbox, &workspace).await?;
            eprintln!(
                "forked session {} from session {session} at record {at}; its workspace is {}",
                fork.child,
                workspace.display()
            );
            for warning in &fork.rebuilt.warnings {
                eprintln!("warning: {warning}");
            }
            for d in &fork.rebuilt.differences {
                eprintln!(
                    "warning: rebuilding the workspace, call {} ({}) at record {} gave another result than recorded",
                    d.call_id, d.tool, d.seq
                );
            }
            let policy = fork.rebuilt.scratch_policy;
            match Session::resume(
                &journal,
                fork.child,
                &toolbox,
                &policy,
                model.as_ref(),
                AgentConfig::default(),
            )
            .await?
            {
                Resumed::Session(mut child) => drive(&mut child, &policy).await,
                Resumed::Ended => {
                    eprintln!("the parent had ended by record {at}: the fork has nothing to run");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        ReplayCommand::Stats {
            session,
            json,
            output,
            journal,
        } => {
            let copy = open(&journal)?;
            let stats = stats::stats(&copy.journal, session)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                page(&stats::render(&stats, 20), output.no_pager)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `replay list`: a line per session (each child under its parent with
/// `tree`); exits 1 when a session cannot be read.
fn list(json: bool, tree: bool, journal: &JournalDir) -> Result<ExitCode> {
    let copy = open(journal)?;
    let mut summaries = Vec::new();
    for session in copy.journal.sessions()? {
        // One unreadable session must not hide the others.
        summaries.push((session, summary::summarise(&copy.journal, session)));
    }
    let unreadable = summaries.iter().filter(|(_, s)| s.is_err()).count();
    let rows: Vec<(usize, &summary::SummaryOf<_>)> = if tree {
        summary::tree_order(&summaries)
    } else {
        summaries.iter().map(|s| (0, s)).collect()
    };
    let mut out = String::new();
    if !json {
        out.push_str(&format!(
            "{:<9}  {:<22} {:>7} {:>6} {:>6} {:>10} {:>9} {:>9}  {:<19} {:<19} {:<12} {}\n",
            "session",
            "status",
            "records",
            "steps",
            "calls",
            "tokens in",
            "out",
            "cost $",
            "started (UTC)",
            "last record (UTC)",
            "policy",
            "head"
        ));
    }
    for (depth, (session, summary)) in rows {
        let name = format!("{}{session}", "  ".repeat(depth));
        let s = match summary {
            Ok(s) => s,
            Err(e) if json => {
                let line = serde_json::json!({"session": session, "error": e.to_string()});
                out.push_str(&format!("{line}\n"));
                continue;
            }
            Err(e) => {
                out.push_str(&format!("{name:<9}  unreadable: {e}\n"));
                continue;
            }
        };
        if json {
            out.push_str(&serde_json::to_string(&s)?);
            out.push('\n');
            continue;
        }
        let link = match (s.parent, s.spawned_by) {
            (Some(p), _) => format!("  (fork of {p})"),
            (None, Some(p)) if !tree => format!("  (child of {p})"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{name:<9}  {:<22} {:>7} {:>6} {:>6} {:>10} {:>9} {:>9.4}  {:<19} {:<19} {:<12} {}:{}{link}\n",
            s.status.as_str(),
            s.records,
            s.steps,
            s.tool_calls,
            s.input_tokens,
            s.output_tokens,
            s.cost_usd,
            utc(s.started_unix_millis),
            utc(s.last_unix_millis),
            s.policy_hash.get(..12).unwrap_or(&s.policy_hash),
            s.records.saturating_sub(1),
            s.head,
        ));
    }
    print!("{out}");
    Ok(if unreadable == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The timelines of the sessions under `session`, each after a line that
/// says whose child it is, depth first.
fn follow_children(
    journal: &longrun_host::journal::Journal,
    session: u64,
    style: timeline::Style,
    text: &mut String,
) -> Result<()> {
    let nodes = longrun_host::journal::tree::tree(
        journal,
        session,
        &mut longrun_host::policy::RecordedPrices::default(),
    )?;
    for node in nodes.iter().skip(1) {
        let Some(by) = &node.spawned_by else { continue };
        text.push_str(&format!(
            "\n── session {} (child of session {}, record {}; {}, {}) ──\n",
            node.session,
            by.session,
            by.seq,
            node.model,
            node.status.as_str()
        ));
        let (first, _) = longrun_replay::created(journal, node.session)?;
        let records = longrun_replay::records_between(journal, node.session, 0, None);
        timeline_text(journal, records, first.unix_millis, style, text)?;
    }
    Ok(())
}

/// Append the text timeline of `records` (times from `start_millis`, the
/// session's first record) to `text`.
fn timeline_text(
    journal: &longrun_host::journal::Journal,
    records: impl Iterator<Item = Result<longrun_host::journal::Record, longrun_replay::ReplayError>>,
    start_millis: u64,
    style: timeline::Style,
    text: &mut String,
) -> Result<()> {
    for record in records {
        text.push_str(&timeline::render(&record?, start_millis, journal, style));
    }
    Ok(())
}

fn open(journal: &JournalDir) -> Result<copy::JournalCopy> {
    let location = journal.location()?;
    copy::open_read_only(&location).with_context(|| format!("reading the journal in {location}"))
}

fn outcome(outcome: &reexecute::Outcome) -> String {
    match outcome {
        reexecute::Outcome::Output(output) => output.clone(),
        reexecute::Outcome::Error(error) => format!("error: {error}"),
    }
}

/// Colour when standard output is a terminal and NO_COLOR is not set.
fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Print `text`, through $PAGER (or `less -FRX`) when standard output is a
/// terminal.
fn page(text: &str, no_pager: bool) -> Result<()> {
    if no_pager || !std::io::stdout().is_terminal() {
        print!("{text}");
        return Ok(());
    }
    let pager = std::env::var("PAGER").unwrap_or_else(|_| "less -FRX".into());
    let mut words = pager.split_whitespace();
    let Some(program) = words.next() else {
        print!("{text}");
        return Ok(());
    };
    match std::process::Command::new(program)
        .args(words)
        .stdin(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                // The reader may quit early: a broken pipe is not an error.
                let _ = stdin.write_all(text.as_bytes());
            }
            child.wait()?;
        }
        Err(_) => print!("{text}"),
    }
    Ok(())
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc(unix_millis: u64) -> String {
    let secs = unix_millis / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_written_in_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_478_400_000), "2026-11-24 00:00:00");
        assert_eq!(super::utc(951_825_599_000), "2000-02-29 11:59:59");
    }
}
