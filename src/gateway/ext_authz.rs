//! Envoy's external authorization API, `envoy.service.auth.v3.Authorization/
//! Check`, served on the gRPC port beside keyward's own services.
//!
//! Envoy (and Istio, Envoy Gateway, Contour) sends the attributes of each
//! request it holds; keyward reads:
//!
//! - the key from the request's `authorization: Bearer …` header, or the
//!   configured key header (`--gateway-key-header`, e.g. `x-api-key`), in
//!   `headers` or (with Envoy's `encode_raw_headers`) `header_map`;
//! - the route's required permissions from
//!   `context_extensions["keyward_permissions"]` (comma-separated), so each
//!   route asks for its own;
//! - the client address from `attributes.source.address`, for keys with a
//!   CIDR allow-list;
//! - the gateway's own key (`keyward:validate`) from the call's gRPC
//!   `authorization` metadata (Envoy's `initial_metadata`), as any Validate
//!   caller.
//!
//! An allowed request gets `OK` with the upstream headers (see
//! [`super`]), set over any the client sent, the client's other
//! `x-keyward-*` headers in `headers_to_remove`, and the same facts in
//! `dynamic_metadata` (`key_id`, `owner`, `roles`) for Envoy's rate-limit
//! filter and access log. A refused one gets the refusal's gRPC code and a
//! denied HTTP response: its status, `www-authenticate` or `retry-after`,
//! and a short JSON body. A refused gateway credential is a gRPC error, as
//! for Validate: Envoy then answers with its `status_on_error`, and its
//! logs say the authorization service failed rather than the client.

use std::{net::IpAddr, sync::Arc};

use envoy_types::pb::{
    envoy::{
        config::core::v3::{
            HeaderValue, HeaderValueOption, address, header_value_option::HeaderAppendAction,
        },
        service::auth::v3::{
            CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
            attribute_context::HttpRequest,
            authorization_server::{Authorization, AuthorizationServer},
            check_response::HttpResponse,
        },
        r#type::v3::HttpStatus,
    },
    google::{
        protobuf::{Struct, Value, value::Kind},
        rpc,
    },
};
use tonic::{Request, Response, Status};

use super::{
    Allowed, Checked, Gateway, HEADER_PREFIX, JSON, PERMISSIONS_EXTENSION, Refusal, Verdict,
};
use crate::{auth::bearer_token, metrics::Front};

/// The ext_authz service; see the module docs.
pub struct ExtAuthz {
    gateway: Arc<Gateway>,
}

impl ExtAuthz {
    /// The generated gRPC server around a service answering through
    /// `gateway`, refusing requests over `max_message_size` bytes.
    #[must_use]
    pub fn server(gateway: Arc<Gateway>, max_message_size: usize) -> AuthorizationServer<Self> {
        AuthorizationServer::new(Self { gateway }).max_decoding_message_size(max_message_size)
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let attributes = request.get_ref().attributes.as_ref();
        let headers = Headers(
            attributes
                .and_then(|a| a.request.as_ref())
                .and_then(|r| r.http.as_ref()),
        );
        let checked = Checked {
            key: self.gateway.presented_key(|name| headers.get(name)),
            permissions: attributes
                .and_then(|a| a.context_extensions.get(PERMISSIONS_EXTENSION))
                .map_or("", String::as_str),
            client_ip: source_ip(request.get_ref()),
        };
        let verdict = self
            .gateway
            .check(
                Front::ExtAuthz,
                bearer_token(request.metadata()),
                request.remote_addr().map(|addr| addr.ip()),
                checked,
            )
            .await?;
        Ok(Response::new(match verdict {
            Verdict::Allow(allowed) => allow(&allowed, &headers),
            Verdict::Deny(refusal) => deny(refusal),
        }))
    }
}

/// The checked request's headers, lower-case names: in `headers` as Envoy
/// sends them by default, or in `header_map` with `encode_raw_headers: true`
/// (a value in `raw_value` that is not UTF-8 is no value).
struct Headers<'a>(Option<&'a HttpRequest>);

impl<'a> Headers<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        let http = self.0?;
        if let Some(value) = http.headers.get(name) {
            return Some(value);
        }
        let raw = http
            .header_map
            .as_ref()?
            .headers
            .iter()
            .find(|h| h.key == name)?;
        if raw.value.is_empty() {
            std::str::from_utf8(&raw.raw_value).ok()
        } else {
            Some(&raw.value)
        }
    }

    fn names(&self) -> impl Iterator<Item = &'a str> {
        let http = self.0;
        let plain = http
            .into_iter()
            .flat_map(|h| h.headers.keys().map(String::as_str));
        let raw = http
            .and_then(|h| h.header_map.as_ref())
            .into_iter()
            .flat_map(|m| m.headers.iter().map(|h| h.key.as_str()));
        plain.chain(raw)
    }
}

/// The client's address: `attributes.source.address`, when it is an IP
/// socket address (not a pipe).
fn source_ip(request: &CheckRequest) -> Option<IpAddr> {
    let address = request
        .attributes
        .as_ref()?
        .source
        .as_ref()?
        .address
        .as_ref()?
        .address
        .as_ref()?;
    match address {
        address::Address::SocketAddress(socket) => socket.address.parse().ok(),
        _ => None,
    }
}

fn header(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value,
            ..Default::default()
        }),
        // Replaces whatever the client sent under the same name.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..Default::default()
    }
}

fn string(text: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(text)),
    }
}

fn allow(allowed: &Allowed, incoming: &Headers<'_>) -> CheckResponse {
    let set = allowed.headers();
    // Envoy removes after it sets: only the client's `x-keyward-*` headers
    // that keyward does not set itself are listed.
    let headers_to_remove = incoming
        .names()
        .filter(|name| {
            name.as_bytes()
                .get(..HEADER_PREFIX.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(HEADER_PREFIX.as_bytes()))
                && !set.iter().any(|(ours, _)| name.eq_ignore_ascii_case(ours))
        })
        .map(str::to_owned)
        .collect();
    let metadata = Struct {
        fields: [
            ("key_id".to_owned(), string(allowed.key_id.clone())),
            ("owner".to_owned(), string(allowed.owner.clone())),
            ("roles".to_owned(), string(allowed.roles.join(","))),
        ]
        .into(),
    };
    CheckResponse {
        status: Some(rpc::Status::default()),
        dynamic_metadata: Some(metadata),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set
                .into_iter()
                .map(|(name, value)| header(name, value))
                .collect(),
            headers_to_remove,
            ..Default::default()
        })),
    }
}

fn deny(refusal: Refusal) -> CheckResponse {
    let mut headers = vec![header("content-type", JSON.to_owned())];
    headers.extend(
        refusal
            .headers()
            .into_iter()
            .map(|(name, value)| header(name, value)),
    );
    CheckResponse {
        status: Some(rpc::Status {
            code: refusal.rpc_code().into(),
            message: refusal.name().to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(refusal.http_status()),
            }),
            headers,
            body: refusal.body(),
        })),
    }
}
