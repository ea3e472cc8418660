//! Tool components that are broken on purpose, built with the SDK's
//! bindings: one per cargo feature, each a way a third-party component can
//! be bad when the host lists its tools. The loading tests
//! (`tests/containment.rs`) put each beside the good built-in tools and
//! check that it alone is refused, with the reason.
//!
//! - `duplicate`: exports `echo`, which the example tool exports too, and
//!   `bad_unique`, which nobody else does.
//! - `invalid-schema`: a schema that is JSON but no JSON Schema.
//! - `remote-ref`: a schema that `$ref`s a URL.
//! - `trap`: `tools()` traps.
//! - `endless`: `tools()` never returns.
//! - `flood`: `tools()` returns 100,000 tools.

use longrun_sdk::bindings::longrun::tool::types::{Effects, ToolError, ToolSpec};

struct Bad;

fn spec(name: &str, parameters: &str) -> ToolSpec {
    ToolSpec {
        name: name.to_owned(),
        description: "a tool of a broken component".to_owned(),
        parameters: parameters.to_owned(),
        effects: Effects::None,
        idempotent: true,
    }
}

const OBJECT: &str = r#"{"type":"object"}"#;

impl longrun_sdk::bindings::Guest for Bad {
    fn tools() -> Vec<ToolSpec> {
        if cfg!(feature = "duplicate") {
            vec![spec("echo", OBJECT), spec("bad_unique", OBJECT)]
        } else if cfg!(feature = "invalid-schema") {
            vec![spec("bad_schema", r#"{"type":"no-such-type"}"#)]
        } else if cfg!(feature = "remote-ref") {
            vec![spec(
                "bad_ref",
                r#"{"type":"object","properties":{"x":{"$ref":"http://127.0.0.1:9/schema.json"}}}"#,
            )]
        } else if cfg!(feature = "trap") {
            core::arch::wasm32::unreachable()
        } else if cfg!(feature = "endless") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        } else if cfg!(feature = "flood") {
            (0..100_000)
                .map(|i| spec(&format!("flood_{i}"), OBJECT))
                .collect()
        } else {
            Vec::new()
        }
    }

    fn call(name: String, _args: String) -> Result<String, ToolError> {
        Ok(format!("\"{name} ran\""))
    }
}

longrun_sdk::bindings::export_tool_world!(Bad with_types_in longrun_sdk::bindings);
