//! Whether one policy is a narrowing of another: what a child session may
//! be started under, given its parent's policy (issue 19's planner and
//! workers). A child may do less than its parent and never more:
//!
//! - tools: every tool of the toolbox the child may call, the parent may
//!   call; every tool the parent runs only once a person approves, the
//!   child runs only once approved too;
//! - mounts: each of the child's lies at or beneath one of the parent's
//!   (by host path, with no `..` and no `.`), and a read-only one stays
//!   read-only; a child may make only the links its parent may make;
//! - network: each `host:port` the child may reach, the parent may reach
//!   (an exact name under a parent's `*.suffix`, a subdomain pattern under
//!   an equal or wider one, an IP literal only under the same literal);
//! - limits: for every tool, each per-call limit at most the parent's;
//! - budgets: each at most what the parent has left (a budget the parent
//!   has, the child must have too); repeated failures at most the parent's;
//! - prices: the parent's, exactly, so that a child cannot make its spending
//!   look cheaper than its parent would count it.
//!
//! Mount containment is checked here on the paths as written; a host that
//! starts a child must still open the child's mounts beneath the parent's
//! directory handles, without following links, so that a link inside the
//! parent's mount cannot point the child elsewhere.

use std::path::{Component, Path};

use crate::policy::{Access, HostMatch, HostPattern, Policy, SessionBudgets, Symlinks};

/// How a child's policy is wider than its parent's: each way, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the child's policy is wider than its parent's: {}", .0.join("; "))]
pub struct Widening(pub Vec<String>);

/// Check that `child` narrows `parent` for a toolbox of `tools`, with the
/// parent's budgets `left` (what it has not used or reserved).
pub fn check(
    child: &Policy,
    parent: &Policy,
    tools: &[&str],
    left: &SessionBudgets,
) -> Result<(), Widening> {
    let mut wider = Vec::new();
    tools_narrow(child, parent, tools, &mut wider);
    mounts_narrow(child, parent, &mut wider);
    network_narrows(child, parent, &mut wider);
    limits_narrow(child, parent, tools, &mut wider);
    budgets_narrow(&child.session, left, &parent.session, &mut wider);
    children_narrow(child, parent, &mut wider);
    if child.prices != parent.prices {
        wider.push("[prices] differ from the parent's (a child pays what its parent pays)".into());
    }
    if wider.is_empty() {
        Ok(())
    } else {
        Err(Widening(wider))
    }
}

/// What a parent asks for a child beyond its goal and model. Each part
/// narrows the parent's policy; a part left out is the parent's (for a
/// budget: all the parent has left).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildRequest {
    /// Tool-name patterns the child may call.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// The child's mounts, each at or beneath one of the parent's.
    #[serde(default)]
    pub mounts: Option<Vec<ChildMount>>,
    #[serde(default)]
    pub budgets: ChildBudgets,
}

/// A mount of a child: `path`, a guest path at or beneath one of the
/// parent's mounts, with `access` (never more than the parent's).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildMount {
    pub path: String,
    pub access: Access,
}

/// The budgets a parent gives a child, out of what it has left.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildBudgets {
    pub max_steps: Option<u64>,
    pub max_tool_calls: Option<u64>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
    pub max_cost_usd: Option<f64>,
}

/// Why a child was not started: what it asked for is not a policy, or not a
/// narrowing of its parent's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChildRefused {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Wider(#[from] Widening),
}

