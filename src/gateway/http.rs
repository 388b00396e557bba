//! The HTTP listener (`keyward serve --http-listen ADDR`, off unless
//! given; TLS with the gRPC port's certificates and client CA when
//! `--tls-cert` is set), for what cannot speak gRPC:
//!
//! - `GET /v1/forward-auth`, the subrequest of nginx `auth_request`, Traefik
//!   `ForwardAuth` and Caddy `forward_auth`: 200 with the upstream headers
//!   (see [`super`]) to copy to the upstream, or the refusal's status
//!   (401, 403, 429, 503) with its headers and a short JSON body. The key is
//!   the client's `authorization: Bearer …` (or the configured key header);
//!   the route's required permissions come in `x-keyward-permissions`
//!   (comma-separated), which the proxy sets per location; the client
//!   address is the peer's, or from `x-forwarded-for` when the peer is a
//!   trusted proxy (`--http-trusted-proxies`).
//!
//!   **The proxy authenticates with its own key** (`keyward:validate`, like
//!   any Validate caller) in `x-keyward-gateway-key`, which it sets on the
//!   subrequest only (`proxy_set_header` in nginx, `header_up` in Caddy):
//!   the client's `authorization` header is the client's. A refused proxy
//!   key is answered 500 (a proxy treats it as its own error): the client
//!   is never told its key is bad when the proxy's is.
//! - `POST /v1/keys:validate`: Validate in JSON ([`super::json`]), the
//!   caller's key in `authorization: Bearer`; 200 with the answer whenever
//!   Validate would answer (an invalid key is a normal answer), or an error
//!   status with `{"error", "message"}`.
//!
//! Each connection is served by hyper's HTTP/1.1 with bounds: headers must
//! arrive within [`HEADER_READ_TIMEOUT`] and fit in [`MAX_HEADER_BYTES`], a
//! body in [`MAX_BODY_BYTES`], a whole request within `--request-timeout`,
//! and at most [`MAX_CONNECTIONS`] connections are served at once.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Extension, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::watch,
};
use tokio_stream::StreamExt as _;
use tower_service::Service as _;

use super::{
    Checked, Gateway, JSON, KEY_ID_HEADER, OWNER_HEADER, ROLES_HEADER, Refusal, Verdict, json,
};
use crate::{
    auth::{Origin, bearer},
    error::ServiceError,
    listener::{self, ConnectionLimit, Peer},
    metrics::Front,
    service::WipedOnDrop,
    tls::TlsConfig,
};

/// The header in which the proxy sends its own key on forward-auth
/// subrequests.
pub const GATEWAY_KEY_HEADER: &str = "x-keyward-gateway-key";

/// The header in which the proxy sends the location's required
/// permissions (comma-separated; repeated headers are joined).
pub const PERMISSIONS_HEADER: &str = "x-keyward-permissions";

/// How long a client gets to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest header block read (hyper's read buffer): a proxied request's
/// headers with a key, a gateway key and cookies fit with room to spare.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest `POST /v1/keys:validate` body: 64 permissions of 256 bytes and a
/// key, in JSON, with room to spare. A bigger one is refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most connections served at once; the next waits to be accepted.
pub const MAX_CONNECTIONS: u32 = 4096;

/// The routes, answering through `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        // Any method: nginx's subrequest keeps the client's method.
        .route("/v1/forward-auth", any(forward_auth))
        .route("/v1/keys:validate", post(validate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

async fn forward_auth(
    State(gateway): State<Arc<Gateway>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let credential = header(GATEWAY_KEY_HEADER)
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .ok_or(ServiceError::Unauthenticated(
            "missing proxy credential: the proxy sends its own key in x-keyward-gateway-key",
        ));
    let permissions = values(&headers, PERMISSIONS_HEADER).join(",");
    let forwarded = values(&headers, "x-forwarded-for");
    let checked = Checked {
        key: gateway.presented_key(header),
        permissions: &permissions,
        client_ip: gateway.client_ip(peer.addr, forwarded.iter().copied()),
    };
    match gateway
        .check(
            Front::ForwardAuth,
            credential,
            Origin::from_peer(&peer),
            checked,
        )
        .await
    {
        Ok(Verdict::Allow(allowed)) => {
            let mut response = StatusCode::OK.into_response();
            let answer = response.headers_mut();
            // Every upstream header is sent, empty when the key has no
            // owner or roles: a proxy that copies named headers from this
            // answer (Caddy's `copy_headers`, Traefik's
            // `authResponseHeaders`) then sets each one, and never passes
            // on a client's forged value or, as Caddy 2.6 does, its own
            // unreplaced placeholder.
            for name in [KEY_ID_HEADER, OWNER_HEADER, ROLES_HEADER] {
                answer.insert(HeaderName::from_static(name), HeaderValue::from_static(""));
            }
            for (name, value) in allowed.headers() {
                // An owner that cannot be a header value (it can hold any
                // printable text) is left empty rather than mangled.
                if let Ok(value) = HeaderValue::from_str(&value) {
                    answer.insert(HeaderName::from_static(name), value);
                }
            }
            response
        }
        Ok(Verdict::Deny(refusal)) => refused(refusal),
        Err(error) => HttpError::Proxy(error).into_response(),
    }
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect()
}

async fn validate(
    State(gateway): State<Arc<Gateway>>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer)
        .ok_or(ServiceError::Unauthenticated(
            "missing caller credential: send `authorization: Bearer <key>`",
        ));
    let answered = match json::parse_request(&body) {
        Ok(request) => {
            let request = WipedOnDrop(request);
            gateway
                .keys()
                .answer(credential, Origin::from_peer(&peer), &request.0)
                .await
        }
        Err(error) => Err(error),
    };
    match answered {
        Ok(answer) => {
            let mut response = (
                [(header::CONTENT_TYPE, JSON)],
                json::response(&answer.response.to_pb()).to_string(),
            )
                .into_response();
            if let Some(seconds) = answer.retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            }
            response
        }
        Err(error) => HttpError::Caller(error).into_response(),
    }
}

