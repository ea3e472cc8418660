//! The routes of the server, as one table: the router matches requests
//! against it, and a test checks it against the OpenAPI document, so the
//! two cannot drift apart.

use http::Method;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Viewer,
    OpenApi,
    Health,
    Metrics,
    ListTools,
    CreateSession,
    ListSessions,
    GetSession,
    ListSteps,
    ListChildren,
    Events,
    PostMessage,
    Approve,
    Pause,
    Resume,
    Cancel,
}

/// One route: method, path pattern (`{name}` is one path segment), and
/// whether a bearer token is needed.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
    pub op: Op,
    pub authenticated: bool,
}

const fn route(method: Method, pattern: &'static str, op: Op, authenticated: bool) -> Route {
    Route {
        method,
        pattern,
        op,
        authenticated,
    }
}

/// Every route the server answers.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/", Op::Viewer, false),
    route(Method::GET, "/openapi.json", Op::OpenApi, false),
    route(Method::GET, "/healthz", Op::Health, false),
    route(Method::GET, "/metrics", Op::Metrics, false),
    route(Method::GET, "/v1/tools", Op::ListTools, true),
    route(Method::POST, "/v1/sessions", Op::CreateSession, true),
    route(Method::GET, "/v1/sessions", Op::ListSessions, true),
    route(Method::GET, "/v1/sessions/{id}", Op::GetSession, true),
    route(Method::GET, "/v1/sessions/{id}/steps", Op::ListSteps, true),
    route(
        Method::GET,
        "/v1/sessions/{id}/children",
        Op::ListChildren,
        true,
    ),
    route(Method::GET, "/v1/sessions/{id}/events", Op::Events, true),
    route(
        Method::POST,
        "/v1/sessions/{id}/messages",
        Op::PostMessage,
        true,
    ),
    route(
        Method::POST,
        "/v1/sessions/{id}/approvals/{step}",
        Op::Approve,
        true,
    ),
    route(Method::POST, "/v1/sessions/{id}/pause", Op::Pause, true),
    route(Method::POST, "/v1/sessions/{id}/resume", Op::Resume, true),
    route(Method::POST, "/v1/sessions/{id}/cancel", Op::Cancel, true),
];

/// What matching a request found.
#[derive(Debug)]
pub enum Matched<'p> {
    Route(&'static Route, Vec<&'p str>),
    /// The path exists, with other methods.
    WrongMethod(Vec<Method>),
    NotFound,
}

/// The route for `method` and `path`, with the path's `{…}` segments.
pub fn find<'p>(method: &Method, path: &'p str) -> Matched<'p> {
    let mut allowed = Vec::new();
    for route in ROUTES {
        if let Some(params) = match_pattern(route.pattern, path) {
            if route.method == *method {
                return Matched::Route(route, params);
            }
            allowed.push(route.method.clone());
        }
    }
    if allowed.is_empty() {
        Matched::NotFound
    } else {
        Matched::WrongMethod(allowed)
    }
}

fn match_pattern<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut segments = path.split('/');
    for want in pattern.split('/') {
        let got = segments.next()?;
        if want.starts_with('{') && want.ends_with('}') {
            if got.is_empty() {
                return None;
            }
            params.push(got);
        } else if want != got {
            return None;
        }
    }
    segments.next().is_none().then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_matches_its_route_and_yields_its_parameters() {
        let Matched::Route(route, params) = find(&Method::POST, "/v1/sessions/7/approvals/12")
        else {
            panic!("no route");
        };
        assert_eq!(route.op, Op::Approve);
        assert_eq!(params, ["7", "12"]);
    }

    #[test]
    fn a_known_path_with_another_method_is_told_apart_from_an_unknown_one() {
        assert!(matches!(
            find(&Method::DELETE, "/v1/sessions"),
            Matched::WrongMethod(m) if m == [Method::POST, Method::GET]
        ));
        assert!(matches!(
            find(&Method::GET, "/v1/sessions/7/nope"),
            Matched::NotFound
        ));
        assert!(matches!(
            find(&Method::GET, "/v1/sessions/"),
            Matched::NotFound
        ));
    }
}
