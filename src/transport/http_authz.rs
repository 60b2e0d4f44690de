//! The HTTP listener: Envoy's ext_authz `http_service` and proxies' forward
//! auth (nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`).
//! It reads an ask into the gRPC path's `CheckRequest`
//! ([`crate::request::http_check`]), has [`AuthzService::decide`] decide it
//! (the same permits, span, metrics and decision log as gRPC, with its own
//! `transport`), and answers with the gRPC path's rendered `CheckResponse`
//! as plain HTTP: 200 with the headers to set upstream and
//! `x-envoy-auth-headers-to-remove` naming the owned headers that must go;
//! any other status is the deny, with its body and `WWW-Authenticate`.
//!
//! Never imports: the app.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio_stream::StreamExt as _;

use crate::decision::render;
use crate::foundation::proto::auth::{CheckRequest, CheckResponse, check_response};
use crate::foundation::proto::core::{HeaderValue as ProtoHeader, HeaderValueOption};
use crate::request::http_check::{self, HttpAsk, HttpModeConfig, NotRead, Shape};
use crate::transport::connections::{Conn, GatedListener};
use crate::transport::server::AuthzService;

/// Envoy's `http_service` reads this response header as the request headers
/// to remove before the request goes upstream (comma-separated names).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// What the listener's handler holds.
#[derive(Debug, Clone)]
pub struct HttpAuthz {
    service: AuthzService,
    config: Arc<HttpModeConfig>,
    /// `tenancy.context_key`: where a tenant header goes in the CheckRequest.
    context_key: Arc<str>,
    /// Bytes of body read at most (`limits.max_body_bytes`); a longer body is
    /// cut there, which the input reads as truncated.
    max_body: usize,
}

impl HttpAuthz {
    pub fn new(
        service: AuthzService,
        config: HttpModeConfig,
        context_key: &str,
        max_body: usize,
    ) -> HttpAuthz {
        HttpAuthz {
            service,
            config: Arc::new(config),
            context_key: context_key.into(),
            max_body,
        }
    }
}

/// The connection facts the handler needs: the connection (for its request
/// count and timeouts) and the peer's address (for `trusted_proxies`).
#[derive(Debug, Clone)]
pub struct Asker {
    pub conn: Conn,
    pub addr: SocketAddr,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, GatedListener<tokio::net::TcpListener>>,
    > for Asker
{
    fn connect_info(
        stream: axum::serve::IncomingStream<'_, GatedListener<tokio::net::TcpListener>>,
    ) -> Asker {
        Asker {
            conn: stream.io().conn().clone(),
            addr: *stream.remote_addr(),
        }
    }
}

/// The listener's router: every method and path goes to one handler.
pub fn router(state: HttpAuthz) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .with_state(state)
        .layer(crate::transport::connections::CountRequests)
        // Outermost: the connection, where `CountRequests` looks for it.
        .layer(axum::middleware::map_request(
            |mut req: Request| async move {
                if let Some(ConnectInfo(asker)) = req.extensions().get::<ConnectInfo<Asker>>() {
                    let conn = asker.conn.clone();
                    req.extensions_mut().insert(conn);
                }
                req
            },
        ))
}

async fn handle(
    State(state): State<HttpAuthz>,
    ConnectInfo(asker): ConnectInfo<Asker>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = read_body(body, state.max_body).await;
    let target = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let ask = HttpAsk {
        method: parts.method.as_str(),
        target,
        headers: &parts.headers,
        body: &body,
        peer: asker.addr,
    };
    let (check, refused, shape) = match http_check::read(&state.config, &state.context_key, &ask) {
        Ok((check, shape)) => (check, None, shape),
        Err(NotRead::Denied(shape, reason)) => (CheckRequest::default(), Some(reason), shape),
        Err(NotRead::NotFound) => return StatusCode::NOT_FOUND.into_response(),
    };
    // Envoy propagates its trace context (W3C `traceparent`) on the ask.
    let metadata = tonic::metadata::MetadataMap::from_headers(parts.headers.clone());
    let decision = state
        .service
        .decide(&check, refused, &metadata, shape.transport())
        .await;
    let mut rendered = render::render(&decision);
    // The tenant header is the proxy's word to portcullis, not the
    // upstream's: a client's own copy of it goes too.
    if let (Some(name), Some(check_response::HttpResponse::OkResponse(ok))) =
        (&state.config.tenant_header, &mut rendered.http_response)
    {
        let name = name.to_ascii_lowercase();
        if !ok.headers_to_remove.contains(&name) {
            ok.headers_to_remove.push(name);
        }
    }
    deny_status_for(shape, &mut rendered);
    answer(&rendered)
}

