//! The handlers of the HTTP API: authentication, request bodies and query
//! strings checked into typed values, and the JSON each route answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use longrun_host::journal::payload::SteeringRequest;
use longrun_host::journal::{Record, RecordKind, SessionId};
use longrun_host::policy::Policy;
use longrun_host::steer::{Input, Verdict, Wanted};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Tenant;
use crate::problem::{ApiError, Problem};
use crate::routes::{self, Matched, Op, Route};
use crate::sessions::{self, Budgets, Entry, Launch, Status};
use crate::{Body, Shared, full};

const VIEWER: &str = include_str!("../assets/viewer.html");
const OPENAPI: &str = include_str!("../assets/openapi.json");

/// The longest goal or message accepted, in bytes.
const MAX_TEXT: usize = 64 << 10;
/// Page sizes of the list routes.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;
/// How often an idle event stream sends a comment, so that proxies and
/// clients see the connection alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

type Answer = Result<Response<Body>, ApiError>;

/// Answer one request; every outcome is a response, never a panic.
pub async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let (label, response) = match routes::find(&method, &path) {
        Matched::NotFound => (
            "unmatched",
            Problem::NotFound
                .with(format!("no route for {path}"))
                .into_response(),
        ),
        Matched::WrongMethod(allowed) => ("unmatched", method_not_allowed(&method, &allowed)),
        Matched::Route(route, params) => {
            let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
            let answer = answer(shared, route, params, request);
            let response = if route.op == Op::Events {
                answer.await
            } else {
                let limit = shared.config.http.request_timeout;
                tokio::time::timeout(limit, answer)
                    .await
                    .unwrap_or_else(|_| {
                        Problem::Timeout
                            .with(format!("the request took longer than {limit:?}"))
                            .into_response()
                    })
            };
            (route.pattern, response)
        }
    };
    shared.metrics.observe(
        label,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn method_not_allowed(method: &Method, allowed: &[Method]) -> Response<Body> {
    let allow = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = Problem::MethodNotAllowed
        .with(format!("{method} is not allowed here; allowed: {allow}"))
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&allow) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

async fn answer(
    shared: &Arc<Shared>,
    route: &Route,
    params: Vec<String>,
    request: Request<Incoming>,
) -> Response<Body> {
    let outcome = async {
        let tenant = if route.authenticated {
            Some(authenticate(shared, request.headers())?)
        } else {
            None
        };
        match route.op {
            Op::Viewer => Ok(text(StatusCode::OK, "text/html; charset=utf-8", VIEWER)),
            Op::OpenApi => Ok(text(StatusCode::OK, "application/json", OPENAPI)),
            Op::Health => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            Op::Metrics => Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                &shared
                    .metrics
                    .render(&shared.sessions, shared.toolbox.sandbox().pool_stats()),
            )),
            Op::ListTools => Ok(list_tools(shared)),
            Op::CreateSession => create_session(shared, signed_in(tenant)?, request).await,
            Op::ListSessions => list_sessions(shared, signed_in(tenant)?, &request),
            Op::GetSession => {
                let entry = session_of(shared, signed_in(tenant)?, &params)?;
                Ok(json_response(StatusCode::OK, &view(&entry)))
            }
            Op::ListSteps => {
                let entry = session_of(shared, signed_in(tenant)?, &params)?;
                list_steps(shared, &entry, &request)
            }
            Op::ListChildren => {
                let entry = session_of(shared, signed_in(tenant)?, &params)?;
                list_children(shared, &entry)
            }
            Op::Events => {
                let entry = session_of(shared, signed_in(tenant)?, &params)?;
                events(shared, &entry, &request)
            }
            Op::PostMessage => {
                let tenant = signed_in(tenant)?;
                let entry = session_of(shared, tenant, &params)?;
                post_message(shared, tenant, &entry, request).await
            }
            Op::Approve => {
                let tenant = signed_in(tenant)?;
                let entry = session_of(shared, tenant, &params)?;
                approve(shared, tenant, &entry, &params, request).await
            }
            Op::Pause | Op::Resume | Op::Cancel => {
                let entry = session_of(shared, signed_in(tenant)?, &params)?;
                steer(shared, &entry, route.op)
            }
        }
    }
    .await;
    outcome.unwrap_or_else(ApiError::into_response)
}