/// A refused proxied request, as the client sees it.
fn refused(refusal: Refusal) -> Response {
    let mut response = (
        StatusCode::from_u16(refusal.http_status()).expect("a valid status"),
        [(header::CONTENT_TYPE, JSON)],
        refusal.body(),
    )
        .into_response();
    for (name, value) in refusal.headers() {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

/// An error of the HTTP listener's own callers. Its status is the HTTP
/// counterpart of the gRPC status the same error gets
/// (`impl From<ServiceError> for tonic::Status`, the one mapping), and its
/// message is that status's: never a key.
#[derive(Debug)]
enum HttpError {
    /// The caller of `POST /v1/keys:validate`.
    Caller(ServiceError),
    /// The proxy of a forward-auth subrequest: its credential or its
    /// configuration (malformed permissions) is at fault, so the answer is
    /// 500 and the proxy fails closed; the client's key is not blamed.
    Proxy(ServiceError),
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let (status, from_proxy) = match self {
            Self::Caller(error) => (tonic::Status::from(error), false),
            Self::Proxy(error) => (tonic::Status::from(error), true),
        };
        let code = match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
            tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let (code, message) = if from_proxy && code != StatusCode::SERVICE_UNAVAILABLE {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("keyward refused the proxy's request: {}", status.message()),
            )
        } else {
            (code, status.message().to_owned())
        };
        let body = serde_json::json!({
            "error": format!("{:?}", status.code()).to_ascii_lowercase(),
            "message": message,
        });
        let mut response = (code, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response();
        if code == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="keyward""#),
            );
        }
        response
    }
}

/// Serves `router` on `listener` (over TLS with `tls`), each request
/// bounded by `request_timeout`, until `draining` turns true; then the
/// listener closes, every connection finishes the request it is serving
/// and closes (an idle one at once), and this returns once all have.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsConfig>>,
    router: Router,
    request_timeout: Duration,
    draining: watch::Receiver<bool>,
) {
    let limit = ConnectionLimit::new(MAX_CONNECTIONS);
    let mut incoming: Incoming = match tls {
        None => Box::pin(
            listener::accept(listener, limit.clone(), draining.clone(), |socket, _| {
                std::future::ready(Some(socket))
            })
            .filter_map(|accepted| {
                let connection = accepted.ok()?;
                let peer = connection.peer().clone();
                Some((Box::new(connection) as Box<dyn Stream>, peer))
            }),
        ),
        Some(tls) => Box::pin(
            crate::tls::incoming_http1(listener, tls, limit.clone(), draining.clone()).filter_map(
                |accepted| {
                    let connection = accepted.ok()?;
                    let peer = connection.peer().clone();
                    Some((Box::new(connection) as Box<dyn Stream>, peer))
                },
            ),
        ),
    };
    while let Some((stream, peer)) = incoming.next().await {
        tokio::spawn(connection(
            stream,
            peer,
            router.clone(),
            request_timeout,
            draining.clone(),
        ));
    }
    limit.all_closed().await;
}

/// The accepted connections, each with its peer's address.
type Incoming = Pin<Box<dyn tokio_stream::Stream<Item = (Box<dyn Stream>, Peer)> + Send>>;

/// A connection's byte stream, plaintext or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Serves one connection until it closes; once `draining` turns true, it
/// finishes the request in hand and closes.
async fn connection(
    stream: Box<dyn Stream>,
    peer: Peer,
    router: Router,
    timeout: Duration,
    mut draining: watch::Receiver<bool>,
) {
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(peer.clone());
        let mut router = router.clone();
        bounded(timeout, async move {
            let request = request.map(Body::new);
            router.call(request).await
        })
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let mut served = std::pin::pin!(served);
    let drained = async move {
        // A sender gone (the server stopped) counts as draining too.
        let _ = draining.wait_for(|draining| *draining).await;
    };
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        () = drained => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(peer = %addr, %error, "HTTP connection ended with an error");
    }
}

/// Answers 503 when `answer` takes longer than `timeout`.
async fn bounded(
    timeout: Duration,
    answer: impl Future<Output = Result<Response, Infallible>>,
) -> Result<Response, Infallible> {
    Ok(tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or_else(|_| {
            Ok(HttpError::Caller(ServiceError::Unavailable(
                "the request took longer than --request-timeout".to_owned(),
            ))
            .into_response())
        })
        .unwrap_or_else(|never| match never {}))
}
