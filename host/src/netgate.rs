//! The outgoing-HTTP gate: every `wasi:http` request a tool makes passes
//! here, redirects included (a tool that follows a redirect sends a new
//! request, and that one is checked like the first).
//!
//! A request goes out only when its `host:port` is on the policy's allow-list
//! and every address the host resolves to is public, or the allow-list entry
//! names that address as an IP literal. Plain-HTTP requests to a name are
//! then sent to the very address that was checked, so a DNS answer that
//! changes between the check and the connection (rebinding) cannot reach a
//! private address. HTTPS keeps the name for TLS, and a private service that
//! rebinding reached would fail certificate verification for that name.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use http::uri::{Authority, Scheme};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::policy::{HostMatch, HostPattern};

/// The gate of one tool call.
pub(crate) struct NetGate {
    allow: Arc<Vec<HostPattern>>,
    /// What was refused during the call, for the call's record.
    denials: Arc<Mutex<Vec<String>>>,
}

impl NetGate {
    pub(crate) fn new(allow: Arc<Vec<HostPattern>>, denials: Arc<Mutex<Vec<String>>>) -> Self {
        NetGate { allow, denials }
    }
}

type ResponseFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for NetGate {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> ResponseFuture {
        let allow = self.allow.clone();
        let denials = self.denials.clone();
        Box::new(async move {
            match check(&allow, request.uri()).await {
                Ok(Some(pinned)) => pin_authority(&mut request, pinned)?,
                Ok(None) => {}
                Err((error, why)) => {
                    tracing::info!(uri = %request.uri(), "outgoing request refused: {why}");
                    if let Ok(mut d) = denials.lock() {
                        d.push(why);
                    }
                    return Err(error);
                }
            }
            // The default hook ignores `fut` too: response-side errors reach
            // the guest through the body stream.
            drop(fut);
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            use http_body_util::BodyExt;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// Is this address one that only an explicit IP entry may reach?
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_restricted(IpAddr::V4(v4));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
        }
    }
}

/// Would the gate let a request to `uri` out under this allow-list? The
/// reason when not. (The same check every request passes; tests use it to
/// make sure a request is refused before they let a tool try it.)
pub async fn would_allow(allow: &[HostPattern], uri: &http::Uri) -> Result<(), String> {
    check(allow, uri).await.map(|_| ()).map_err(|(_, why)| why)
}

/// Checks one request. `Ok(Some(addr))` asks for the connection to be pinned
/// to `addr`.
async fn check(
    allow: &[HostPattern],
    uri: &http::Uri,
) -> Result<Option<SocketAddr>, (HttpError, String)> {
    let denied = |why: String| (HttpError::HttpRequestDenied, why);
    let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTPS);
    let host = uri
        .host()
        .ok_or_else(|| denied(format!("request to {uri} names no host")))?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == Scheme::HTTP { 80 } else { 443 });
    let entry = allow
        .iter()
        .find(|p| p.matches(bare_host, port))
        .ok_or_else(|| {
            denied(format!(
                "{bare_host}:{port} is not in the policy's [network] allow list"
            ))
        })?;
    if let HostMatch::Ip(_) = entry.host {
        // An IP literal the operator wrote down: reachable even if private,
        // and there is no name to resolve again, so nothing to pin.
        return Ok(None);
    }
    if let Ok(ip) = bare_host.parse::<IpAddr>() {
        // A literal matched by a name entry cannot happen, but be strict.
        return Err(denied(format!("{ip} is not named in the allow list")));
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare_host, port))
        .await
        .map_err(|e| {
            (
                HttpError::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                },
                format!("cannot resolve {bare_host}: {e}"),
            )
        })?
        .collect();
    if let Some(bad) = addrs.iter().find(|a| is_restricted(a.ip())) {
        return Err((
            HttpError::DestinationIpProhibited,
            format!(
                "{bare_host} resolves to {}, a loopback, private or link-local address that the policy does not name",
                bad.ip()
            ),
        ));
    }
    let first = addrs.first().copied().ok_or_else(|| {
        (
            HttpError::DestinationNotFound,
            format!("{bare_host} resolves to no address"),
        )
    })?;
    Ok((scheme == Scheme::HTTP).then_some(first))
}

/// Sends a plain-HTTP request to the checked address; the `Host` header
/// (already set from the original authority) keeps the name.
fn pin_authority(request: &mut http::Request<WasiBody>, addr: SocketAddr) -> Result<(), HttpError> {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    if !request.headers().contains_key(http::header::HOST) {
        let value =
            http::HeaderValue::from_str(&host).map_err(|_| HttpError::HttpRequestUriInvalid)?;
        request.headers_mut().insert(http::header::HOST, value);
    }
    let mut parts = request.uri().clone().into_parts();
    parts.authority = Some(
        Authority::try_from(addr.to_string().as_str())
            .map_err(|_| HttpError::HttpRequestUriInvalid)?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| HttpError::HttpRequestUriInvalid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_ranges_cover_loopback_private_link_local_and_mapped() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(
                is_restricted(ip.parse().unwrap()),
                "{ip} should be restricted"
            );
        }
        for ip in ["93.184.216.34", "2606:4700::1111", "8.8.8.8"] {
            assert!(!is_restricted(ip.parse().unwrap()), "{ip} should be public");
        }
    }
}