fn signed_in(tenant: Option<&Tenant>) -> Result<&Tenant, ApiError> {
    tenant.ok_or_else(|| Problem::Internal.with("an authenticated route ran without a tenant"))
}

/// The tenant whose bearer token the request carries.
fn authenticate<'s>(shared: &'s Shared, headers: &HeaderMap) -> Result<&'s Tenant, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        Problem::Unauthorized.with("no bearer token: send Authorization: Bearer TOKEN")
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            Problem::Unauthorized.with("the Authorization header is not Bearer TOKEN")
        })?;
    // Compared in full against every tenant, so that the time taken does
    // not tell how much of a token was right.
    let mut found = None;
    for tenant in &shared.config.tenants {
        if constant_time_eq(tenant.token.as_bytes(), token.as_bytes()) {
            found = Some(tenant);
        }
    }
    found.ok_or_else(|| Problem::Unauthorized.with("the bearer token is not valid"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (blake3::hash(a), blake3::hash(b));
    // blake3::Hash's equality is constant-time.
    ha == hb
}

/// The session `params[0]` names, if it exists and is the tenant's: any
/// other session is "not found", so that its existence does not leak.
fn session_of(shared: &Shared, tenant: &Tenant, params: &[String]) -> Result<Arc<Entry>, ApiError> {
    let id = params.first().map(String::as_str).unwrap_or_default();
    let not_found = || Problem::NotFound.with(format!("no session {id}"));
    let id: SessionId = id.parse().map_err(|_| not_found())?;
    // On a shared store, the session may be another host's.
    crate::sessions::discover(shared, id)
        .filter(|entry| entry.tenant == tenant.name)
        .ok_or_else(not_found)
}

fn text(status: StatusCode, content_type: &'static str, body: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    text(status, "application/json", &value.to_string())
}

/// The request's body as `T`: JSON, within the size limit.
async fn read_json<T: serde::de::DeserializeOwned>(
    shared: &Shared,
    request: Request<Incoming>,
) -> Result<T, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(Problem::UnsupportedMediaType.with(format!(
            "the body must be application/json, not {content_type:?}"
        )));
    }
    let limit = shared.config.http.max_body;
    let too_large = || Problem::PayloadTooLarge.with(format!("the body is over {limit} bytes"));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = http_body_util::Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Problem::BadRequest.with(format!("reading the body: {e}"))
            }
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::InvalidRequest.with(e.to_string()),
        _ => Problem::BadRequest.with(format!("the body is not JSON: {e}")),
    })
}

/// The query string's parameters; a malformed one is a 400.
fn query(request: &Request<Incoming>) -> Vec<(String, String)> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn param<T: std::str::FromStr>(
    pairs: &[(String, String)],
    name: &str,
) -> Result<Option<T>, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => v.parse().map(Some).map_err(|_| {
            Problem::BadRequest.with(format!("query parameter {name}={v:?} is not valid"))
        }),
    }
}

fn page_size(pairs: &[(String, String)]) -> Result<usize, ApiError> {
    match param::<usize>(pairs, "limit")? {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Problem::BadRequest.with(format!(
            "query parameter limit={n} is out of range (1 to {MAX_PAGE})"
        ))),
    }
}

fn list_tools(shared: &Shared) -> Response<Body> {
    let tools: Vec<Value> = shared
        .toolbox
        .tools()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "parameters": t.parameters,
                "idempotent": t.idempotent,
                "effects": format!("{:?}", t.effects).to_lowercase(),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "tools": tools }))
}

/// What `POST /v1/sessions` takes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    goal: String,
    /// A policy of the server's configuration, by name.
    #[serde(default)]
    policy: Option<String>,
    /// A policy file's text (TOML), for tenants allowed to bring one.
    #[serde(default)]
    policy_inline: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    budgets: Option<Budgets>,
    /// Heavy mode: run this many trajectories and answer with the best.
    #[serde(default)]
    trajectories: Option<u32>,
}

