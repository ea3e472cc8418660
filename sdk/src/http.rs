//! A small blocking HTTP client over `wasi:http`, for tools.
//!
//! Every request goes through the host's network gate, which refuses hosts
//! and ports that the policy does not allow. Redirects are not followed
//! here: a tool that follows one sends a new request, and the gate checks
//! that one too.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, Scheme,
};
use wasi::io::streams::StreamError;

use crate::ToolError;

/// The request methods tools use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// A response, its body cut at the caller's limit.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body was longer than the limit and cut.
    pub truncated: bool,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A URL split into the parts `wasi:http` wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub authority: String,
    pub path_with_query: String,
}

impl Url {
    /// Parses `http://` and `https://` URLs; the fragment is dropped.
    pub fn parse(url: &str) -> Result<Url, ToolError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(ToolError::invalid_args(format!(
                "{url:?} is not an http:// or https:// URL"
            )));
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return Err(ToolError::invalid_args(format!(
                "{url:?} has no host, or has user information"
            )));
        }
        let path_with_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Url {
            https,
            authority: authority.to_owned(),
            path_with_query,
        })
    }

    /// Resolves a redirect's `Location` against this URL.
    pub fn join(&self, location: &str) -> Result<Url, ToolError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            Url::parse(location)
        } else if let Some(rest) = location.strip_prefix("//") {
            Url::parse(&format!(
                "{}://{rest}",
                if self.https { "https" } else { "http" }
            ))
        } else if location.starts_with('/') {
            Ok(Url {
                path_with_query: location.to_owned(),
                ..self.clone()
            })
        } else {
            Err(ToolError::failed(format!(
                "cannot follow a relative redirect to {location:?}"
            )))
        }
    }

    pub fn to_url_string(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.path_with_query)
    }
}

fn error_code(code: ErrorCode) -> ToolError {
    match code {
        ErrorCode::HttpRequestDenied => {
            ToolError::denied("HttpRequestDenied: the policy does not allow this host and port")
        }
        ErrorCode::DestinationIpProhibited => ToolError::denied(
            "DestinationIpProhibited: the host resolves to an address the policy does not allow",
        ),
        other => ToolError::failed(format!("{other:?}")),
    }
}

/// Sends one request and reads at most `max_body` bytes of the response.
pub fn send(
    method: Method,
    url: &Url,
    headers: &[(String, String)],
    body: Option<&[u8]>,
    max_body: usize,
) -> Result<Response, ToolError> {
    let fields: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect();
    let fields = Fields::from_list(&fields)
        .map_err(|e| ToolError::invalid_args(format!("bad header: {e:?}")))?;
    let request = OutgoingRequest::new(fields);
    let bad =
        |what: &str| ToolError::invalid_args(format!("invalid {what} in {}", url.to_url_string()));
    request
        .set_method(match method {
            Method::Get => &WasiMethod::Get,
            Method::Post => &WasiMethod::Post,
        })
        .map_err(|()| bad("method"))?;
    request
        .set_scheme(Some(if url.https {
            &Scheme::Https
        } else {
            &Scheme::Http
        }))
        .map_err(|()| bad("scheme"))?;
    request
        .set_authority(Some(&url.authority))
        .map_err(|()| bad("authority"))?;
    request
        .set_path_with_query(Some(&url.path_with_query))
        .map_err(|()| bad("path"))?;
    let outgoing = request
        .body()
        .map_err(|()| ToolError::failed("request body already taken"))?;
    let future = outgoing_handler::handle(request, None).map_err(error_code)?;
    // When the host refuses the request, the body stream closes; the
    // refusal itself arrives on the response future, so report that.
    let refusal = |fallback: ToolError| {
        future.subscribe().block();
        match future.get() {
            Some(Ok(Err(code))) => error_code(code),
            _ => fallback,
        }
    };
    let sent = (|| {
        let stream = outgoing
            .write()
            .map_err(|()| ToolError::failed("request body stream already taken"))?;
        for chunk in body.unwrap_or_default().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| ToolError::failed(format!("sending the body: {e:?}")))?;
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).map_err(error_code)
    })();
    if let Err(e) = sent {
        return Err(refusal(e));
    }

    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(error_code(code)),
        Some(Err(())) | None => return Err(ToolError::failed("the response was lost")),
    };
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| ToolError::failed("response body already taken"))?;
    let stream = incoming
        .stream()
        .map_err(|()| ToolError::failed("response body stream already taken"))?;
    let mut body = Vec::new();
    let mut truncated = false;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                let room = max_body.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ToolError::failed(format!(
                    "reading the body: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(Response {
        status,
        headers,
        body,
        truncated,
    })
}
