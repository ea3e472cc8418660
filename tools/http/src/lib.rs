//! Built-in HTTP tools: `http_get` and `http_post`.
//!
//! Each request, and each redirect followed, passes the host's network
//! gate: only hosts and ports on the policy's allow-list are reached.

use std::collections::BTreeMap;

use longrun_sdk::http::{self, Method, Url};
use longrun_sdk::{Effects, JsonSchema, Tool, ToolError};
use serde::{Deserialize, Serialize};

const DEFAULT_MAX_BYTES: usize = 1 << 20;
const MAX_REDIRECTS: usize = 5;

/// Arguments of `http_get`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GetArgs {
    /// An http:// or https:// URL.
    url: String,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Most body bytes to return (default 1 MiB); the rest is cut.
    max_bytes: Option<usize>,
    /// Follow up to 5 redirects (default true).
    follow_redirects: Option<bool>,
}

/// Arguments of `http_post`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct PostArgs {
    /// An http:// or https:// URL.
    url: String,
    /// The request body.
    body: String,
    /// The body's media type (default `application/json`).
    content_type: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Most body bytes to return (default 1 MiB); the rest is cut.
    max_bytes: Option<usize>,
}

#[derive(Serialize)]
struct Fetched {
    status: u16,
    /// The URL that answered, after redirects.
    url: String,
    content_type: Option<String>,
    body: String,
    /// Whether the body was cut at `max_bytes`.
    truncated: bool,
}

fn fetched(url: &Url, response: http::Response) -> Fetched {
    Fetched {
        status: response.status,
        url: url.to_url_string(),
        content_type: response.header("content-type").map(str::to_owned),
        body: String::from_utf8_lossy(&response.body).into_owned(),
        truncated: response.truncated,
    }
}

fn get(args: GetArgs) -> Result<Fetched, ToolError> {
    let headers: Vec<(String, String)> = args.headers.into_iter().collect();
    let max = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let mut url = Url::parse(&args.url)?;
    let follow = args.follow_redirects.unwrap_or(true);
    for _ in 0..=MAX_REDIRECTS {
        let response = http::send(Method::Get, &url, &headers, None, max)?;
        let location = response.header("location").map(str::to_owned);
        match location {
            Some(location) if follow && (300..400).contains(&response.status) => {
                url = url.join(&location)?;
            }
            _ => return Ok(fetched(&url, response)),
        }
    }
    Err(ToolError::failed(format!(
        "more than {MAX_REDIRECTS} redirects from {}",
        args.url
    )))
}

fn post(args: PostArgs) -> Result<Fetched, ToolError> {
    let mut headers: Vec<(String, String)> = args.headers.into_iter().collect();
    let content_type = args
        .content_type
        .unwrap_or_else(|| "application/json".to_owned());
    headers.push(("content-type".to_owned(), content_type));
    let url = Url::parse(&args.url)?;
    let max = args.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let response = http::send(
        Method::Post,
        &url,
        &headers,
        Some(args.body.as_bytes()),
        max,
    )?;
    Ok(fetched(&url, response))
}

longrun_sdk::export_tools! {
    Tool::new("http_get", "Fetch a URL with GET (follows redirects; body cut at max_bytes)", get)
        .effects(Effects::Reads)
        .idempotent(true),
    Tool::new("http_post", "Send a POST request with a body and return the response", post)
        .effects(Effects::External)
        .idempotent(false),
}