async fn create_session(
    shared: &Arc<Shared>,
    tenant: &Tenant,
    request: Request<Incoming>,
) -> Answer {
    let body: CreateSession = read_json(shared, request).await?;
    let invalid = |detail: String| Problem::InvalidRequest.with(detail);
    if body.goal.trim().is_empty() {
        return Err(invalid("the goal is empty".into()));
    }
    if body.goal.len() > MAX_TEXT {
        return Err(invalid(format!("the goal is over {MAX_TEXT} bytes")));
    }
    let budgets = body.budgets.unwrap_or_default();
    if budgets
        .max_cost_usd
        .is_some_and(|c| !c.is_finite() || c < 0.0)
    {
        return Err(invalid(
            "budgets.max_cost_usd must be a number of at least 0".into(),
        ));
    }
    let (policy_name, policy) = match (body.policy, body.policy_inline) {
        (Some(_), Some(_)) => {
            return Err(invalid("give policy or policy_inline, not both".into()));
        }
        (None, Some(text)) => {
            if !tenant.inline_policies {
                return Err(Problem::Forbidden.with(format!(
                    "tenant {:?} may not bring its own policy; name one of the server's",
                    tenant.name
                )));
            }
            let policy = Policy::parse(&text, "policy_inline", &shared.config.base_dir)
                .map_err(|e| Problem::InvalidPolicy.with(e.to_string()))?;
            ("inline".to_owned(), policy)
        }
        (name, None) => {
            let name = name.unwrap_or_else(|| shared.config.default_policy.clone());
            let named = shared
                .policies
                .get(&name)
                .ok_or_else(|| invalid(format!("no policy named {name:?}")))?;
            (name, (*named.policy).clone())
        }
    };
    let mut policy = policy;
    policy.session = budgets.tighten(&policy.session);
    let model_name = body
        .model
        .unwrap_or_else(|| shared.config.default_model.clone());
    let model = shared
        .models
        .get(&model_name)
        .cloned()
        .ok_or_else(|| invalid(format!("no model named {model_name:?}")))?;
    if policy.session.max_cost_usd.is_some() && policy.price_for(model.name()).is_none() {
        return Err(invalid(format!(
            "the policy sets a cost budget but has no price for model {:?}",
            model.name()
        )));
    }
    if let Some(n) = body.trajectories {
        longrun_host::trajectories::check(
            &policy,
            n,
            shared.agent.scratch_dir.as_deref(),
            shared.agent.snapshot_bytes,
        )
        .map_err(|e| invalid(format!("heavy mode: {e}")))?;
    }
    let launch = Launch {
        tenant: tenant.name.clone(),
        goal: body.goal,
        policy_name,
        policy: Arc::new(policy),
        model_name,
        model,
        budgets,
        trajectories: body.trajectories,
    };
    let entry = sessions::create(shared, launch)
        .await
        .map_err(|e| Problem::Internal.with(format!("the session did not start: {e}")))?;
    let mut response = json_response(StatusCode::CREATED, &view(&entry));
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/sessions/{}", entry.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A session as the API shows it.
pub fn view(entry: &Entry) -> Value {
    let summary = entry.summary();
    let usage = &summary.usage;
    json!({
        "id": entry.id,
        "status": summary.status.as_str(),
        "goal": entry.goal,
        "model": entry.model,
        "policy": entry.policy,
        "created_unix_millis": entry.created_unix_millis,
        "step": usage.steps,
        "usage": {
            "steps": usage.steps,
            "tool_calls": usage.tool_calls,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost_usd": usage.cost_usd,
        },
        "budgets": entry.budgets,
        "awaiting_approval": summary.awaiting,
        "answer": summary.answer,
        "error": summary.error,
        "budget_exhausted": summary.budget_exhausted,
        "runs_elsewhere": entry.elsewhere(),
    })
}

fn list_sessions(shared: &Shared, tenant: &Tenant, request: &Request<Incoming>) -> Answer {
    let pairs = query(request);
    let status = match param::<String>(&pairs, "status")? {
        None => None,
        Some(s) => Some(Status::parse(&s).ok_or_else(|| {
            Problem::BadRequest.with(format!("query parameter status={s:?} is not a status"))
        })?),
    };
    let limit = page_size(&pairs)?;
    let after = param::<SessionId>(&pairs, "after")?;
    crate::sessions::discover_all(shared);
    let mut page = Vec::new();
    let mut more = false;
    for entry in shared.sessions.all() {
        if entry.tenant != tenant.name
            || after.is_some_and(|a| entry.id <= a)
            || status.is_some_and(|s| entry.summary().status != s)
        {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(entry);
    }
    let next_after = if more {
        page.last().map(|e| e.id)
    } else {
        None
    };
    let sessions: Vec<Value> = page.iter().map(|e| view(e)).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "sessions": sessions, "next_after": next_after }),
    ))
}

