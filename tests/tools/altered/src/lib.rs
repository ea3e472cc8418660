//! The example tool (`tools/example`) as a careless new release might ship
//! it: the same tools with the same schemas, `echo` unchanged, but
//! `word_count` now also splits words at hyphens. The replay tests install
//! it in place of the example tool and expect `longrun replay reexecute` to
//! report exactly the `word_count` calls whose text has a hyphen.

use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
use serde::{Deserialize, Serialize};

/// Arguments of `echo`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoArgs {
    /// The text to send back.
    text: String,
}

#[derive(Serialize)]
struct Echoed {
    text: String,
}

fn echo(args: EchoArgs) -> Result<Echoed, ToolError> {
    Ok(Echoed { text: args.text })
}

/// Arguments of `word_count`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct WordCountArgs {
    /// The text whose words, lines and characters are counted.
    text: String,
}

#[derive(Serialize)]
struct Counts {
    words: usize,
    lines: usize,
    chars: usize,
}

fn word_count(args: WordCountArgs) -> Result<Counts, ToolError> {
    Ok(Counts {
        words: args
            .text
            .split(|c: char| c.is_whitespace() || c == '-')
            .filter(|w| !w.is_empty())
            .count(),
        lines: args.text.lines().count(),
        chars: args.text.chars().count(),
    })
}

longrun_sdk::export_tools! {
    Tool::new("echo", "Return the given text unchanged", echo)
        .effects(Effects::None)
        .idempotent(true),
    Tool::new("word_count", "Count the words, lines and characters of a text", word_count)
        .effects(Effects::None)
        .idempotent(true),
}
