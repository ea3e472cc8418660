//! Errors of the HTTP API, as `application/problem+json` (RFC 9457): each
//! kind of error has a stable `type` that clients can match on, a status,
//! and a `detail` written for people.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::Body;

/// The kinds of error the API answers with. The `type` of each is
/// `urn:longrun:problem:` and its [`Problem::slug`]; both are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The request is malformed (not JSON, a bad query parameter).
    BadRequest,
    /// No valid bearer token.
    Unauthorized,
    /// The token is valid but may not do this.
    Forbidden,
    /// No such resource for this tenant (another tenant's session too).
    NotFound,
    MethodNotAllowed,
    /// The resource is not in a state that allows this (an ended session).
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// The body is JSON but not what the operation takes.
    InvalidRequest,
    /// The inline policy does not parse.
    InvalidPolicy,
    /// The request took longer than the server allows.
    Timeout,
    /// The server is shutting down.
    Unavailable,
    Internal,
}

impl Problem {
    pub fn status(self) -> StatusCode {
        match self {
            Problem::BadRequest => StatusCode::BAD_REQUEST,
            Problem::Unauthorized => StatusCode::UNAUTHORIZED,
            Problem::Forbidden => StatusCode::FORBIDDEN,
            Problem::NotFound => StatusCode::NOT_FOUND,
            Problem::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Problem::Conflict => StatusCode::CONFLICT,
            Problem::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Problem::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Problem::InvalidRequest | Problem::InvalidPolicy => StatusCode::UNPROCESSABLE_ENTITY,
            Problem::Timeout | Problem::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Problem::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn slug(self) -> &'static str {
        match self {
            Problem::BadRequest => "bad-request",
            Problem::Unauthorized => "unauthorized",
            Problem::Forbidden => "forbidden",
            Problem::NotFound => "not-found",
            Problem::MethodNotAllowed => "method-not-allowed",
            Problem::Conflict => "conflict",
            Problem::PayloadTooLarge => "payload-too-large",
            Problem::UnsupportedMediaType => "unsupported-media-type",
            Problem::InvalidRequest => "invalid-request",
            Problem::InvalidPolicy => "invalid-policy",
            Problem::Timeout => "timeout",
            Problem::Unavailable => "unavailable",
            Problem::Internal => "internal",
        }
    }

    /// This problem, with what went wrong.
    pub fn with(self, detail: impl Into<String>) -> ApiError {
        ApiError {
            problem: self,
            detail: detail.into(),
        }
    }
}

/// A problem and its detail: what a handler returns on failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", problem.slug())]
pub struct ApiError {
    pub problem: Problem,
    pub detail: String,
}

impl ApiError {
    pub fn into_response(self) -> Response<Body> {
        let status = self.problem.status();
        let body = serde_json::json!({
            "type": format!("urn:longrun:problem:{}", self.problem.slug()),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.detail,
        });
        let mut response = Response::new(crate::full(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.problem == Problem::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"longrun\""),
            );
        }
        response
    }
}