/// Seconds a client is told to wait (`retry-after`) when portcullis could
/// not decide and the Envoy shape sends that as a 403.
pub const RETRY_AFTER_SECS: &str = "1";

/// A deny's status as this shape's asker must see it to keep it a deny.
///
/// - Forward auth: nginx `auth_request`, Traefik and Caddy let any 2xx
///   through, so a deny is never 2xx; a preflight portcullis would answer
///   (204) becomes 403, and the proxy answers preflights itself.
/// - Envoy `http_service`: Envoy treats any 5xx from the authorization
///   server as its own error, which `failure_mode_allow: true` turns into an
///   allow. A deny meaning "cannot decide now" (503: not ready, overloaded,
///   keys unavailable, ...) is sent as 403 with `retry-after`; its reason
///   code stays in the JSON body and the status in the decision log.
pub fn deny_status_for(shape: Shape, response: &mut CheckResponse) {
    let Some(check_response::HttpResponse::DeniedResponse(denied)) = &mut response.http_response
    else {
        return;
    };
    let Some(status) = denied.status.as_mut() else {
        return;
    };
    match shape {
        Shape::ForwardAuth if (200..300).contains(&status.code) => {
            status.code = 403;
        }
        Shape::Envoy if (500..600).contains(&status.code) => {
            status.code = 403;
            denied.headers.push(HeaderValueOption {
                header: Some(ProtoHeader {
                    key: "retry-after".into(),
                    value: RETRY_AFTER_SECS.into(),
                    raw_value: Vec::new(),
                }),
                ..Default::default()
            });
        }
        _ => {}
    }
}

/// The body, up to `max` bytes (Envoy's `with_request_body` buffers it;
/// proxies' subrequests have none). Reading stops past `max`: the input
/// treats a body of `max` bytes or more as truncated.
async fn read_body(body: Body, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        out.extend_from_slice(&chunk);
        if out.len() >= max {
            break;
        }
    }
    out
}

/// The rendered `CheckResponse` as the HTTP answer Envoy's `http_service`
/// and forward-auth proxies read.
pub fn answer(response: &CheckResponse) -> Response {
    let mut out = Response::new(Body::empty());
    match &response.http_response {
        Some(check_response::HttpResponse::OkResponse(ok)) => {
            set(&mut out, &ok.headers);
            if !ok.headers_to_remove.is_empty() {
                let names = ok.headers_to_remove.join(",");
                if let Ok(v) = HeaderValue::from_str(&names) {
                    out.headers_mut()
                        .insert(HeaderName::from_static(HEADERS_TO_REMOVE), v);
                }
            }
        }
        Some(check_response::HttpResponse::DeniedResponse(denied)) => {
            let status = denied
                .status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::FORBIDDEN);
            *out.status_mut() = status;
            set(&mut out, &denied.headers);
            *out.body_mut() = Body::from(denied.body.clone());
        }
        None => *out.status_mut() = StatusCode::FORBIDDEN,
    }
    out
}

fn set(out: &mut Response, headers: &[HeaderValueOption]) {
    for h in headers.iter().filter_map(|h| h.header.as_ref()) {
        // Rendered values are checked when the decision is made
        // (`unsafe_header_value`); one that still is not a header is dropped,
        // never sent half-formed.
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(h.key.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            out.headers_mut().insert(k, v);
        }
    }
}
