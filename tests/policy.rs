//! Policy files: every malformed policy is refused with the file, line,
//! column and offending key; every example policy loads as is; and each
//! policy rule changes what a call may do.

mod common;

use std::path::Path;

use longrun_host::policy::{Decision, Policy, PolicyError};

/// (policy text, line, column, key, words the message must contain)
const BAD_POLICIES: &[(&str, usize, usize, Option<&str>, &str)] = &[
    (
        "[sesion]\nmax_steps = 1\n",
        1,
        2,
        Some("sesion"),
        "unknown field `sesion`",
    ),
    (
        "[session]\nmax_step = 5\n",
        2,
        1,
        Some("session.max_step"),
        "unknown field `max_step`",
    ),
    (
        "[session]\nmax_steps = \"many\"\n",
        2,
        13,
        Some("session.max_steps"),
        "invalid type",
    ),
    (
        "[session]\nmax_steps = -1\n",
        2,
        13,
        Some("session.max_steps"),
        "invalid value",
    ),
    (
        "[session]\nmax_cost_usd = -5.0\n",
        2,
        16,
        Some("session.max_cost_usd"),
        "must be a finite number of at least 0",
    ),
    (
        "[prices.\"kimi-k2.6\"]\ninput_per_million = 0.6\noutput_per_million = -2.5\n",
        3,
        22,
        Some("prices.kimi-k2.6.output_per_million"),
        "must be a finite number of at least 0",
    ),
    (
        "[prices.m]\ninput_per_million = 1.0\noutput_per_million = 1.0\ncache_per_million = 0.1\n",
        4,
        1,
        Some("prices.m.cache_per_million"),
        "unknown field `cache_per_million`",
    ),
    (
        "[prices.m]\ninput_per_million = 1.0\n",
        1,
        1,
        Some("prices.m"),
        "missing field `output_per_million`",
    ),
    (
        "[session]\nmax_wall_time = \"3 days\"\n",
        2,
        17,
        Some("session.max_wall_time"),
        "invalid duration",
    ),
    (
        "[limits]\ntimeout = \"30 seconds\"\n",
        2,
        11,
        Some("limits.timeout"),
        "invalid duration",
    ),
    (
        "[limits]\ntimeout = \"0s\"\n",
        2,
        11,
        Some("limits.timeout"),
        "must be greater than zero",
    ),
    (
        "[limits]\nmemory = \"lots\"\n",
        2,
        10,
        Some("limits.memory"),
        "invalid size",
    ),
    (
        "[limits]\nmax_output = \"0MiB\"\n",
        2,
        14,
        Some("limits.max_output"),
        "must be greater than zero",
    ),
    (
        "[limits]\ntimeout = \"1s\"\nfuel = 100\n",
        3,
        1,
        Some("limits.fuel"),
        "unknown field `fuel`",
    ),
    (
        "[[filesystem]]\nhost = \"a\"\nguest = \"/a\"\naccess = \"write-only\"\n",
        4,
        10,
        Some("filesystem[0].access"),
        "unknown variant `write-only`",
    ),
    (
        "[[filesystem]]\nhost = \"a\"\nguest = \"workspace\"\naccess = \"read-only\"\n",
        3,
        9,
        Some("filesystem[0].guest"),
        "must be absolute",
    ),
    (
        "[[filesystem]]\nhost = \"a\"\nguest = \"/a/../etc\"\naccess = \"read-only\"\n",
        3,
        9,
        Some("filesystem[0].guest"),
        "without `.`, `..`",
    ),
    (
        "[[filesystem]]\nhost = \"a\"\nguest = \"/a\"\n",
        1,
        1,
        Some("filesystem[0]"),
        "missing field `access`",
    ),
    (
        "[[filesystem]]\nhost = \"a\"\nguest = \"/a\"\naccess = \"read-only\"\n\n[[filesystem]]\nhost = \"b\"\nguest = \"/a\"\naccess = \"read-only\"\n",
        8,
        9,
        Some("filesystem[1].guest"),
        "mounted twice",
    ),
    (
        "[network]\nallow = [\"example.com\"]\n",
        2,
        10,
        Some("network.allow[0]"),
        "write host:port",
    ),
    (
        "[network]\nallow = [\"ok.org:443\", \"example.com:99999\"]\n",
        2,
        24,
        Some("network.allow[1]"),
        "port must be a number",
    ),
    (
        "[network]\nallow = [\"a.*.com:443\"]\n",
        2,
        10,
        Some("network.allow[0]"),
        "must be a DNS name",
    ),
    (
        "[network]\nallow = [\"[::zz]:443\"]\n",
        2,
        10,
        Some("network.allow[0]"),
        "not an IPv6 address",
    ),
    (
        "[network]\ndeny = []\n",
        2,
        1,
        Some("network.deny"),
        "unknown field `deny`",
    ),
    (
        "[tools]\nallow = [\"fs.read\"]\n",
        2,
        10,
        Some("tools.allow[0]"),
        "invalid tool pattern",
    ),
    (
        "[tools]\nallow = [\"fs_*\"]\napprove = \"fs_write\"\n",
        3,
        11,
        Some("tools.approve"),
        "invalid type",
    ),
    (
        "[overrides.fs_read]\ntimout = \"1s\"\n",
        2,
        1,
        Some("overrides.fs_read.timout"),
        "unknown field `timout`",
    ),
    ("[session\nmax_steps = 1\n", 1, 9, None, "unclosed table"),
    (
        "[session]\nmax_steps = 1\nmax_steps = 2\n",
        3,
        1,
        None,
        "duplicate key",
    ),
];

