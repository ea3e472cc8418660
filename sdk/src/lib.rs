//! The longrun SDK: write a tool as a plain Rust function over serde types,
//! build it with `cargo build --target wasm32-wasip2`, and the result is a
//! Wasm component that the longrun host runs in a fresh sandbox per call.
//!
//! ```ignore
//! use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
//! use serde::{Deserialize, Serialize};
//!
//! /// The arguments of `greet`; the doc comments become the schema's descriptions.
//! #[derive(Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! struct GreetArgs {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Greeting {
//!     text: String,
//! }
//!
//! fn greet(args: GreetArgs) -> Result<Greeting, ToolError> {
//!     Ok(Greeting { text: format!("hello, {}", args.name) })
//! }
//!
//! longrun_sdk::export_tools! {
//!     Tool::new("greet", "Greet someone by name", greet).effects(Effects::None).idempotent(true),
//! }
//! ```
//!
//! The JSON Schema of the arguments is derived from the argument type with
//! [`schemars`]; the host validates every call against it before the tool
//! runs, so the function only sees arguments that match the schema.

pub mod http;

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use schemars::JsonSchema;

/// The generated bindings of the `longrun:tool` world. Tool authors do not
/// need these directly: [`export_tools!`] implements them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "tool",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_tool_world",
        default_bindings_module: "longrun_sdk::bindings",
    });
}

use bindings::longrun::tool::types as wit;

/// What running a tool may do to the world, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effects {
    /// Pure computation over its arguments.
    None,
    /// Reads files or the network, changes nothing.
    Reads,
    /// Changes files in a mount.
    Writes,
    /// Acts on the world outside the host.
    External,
}

/// Why a tool call failed, as the model and the operator will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The arguments matched the schema but are still unusable.
    InvalidArgs(String),
    /// The tool refused, or the sandbox refused what the tool tried.
    Denied(String),
    /// Anything else.
    Failed(String),
}

impl ToolError {
    /// A [`ToolError::Failed`] with the given message.
    pub fn failed(message: impl fmt::Display) -> Self {
        ToolError::Failed(message.to_string())
    }

    /// A [`ToolError::InvalidArgs`] with the given message.
    pub fn invalid_args(message: impl fmt::Display) -> Self {
        ToolError::InvalidArgs(message.to_string())
    }

    /// A [`ToolError::Denied`] with the given message.
    pub fn denied(message: impl fmt::Display) -> Self {
        ToolError::Denied(message.to_string())
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ToolError::InvalidArgs(m) => write!(f, "invalid arguments: {m}"),
            ToolError::Denied(m) => write!(f, "denied: {m}"),
            ToolError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for ToolError {}

impl ToolError {
    /// An I/O error from the sandbox, described by `message`: a permission
    /// error means the sandbox said no (a read-only mount, say), so it is
    /// `denied`; anything else `failed`.
    pub fn io(err: &std::io::Error, message: impl fmt::Display) -> Self {
        match err.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                ToolError::denied(message)
            }
            _ => ToolError::failed(message),
        }
    }
}

/// An I/O error in plain words: the system's text without its error number
/// (`No such file or directory`, not `... (os error 44)`: WASI's numbers
/// are not the host's, and mean nothing to a model or a person).
pub fn plain_words(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// I/O errors from the sandbox, in plain words (see [`ToolError::io`]).
impl From<std::io::Error> for ToolError {
    fn from(err: std::io::Error) -> Self {
        ToolError::io(&err, plain_words(&err))
    }
}

type Handler = Box<dyn Fn(&str) -> Result<String, ToolError>>;

/// One tool: a name, a description, and a function over serde types.
pub struct Tool {
    name: &'static str,
    description: &'static str,
    effects: Effects,
    idempotent: bool,
    schema: fn() -> String,
    handler: Handler,
}

impl Tool {
    /// A tool named `name` that runs `f`. Its effects default to
    /// [`Effects::None`] and it is not idempotent until said otherwise.
    pub fn new<A, R, F>(name: &'static str, description: &'static str, f: F) -> Self
    where
        A: DeserializeOwned + JsonSchema,
        R: Serialize,
        F: Fn(A) -> Result<R, ToolError> + 'static,
    {
        Tool {
            name,
            description,
            effects: Effects::None,
            idempotent: false,
            schema: schema_of::<A>,
            handler: Box::new(move |args: &str| {
                let args: A = serde_json::from_str(args).map_err(ToolError::invalid_args)?;
                let output = f(args)?;
                serde_json::to_string(&output).map_err(ToolError::failed)
            }),
        }
    }

    /// What running this tool may do to the world.
    pub fn effects(mut self, effects: Effects) -> Self {
        self.effects = effects;
        self
    }

    /// Whether running the tool twice with the same arguments is safe (the
    /// host runs an interrupted idempotent call again after a crash).
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }
}

fn schema_of<A: JsonSchema>() -> String {
    let schema = schemars::schema_for!(A);
    // A derived schema always serialises; an empty object is the safe
    // fallback that the host's own checks would then reject loudly.
    serde_json::to_string(&schema).unwrap_or_else(|_| "{}".to_owned())
}

#[doc(hidden)]
pub fn __specs(tools: Vec<Tool>) -> Vec<wit::ToolSpec> {
    tools
        .into_iter()
        .map(|tool| wit::ToolSpec {
            name: tool.name.to_owned(),
            description: tool.description.to_owned(),
            parameters: (tool.schema)(),
            effects: match tool.effects {
                Effects::None => wit::Effects::None,
                Effects::Reads => wit::Effects::Reads,
                Effects::Writes => wit::Effects::Writes,
                Effects::External => wit::Effects::External,
            },
            idempotent: tool.idempotent,
        })
        .collect()
}

#[doc(hidden)]
pub fn __call(tools: Vec<Tool>, name: &str, args: &str) -> Result<String, wit::ToolError> {
    let Some(tool) = tools.into_iter().find(|tool| tool.name == name) else {
        return Err(wit::ToolError::Failed(format!("no tool named {name:?}")));
    };
    (tool.handler)(args).map_err(|err| match err {
        ToolError::InvalidArgs(m) => wit::ToolError::InvalidArgs(m),
        ToolError::Denied(m) => wit::ToolError::Denied(m),
        ToolError::Failed(m) => wit::ToolError::Failed(m),
    })
}

/// Export a list of [`Tool`]s as this crate's component.
///
/// Use it once, at the crate root of a `cdylib` crate built for
/// `wasm32-wasip2`.
#[macro_export]
macro_rules! export_tools {
    ($($tool:expr),+ $(,)?) => {
        struct __LongrunToolbox;

        impl $crate::bindings::Guest for __LongrunToolbox {
            fn tools() -> ::std::vec::Vec<$crate::bindings::longrun::tool::types::ToolSpec> {
                $crate::__specs(::std::vec![$($tool),+])
            }

            fn call(
                name: ::std::string::String,
                args: ::std::string::String,
            ) -> ::std::result::Result<
                ::std::string::String,
                $crate::bindings::longrun::tool::types::ToolError,
            > {
                $crate::__call(::std::vec![$($tool),+], &name, &args)
            }
        }

        $crate::bindings::export_tool_world!(__LongrunToolbox with_types_in $crate::bindings);
    };
}