/// The policy a child runs under: the parent's, narrowed as `request` asks
/// (a budget it leaves out is `share`), written out as a policy text of its
/// own (what the child's journal records) and checked to narrow the
/// parent's ([`check`]) for a toolbox of `tools`, with the parent's budgets
/// `left`.
pub fn derive(
    parent: &Policy,
    request: &ChildRequest,
    tools: &[&str],
    left: &SessionBudgets,
    share: &SessionBudgets,
) -> Result<Policy, ChildRefused> {
    let mut child = parent.clone();
    if let Some(patterns) = &request.tools {
        child.tools.allow = patterns
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, String>>()
            .map_err(ChildRefused::Invalid)?;
    }
    if let Some(mounts) = &request.mounts {
        child.filesystem = mounts
            .iter()
            .map(|m| child_mount(parent, m))
            .collect::<Result<_, _>>()?;
    }
    let b = &request.budgets;
    let s = &mut child.session;
    s.max_steps = b.max_steps.or(share.max_steps);
    s.max_tool_calls = b.max_tool_calls.or(share.max_tool_calls);
    s.max_input_tokens = b.max_input_tokens.or(share.max_input_tokens);
    s.max_output_tokens = b.max_output_tokens.or(share.max_output_tokens);
    s.max_cost_usd = match b.max_cost_usd {
        Some(cost) if cost.is_finite() && cost >= 0.0 => Some(crate::policy::NonNegative(cost)),
        Some(cost) => {
            return Err(ChildRefused::Invalid(format!(
                "max_cost_usd {cost}: a finite amount of at least 0"
            )));
        }
        None => share.max_cost_usd,
    };
    s.max_wall_time = left.max_wall_time;
    child.children = parent.children.as_ref().and_then(|c| c.for_child());
    // Parsed back from its own text, so that what the journal records is
    // exactly what the child runs under.
    let text = child.render();
    let child = Policy::parse(&text, "the child's policy", Path::new("/"))
        .map_err(|e| ChildRefused::Invalid(e.to_string()))?;
    check(&child, parent, tools, left)?;
    Ok(child)
}

/// The mount a child asked for, beneath the parent's mount that holds it.
fn child_mount(parent: &Policy, asked: &ChildMount) -> Result<crate::policy::Mount, ChildRefused> {
    let outer = parent.filesystem.iter().find_map(|m| {
        let rest = asked.path.strip_prefix(m.guest.as_str())?;
        match rest.strip_prefix('/') {
            _ if rest.is_empty() => Some((m, "")),
            Some(rest) => Some((m, rest)),
            None => None,
        }
    });
    let Some((outer, rest)) = outer else {
        return Err(ChildRefused::Wider(Widening(vec![format!(
            "mount {} is not at or beneath any of the parent's mounts",
            asked.path
        )])));
    };
    if rest.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(ChildRefused::Invalid(format!(
            "mount {}: no `.` or `..` in a path",
            asked.path
        )));
    }
    let host = if rest.is_empty() {
        outer.host.clone()
    } else {
        outer.host.join(rest)
    };
    let mut mount = crate::policy::Mount::new(host, asked.path.clone(), asked.access);
    mount.symlinks = outer.symlinks;
    Ok(mount)
}

fn children_narrow(child: &Policy, parent: &Policy, wider: &mut Vec<String>) {
    let Some(c) = &child.children else {
        return;
    };
    let Some(p) = &parent.children else {
        wider.push("[children]: the parent may start no children".into());
        return;
    };
    for model in &c.models {
        if !p.models.contains(model) {
            wider.push(format!(
                "[children] model {model:?} is not among the parent's"
            ));
        }
    }
    if c.max_concurrent > p.max_concurrent || c.max_children > p.max_children {
        wider.push("[children]: more children than the parent may have".into());
    }
    if c.trajectory_changes == crate::policy::TrajectoryChanges::Apply
        && p.trajectory_changes == crate::policy::TrajectoryChanges::Propose
    {
        wider.push(
            "[children]: trajectory changes applied where the parent's are only proposed".into(),
        );
    }
    if c.max_depth >= p.max_depth {
        wider.push("[children]: a child's generations must be fewer than its parent's".into());
    }
}

fn tools_narrow(child: &Policy, parent: &Policy, tools: &[&str], wider: &mut Vec<String>) {
    use crate::policy::Decision;
    for tool in tools {
        match (child.decide(tool), parent.decide(tool)) {
            (Decision::Deny(_), _) => {}
            (_, Decision::Deny(_)) => wider.push(format!(
                "tool {tool:?} is allowed, and the parent may not call it"
            )),
            (Decision::Allow, Decision::NeedsApproval(_)) => wider.push(format!(
                "tool {tool:?} runs without approval, and the parent's needs a person's"
            )),
            (Decision::Allow | Decision::NeedsApproval(_), _) => {}
        }
    }
}