#[test]
fn every_malformed_policy_is_refused_with_file_line_column_and_key() {
    let mut failures = Vec::new();
    for (i, &(text, line, column, key, message)) in BAD_POLICIES.iter().enumerate() {
        match Policy::parse(text, "bad.toml", Path::new("/")) {
            Ok(_) => failures.push(format!("#{i}: accepted:\n{text}")),
            Err(PolicyError::Invalid {
                file,
                line: l,
                column: c,
                key: k,
                message: m,
            }) => {
                let got = (file.as_str(), l, c, k.as_deref());
                let want = ("bad.toml", line, column, key);
                if got != want || !m.contains(message) {
                    failures.push(format!(
                        "#{i}: got {got:?} {m:?}\n     want {want:?} containing {message:?}\n{text}"
                    ));
                }
            }
            Err(other) => failures.push(format!("#{i}: unexpected error {other}")),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn the_error_message_reads_file_line_column_key_and_reason() {
    let err = Policy::parse(
        "[limits]\nmemory = \"lots\"\n",
        "ops/agent.toml",
        Path::new("/"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("ops/agent.toml:2:10: `limits.memory`: invalid size \"lots\""),
        "{err}"
    );
}

#[test]
fn a_missing_policy_file_is_an_error_naming_the_file() {
    let err = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/policy.toml: cannot read policy")
    );
}

#[test]
fn every_example_policy_loads_and_its_mounts_resolve_beside_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{e}"));
            for mount in &policy.filesystem {
                assert!(
                    mount.host.is_dir(),
                    "{}: {} is missing",
                    path.display(),
                    mount.host.display()
                );
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected at least three example policies, found {seen}"
    );
}

#[test]
fn tool_rules_allow_by_pattern_and_ask_approval_by_pattern() {
    let policy =
        common::policy("[tools]\nallow = [\"fs_*\", \"echo\"]\napprove = [\"fs_write\"]\n");
    assert_eq!(policy.decide("fs_read"), Decision::Allow);
    assert_eq!(policy.decide("echo"), Decision::Allow);
    assert_eq!(
        policy.decide("fs_write"),
        Decision::NeedsApproval("fs_write".into())
    );
    assert!(matches!(policy.decide("http_get"), Decision::Deny(_)));
}

#[test]
fn an_empty_policy_allows_no_tool() {
    let policy = common::policy("");
    assert!(matches!(policy.decide("echo"), Decision::Deny(_)));
}

#[test]
fn overrides_replace_only_the_limits_they_name() {
    let policy = common::policy(
        "[limits]\ntimeout = \"5s\"\nmemory = \"32MiB\"\n[overrides.slow]\ntimeout = \"1m\"\n",
    );
    let slow = policy.limits_for("slow");
    assert_eq!(slow.timeout, std::time::Duration::from_secs(60));
    assert_eq!(slow.memory, 32 << 20);
    assert_eq!(
        policy.limits_for("other").timeout,
        std::time::Duration::from_secs(5)
    );
}