/// A journal record as the API shows it: the payload as JSON.
pub fn record_json(record: &Record) -> Value {
    let hex = |h: &[u8; 32]| blake3::Hash::from_bytes(*h).to_hex().to_string();
    let payload = serde_json::from_slice::<Value>(&record.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&record.payload).into_owned()));
    json!({
        "seq": record.seq,
        "kind": record.kind.as_str(),
        "unix_millis": record.unix_millis,
        "hash": hex(&record.hash),
        "prev_hash": hex(&record.prev_hash),
        "blobs": record.blobs.iter().map(hex).collect::<Vec<_>>(),
        "payload": payload,
    })
}

/// The sessions the session started, theirs, and so on, depth first, as
/// their records say now: each with its parent, status, and what it used
/// itself and with its own children.
fn list_children(shared: &Shared, entry: &Entry) -> Answer {
    let nodes = longrun_host::journal::tree::tree(
        &shared.journal,
        entry.id,
        &mut longrun_host::policy::RecordedPrices::default(),
    )
    .map_err(|e| Problem::Internal.with(format!("reading the session's children: {e}")))?;
    let children = nodes.get(1..).unwrap_or_default();
    Ok(json_response(
        StatusCode::OK,
        &json!({"session": entry.id, "children": children}),
    ))
}

fn list_steps(shared: &Shared, entry: &Entry, request: &Request<Incoming>) -> Answer {
    let pairs = query(request);
    let limit = page_size(&pairs)?;
    let from = match param::<u64>(&pairs, "after")? {
        Some(after) => after.saturating_add(1),
        None => 0,
    };
    let mut records = Vec::new();
    let mut more = false;
    for record in shared.journal.records_from(entry.id, from) {
        let record = record.map_err(|e| Problem::Internal.with(e.to_string()))?;
        if records.len() == limit {
            more = true;
            break;
        }
        records.push(record_json(&record));
    }
    let next_after = if more {
        records.last().and_then(|r| r["seq"].as_u64())
    } else {
        None
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "records": records, "next_after": next_after }),
    ))
}