fn mounts_narrow(child: &Policy, parent: &Policy, wider: &mut Vec<String>) {
    for mount in &child.filesystem {
        let within = parent
            .filesystem
            .iter()
            .find(|p| beneath(&mount.host, &p.host));
        let Some(outer) = within else {
            wider.push(format!(
                "mount {} ({}) is not at or beneath any of the parent's mounts",
                mount.guest,
                mount.host.display()
            ));
            continue;
        };
        if mount.access == Access::ReadWrite && outer.access == Access::ReadOnly {
            wider.push(format!(
                "mount {} is read-write, and the parent's {} is read-only",
                mount.guest, outer.guest
            ));
        }
        if mount.symlinks == Symlinks::Any && outer.symlinks != Symlinks::Any {
            wider.push(format!(
                "mount {} lets tools make any link, and the parent's {} only links within it",
                mount.guest, outer.guest
            ));
        }
    }
}

/// Whether `inner` is `outer` or beneath it, as written: both absolute,
/// `inner` with only plain names after `outer`'s components.
fn beneath(inner: &Path, outer: &Path) -> bool {
    let plain = |p: &Path| {
        p.is_absolute()
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
    };
    plain(inner) && plain(outer) && inner.starts_with(outer)
}

fn network_narrows(child: &Policy, parent: &Policy, wider: &mut Vec<String>) {
    for entry in &child.network.allow {
        if !parent.network.allow.iter().any(|p| covers(p, entry)) {
            wider.push(format!(
                "network entry {entry} is not within the parent's [network] allow"
            ));
        }
    }
}

/// Whether every `host:port` that `inner` allows, `outer` allows.
fn covers(outer: &HostPattern, inner: &HostPattern) -> bool {
    match (&outer.host, &inner.host) {
        (_, HostMatch::Exact(name)) => outer.matches(name, inner.port),
        (HostMatch::Ip(o), HostMatch::Ip(i)) => o == i && outer.port == inner.port,
        (HostMatch::Subdomains(o), HostMatch::Subdomains(i)) => {
            outer.port == inner.port
                && (o == i
                    || i.strip_suffix(o.as_str())
                        .is_some_and(|rest| rest.ends_with('.')))
        }
        _ => false,
    }
}

fn limits_narrow(child: &Policy, parent: &Policy, tools: &[&str], wider: &mut Vec<String>) {
    for tool in tools {
        let (c, p) = (child.limits_for(tool), parent.limits_for(tool));
        let over = [
            ("timeout", c.timeout > p.timeout),
            ("memory", c.memory > p.memory),
            ("max_output", c.max_output > p.max_output),
            ("max_args", c.max_args > p.max_args),
            ("max_log", c.max_log > p.max_log),
        ];
        for (limit, more) in over {
            if more {
                wider.push(format!("tool {tool:?}: {limit} is above the parent's"));
            }
        }
    }
}

