//! Built-in JSON tool: `json_query` runs a JSONPath query (RFC 9535) over a
//! JSON document given inline or read from a mounted file.

use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json_path::JsonPath;

/// Arguments of `json_query`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct QueryArgs {
    /// A JSONPath query, e.g. `$.items[?@.price < 10].name`.
    query: String,
    /// The document to query (give this or `file`).
    document: Option<Value>,
    /// A JSON file in a mount to query instead, e.g. `/workspace/data.json`.
    file: Option<String>,
}

#[derive(Serialize)]
struct QueryOutput {
    results: Vec<Value>,
}

fn query(args: QueryArgs) -> Result<QueryOutput, ToolError> {
    let path = JsonPath::parse(&args.query).map_err(ToolError::invalid_args)?;
    let document = match (args.document, args.file) {
        (Some(doc), None) => doc,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(&file)?;
            serde_json::from_str(&text)
                .map_err(|e| ToolError::failed(format!("{file} is not JSON: {e}")))?
        }
        _ => {
            return Err(ToolError::invalid_args(
                "give exactly one of `document` and `file`",
            ));
        }
    };
    let results = path.query(&document).all().into_iter().cloned().collect();
    Ok(QueryOutput { results })
}

longrun_sdk::export_tools! {
    Tool::new("json_query", "Query a JSON document with JSONPath (RFC 9535)", query)
        .effects(Effects::Reads)
        .idempotent(true),
}