/// The session's journal as Server-Sent Events, one event per record
/// (`id` is its sequence number), from after `Last-Event-ID` (or the
/// `after` query parameter) on, live until the session ends.
fn events(shared: &Arc<Shared>, entry: &Entry, request: &Request<Incoming>) -> Answer {
    let pairs = query(request);
    let last_event = match request.headers().get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Problem::BadRequest.with("Last-Event-ID is not a record number"))?,
        ),
        None => param::<u64>(&pairs, "after")?,
    };
    let mut next = last_event.map_or(0, |seq| seq.saturating_add(1));
    let (mut sender, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(8);
    let shared = shared.clone();
    let session = entry.id;
    tokio::spawn(async move {
        shared.metrics.event_streams.fetch_add(1, Ordering::Relaxed);
        let mut changes = shared.journal.watch(session);
        let _ = sender
            .send_data(Bytes::from_static(b"retry: 1000\n\n"))
            .await;
        'stream: loop {
            let mut batch = Vec::new();
            for record in shared.journal.records_from(session, next).take(256) {
                match record {
                    Ok(record) => batch.push(record),
                    Err(e) => {
                        tracing::error!(session, "event stream: {e}");
                        break 'stream;
                    }
                }
            }
            let full_batch = batch.len() == 256;
            for record in batch {
                let event = format!(
                    "id: {}\nevent: record\ndata: {}\n\n",
                    record.seq,
                    record_json(&record)
                );
                if sender.send_data(Bytes::from(event)).await.is_err() {
                    break 'stream;
                }
                next = record.seq + 1;
                if record.kind == RecordKind::SessionEnded {
                    break 'stream;
                }
            }
            if full_batch {
                continue;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(KEEP_ALIVE) => {
                    if sender.send_data(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                        break;
                    }
                }
                () = shared.shut_down() => break,
            }
        }
        shared.metrics.event_streams.fetch_sub(1, Ordering::Relaxed);
    });
    let mut response = Response::new(body.boxed_unsync());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PostMessage {
    text: String,
}

async fn post_message(
    shared: &Shared,
    tenant: &Tenant,
    entry: &Entry,
    request: Request<Incoming>,
) -> Answer {
    let body: PostMessage = read_json(shared, request).await?;
    if body.text.trim().is_empty() || body.text.len() > MAX_TEXT {
        return Err(Problem::InvalidRequest
            .with(format!("the text must be between 1 and {MAX_TEXT} bytes")));
    }
    still_running(entry)?;
    let message = SteeringRequest::Message(Input {
        text: body.text,
        by: tenant.name.clone(),
    });
    sessions::steer(shared, entry, message)?;
    Ok(json_response(StatusCode::ACCEPTED, &view(entry)))
}

/// Refuse to steer a session that has ended or stopped on an error.
fn still_running(entry: &Entry) -> Result<(), ApiError> {
    let status = entry.summary().status;
    if status.ended() || status == Status::Failed {
        return Err(Problem::Conflict.with(format!(
            "session {} is {}: it cannot be steered",
            entry.id,
            status.as_str()
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

async fn approve(
    shared: &Shared,
    tenant: &Tenant,
    entry: &Entry,
    params: &[String],
    request: Request<Incoming>,
) -> Answer {
    let step = params.get(1).map(String::as_str).unwrap_or_default();
    let step: u64 = step
        .parse()
        .map_err(|_| Problem::NotFound.with(format!("no step {step}")))?;
    let body: Decision = read_json(shared, request).await?;
    still_running(entry)?;
    let summary = entry.summary();
    let awaiting = summary
        .awaiting
        .filter(|a| a.step == step && summary.status == Status::AwaitingApproval)
        .ok_or_else(|| {
            Problem::Conflict.with(format!(
                "no call of session {} waits for approval at step {step}",
                entry.id
            ))
        })?;
    let decision = SteeringRequest::Decision(Verdict {
        call_id: awaiting.call_id,
        approved: body.approve,
        by: tenant.name.clone(),
        reason: body.reason,
    });
    sessions::steer(shared, entry, decision)?;
    Ok(json_response(StatusCode::ACCEPTED, &view(entry)))
}

fn steer(shared: &Shared, entry: &Entry, op: Op) -> Answer {
    still_running(entry)?;
    // Paused as asked here, or (another host's session) as its journal says.
    let paused = match entry.elsewhere() {
        None => entry.steering.wanted() == Wanted::Pause,
        Some(_) => entry.summary().status == Status::Paused,
    };
    let request = match op {
        Op::Pause => SteeringRequest::Pause,
        Op::Resume if paused => SteeringRequest::Resume,
        Op::Resume => {
            return Err(Problem::Conflict.with(format!("session {} is not paused", entry.id)));
        }
        _ => SteeringRequest::Cancel,
    };
    sessions::steer(shared, entry, request)?;
    Ok(json_response(StatusCode::ACCEPTED, &view(entry)))
}