fn budgets_narrow(
    child: &SessionBudgets,
    left: &SessionBudgets,
    parent: &SessionBudgets,
    wider: &mut Vec<String>,
) {
    fn within<T: PartialOrd + std::fmt::Debug>(
        name: &str,
        child: Option<T>,
        left: Option<T>,
        wider: &mut Vec<String>,
    ) {
        match (child, left) {
            (_, None) => {}
            (None, Some(left)) => wider.push(format!(
                "{name} is unlimited, and the parent has {left:?} left"
            )),
            (Some(child), Some(left)) if child > left => wider.push(format!(
                "{name} {child:?} is more than the parent's {left:?} left"
            )),
            (Some(_), Some(_)) => {}
        }
    }
    within("max_steps", child.max_steps, left.max_steps, wider);
    within(
        "max_tool_calls",
        child.max_tool_calls,
        left.max_tool_calls,
        wider,
    );
    within(
        "max_input_tokens",
        child.max_input_tokens,
        left.max_input_tokens,
        wider,
    );
    within(
        "max_output_tokens",
        child.max_output_tokens,
        left.max_output_tokens,
        wider,
    );
    within(
        "max_cost_usd",
        child.max_cost_usd.map(|c| c.0),
        left.max_cost_usd.map(|c| c.0),
        wider,
    );
    within(
        "max_wall_time",
        child.max_wall_time.map(|t| t.0),
        left.max_wall_time.map(|t| t.0),
        wider,
    );
    within(
        "max_repeated_failures",
        Some(child.repeated_failures_allowed()),
        Some(parent.repeated_failures_allowed()),
        wider,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOLS: &[&str] = &["fs_read", "fs_write", "http_get"];

    const PARENT: &str = r#"
[session]
max_steps = 20
max_cost_usd = 1.0

[tools]
allow = ["fs_*", "http_get"]
approve = ["fs_write"]

[[filesystem]]
host = "data"
guest = "/data"
access = "read-only"

[[filesystem]]
host = "work"
guest = "/workspace"
access = "read-write"

[network]
allow = ["*.example.com:443", "api.test:443", "10.0.0.1:8080"]

[limits]
timeout = "10s"
"#;

    fn policy(text: &str) -> Policy {
        Policy::parse_recorded(text, "test", Path::new("/srv")).unwrap()
    }

    /// The parent with `[session]` replaced by `session` and `rest` added.
    fn child(session: &str, rest: &str) -> Policy {
        let body = PARENT.replace(
            "[session]\nmax_steps = 20\nmax_cost_usd = 1.0\n",
            &format!("[session]\n{session}\n"),
        );
        policy(&format!("{body}{rest}"))
    }

    fn narrows(child: &Policy) -> Result<(), Widening> {
        let parent = policy(PARENT);
        check(child, &parent, TOOLS, &parent.session)
    }

    fn widening(child: &Policy) -> String {
        narrows(child).expect_err("wider").to_string()
    }

    const BUDGETS: &str = "max_steps = 5\nmax_cost_usd = 0.5";

    #[test]
    fn the_parents_own_policy_and_a_smaller_one_narrow_it() {
        assert_eq!(
            narrows(&child("max_steps = 20\nmax_cost_usd = 1.0", "")),
            Ok(())
        );
        let smaller = policy(
            r#"
[session]
max_steps = 3
max_cost_usd = 0.1
[tools]
allow = ["fs_read"]
[[filesystem]]
host = "work/sub"
guest = "/workspace"
access = "read-only"
[network]
allow = ["docs.example.com:443"]
[limits]
timeout = "1s"
"#,
        );
        assert_eq!(narrows(&smaller), Ok(()));
    }

    #[test]
    fn a_tool_the_parent_may_not_call_or_that_skips_its_approval_is_wider() {
        let more_tools =
            policy(&PARENT.replace(r#"allow = ["fs_*", "http_get"]"#, r#"allow = ["*"]"#));
        // The toolbox has no tool outside the parent's list: no widening.
        assert_eq!(narrows(&more_tools), Ok(()));
        let parent = policy(PARENT);
        let wider = check(
            &more_tools,
            &parent,
            &["fs_read", "notes_add"],
            &parent.session,
        )
        .unwrap_err()
        .to_string();
        assert!(wider.contains("\"notes_add\" is allowed"), "{wider}");

        let no_approval = policy(&PARENT.replace("approve = [\"fs_write\"]\n", ""));
        assert!(widening(&no_approval).contains("\"fs_write\" runs without approval"));
    }

    #[test]
    fn a_mount_outside_the_parents_or_writable_where_it_was_read_only_is_wider() {
        for (from, to, says) in [
            (
                "host = \"data\"",
                "host = \"elsewhere\"",
                "not at or beneath",
            ),
            (
                "host = \"data\"",
                "host = \"data/../etc\"",
                "not at or beneath",
            ),
            ("host = \"work\"", "host = \"/\"", "not at or beneath"),
            (
                "guest = \"/data\"\naccess = \"read-only\"",
                "guest = \"/data\"\naccess = \"read-write\"",
                "read-write, and the parent's /data is read-only",
            ),
            (
                "guest = \"/workspace\"\naccess = \"read-write\"",
                "guest = \"/workspace\"\naccess = \"read-write\"\nsymlinks = \"any\"",
                "any link",
            ),
        ] {
            let wider = policy(&PARENT.replace(from, to));
            let said = widening(&wider);
            assert!(said.contains(says), "{to}: {said}");
        }
    }

    #[test]
    fn a_network_entry_the_parent_does_not_cover_is_wider() {
        for (entry, covered) in [
            ("a.example.com:443", true),
            ("*.b.example.com:443", true),
            ("*.example.com:443", true),
            ("api.test:443", true),
            ("10.0.0.1:8080", true),
            ("example.com:443", false),
            ("a.example.com:80", false),
            ("*.com:443", false),
            ("x.api.test:443", false),
            ("10.0.0.2:8080", false),
            ("evil-example.com:443", false),
        ] {
            let child = policy(&PARENT.replace(
                r#"allow = ["*.example.com:443", "api.test:443", "10.0.0.1:8080"]"#,
                &format!("allow = [\"{entry}\"]"),
            ));
            assert_eq!(narrows(&child).is_ok(), covered, "{entry}");
        }
    }

    #[test]
    fn a_per_call_limit_above_the_parents_is_wider() {
        let longer = policy(&PARENT.replace("timeout = \"10s\"", "timeout = \"11s\""));
        assert!(widening(&longer).contains("timeout is above"));
        let overridden = policy(&format!(
            "{PARENT}\n[overrides.http_get]\nmax_output = \"2MiB\"\n"
        ));
        assert!(widening(&overridden).contains("\"http_get\": max_output is above"));
    }

    #[test]
    fn budgets_come_out_of_what_the_parent_has_left() {
        let parent = policy(PARENT);
        let mut left = parent.session.clone();
        left.max_steps = Some(4);
        let five = child(BUDGETS, "");
        let wider = check(&five, &parent, TOOLS, &left).unwrap_err().to_string();
        assert!(
            wider.contains("max_steps 5 is more than the parent's 4 left"),
            "{wider}"
        );
        left.max_steps = Some(5);
        assert_eq!(check(&five, &parent, TOOLS, &left), Ok(()));
        // A budget the parent has, the child must have.
        let unlimited = child("max_steps = 5", "");
        assert!(widening(&unlimited).contains("max_cost_usd is unlimited"));
        let repeats = child(&format!("{BUDGETS}\nmax_repeated_failures = 9"), "");
        assert!(widening(&repeats).contains("max_repeated_failures"));
    }

    #[test]
    fn prices_other_than_the_parents_are_wider() {
        let cheaper = child(
            BUDGETS,
            "[prices.scripted]\ninput_per_million = 0.0\noutput_per_million = 0.0\n",
        );
        assert!(widening(&cheaper).contains("[prices]"));
    }

    /// The fields of a policy that decide what it allows, for comparing a
    /// policy with its rendered and re-parsed self.
    fn meaning(p: &Policy) -> String {
        let mounts: Vec<String> = p
            .filesystem
            .iter()
            .map(|m| format!("{:?} {} {:?} {:?}", m.host, m.guest, m.access, m.symlinks))
            .collect();
        let limits: Vec<String> = TOOLS
            .iter()
            .map(|t| format!("{:?}", p.limits_for(t)))
            .collect();
        format!(
            "{:?}\n{:?}\n{mounts:?}\n{:?}\n{:?}\n{limits:?}\n{:?}",
            p.session, p.limits, p.network, p.tools, p.prices
        )
    }

    #[test]
    fn a_rendered_policy_parses_back_to_the_same_rules() {
        let text = format!(
            "{PARENT}max_output = \"2MiB\"\n\n[overrides.http_get]\ntimeout = \"3s\"\n\n\
             [prices.\"org/model.v1\"]\ninput_per_million = 0.5\noutput_per_million = 1.25\n\
             cached_input_per_million = 0.125\n"
        )
        .replace(
            "max_cost_usd = 1.0",
            "max_cost_usd = 1.0\nmax_wall_time = \"90s\"\nmax_repeated_failures = 4",
        );
        let policy = policy(&text);
        let rendered = policy.render();
        let again = Policy::parse_recorded(&rendered, "rendered", Path::new("/elsewhere")).unwrap();
        assert_eq!(meaning(&again), meaning(&policy), "{rendered}");
        // Mount paths are absolute in the text: no base directory needed.
        assert!(rendered.contains("host = \"/srv/data\""), "{rendered}");
    }

    /// A parent whose mounts are real directories (`data/sub` inside the
    /// read-only one), for deriving children.
    fn real_parent() -> (tempfile::TempDir, Policy) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["data/sub", "work/sub"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let parent = Policy::parse(PARENT, "parent", dir.path()).unwrap();
        (dir, parent)
    }

    fn derived(request: serde_json::Value) -> Result<Policy, ChildRefused> {
        let (_dir, parent) = real_parent();
        let request: ChildRequest = serde_json::from_value(request).unwrap();
        derive(&parent, &request, TOOLS, &parent.session, &parent.session)
    }

    #[test]
    fn a_child_gets_the_tools_mounts_and_budgets_it_asks_for_within_its_parents() {
        let (dir, parent) = real_parent();
        let request: ChildRequest = serde_json::from_value(serde_json::json!({
            "tools": ["fs_read"],
            "mounts": [{"path": "/workspace/sub", "access": "read-write"}],
            "budgets": {"max_steps": 4},
        }))
        .unwrap();
        let mut left = parent.session.clone();
        left.max_cost_usd = Some(crate::policy::NonNegative(0.25));
        let child = derive(&parent, &request, TOOLS, &left, &left).unwrap();
        assert_eq!(child.session.max_steps, Some(4));
        // A budget it did not ask for is its share (here: all that is left).
        assert_eq!(child.session.max_cost_usd.map(|c| c.0), Some(0.25));
        assert!(matches!(
            child.decide("fs_read"),
            crate::policy::Decision::Allow
        ));
        assert!(matches!(
            child.decide("http_get"),
            crate::policy::Decision::Deny(_)
        ));
        assert_eq!(child.filesystem.len(), 1);
        let mount = &child.filesystem[0];
        assert_eq!(mount.host, dir.path().join("work/sub"));
        assert_eq!(
            (mount.guest.as_str(), mount.access),
            ("/workspace/sub", Access::ReadWrite)
        );
        // What it records is what it runs under.
        let recorded = Policy::parse(&child.text, "recorded", Path::new("/")).unwrap();
        assert_eq!(meaning(&recorded), meaning(&child));
        // Asking for nothing gives the parent's policy, budgets and all.
        let same = derive(
            &parent,
            &ChildRequest::default(),
            TOOLS,
            &parent.session,
            &parent.session,
        )
        .unwrap();
        assert_eq!(meaning(&same), meaning(&parent));
    }

    #[test]
    fn a_child_that_asks_for_more_than_its_parent_has_is_refused() {
        for (request, says) in [
            (
                serde_json::json!({"budgets": {"max_steps": 21}}),
                "max_steps 21 is more than the parent's 20 left",
            ),
            (
                serde_json::json!({"budgets": {"max_cost_usd": 1.5}}),
                "max_cost_usd 1.5 is more than",
            ),
            (
                serde_json::json!({"mounts": [{"path": "/data/sub", "access": "read-write"}]}),
                "read-write, and the parent's /data is read-only",
            ),
            (
                serde_json::json!({"mounts": [{"path": "/etc", "access": "read-only"}]}),
                "mount /etc is not at or beneath",
            ),
            (
                serde_json::json!({"mounts": [{"path": "/workspacex", "access": "read-only"}]}),
                "mount /workspacex is not at or beneath",
            ),
            (
                serde_json::json!({"mounts": [{"path": "/data/../etc", "access": "read-only"}]}),
                "no `.` or `..`",
            ),
            (serde_json::json!({"tools": ["notes_*", "fs_read"]}), ""),
            (
                serde_json::json!({"tools": ["fs read"]}),
                "invalid tool pattern",
            ),
            (
                serde_json::json!({"budgets": {"max_cost_usd": -1.0}}),
                "at least 0",
            ),
        ] {
            match derived(request.clone()) {
                // A pattern that matches no tool of the toolbox is no wider.
                Ok(_) if says.is_empty() => {}
                Ok(_) => panic!("{request}: started"),
                Err(refused) => assert!(refused.to_string().contains(says), "{request}: {refused}"),
            }
        }
    }
}
