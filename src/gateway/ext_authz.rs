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
//!
//! The messages are keyward's own ([`wire`]): Envoy's on the wire, holding
//! only what keyward reads and writes.

pub mod wire;

use std::{net::IpAddr, sync::Arc};

use tonic::{Request, Response, Status};

use super::{Checked, Gateway, PERMISSIONS_EXTENSION, Verdict};
use crate::{
    auth::{Origin, bearer_token},
    metrics::Front,
};
use wire::{CheckRequest, CheckResponse, HttpRequest, is_keyward_header, lookup};

/// The generated server of `envoy.service.auth.v3.Authorization`, over the
/// messages of [`wire`] (see `build.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(
        env!("OUT_DIR"),
        "/envoy.service.auth.v3.Authorization.rs"
    ));
}

pub use server::authorization_server::{Authorization, AuthorizationServer};

/// The ext_authz service; see the module docs.
pub struct ExtAuthz {
    gateway: Arc<Gateway>,
}

impl ExtAuthz {
    /// The gRPC server around a service answering through `gateway`,
    /// refusing requests over `max_message_size` bytes.
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
                .and_then(|a| lookup(&a.context_extensions, PERMISSIONS_EXTENSION))
                .unwrap_or_default(),
            client_ip: source_ip(request.get_ref()),
        };
        let verdict = self
            .gateway
            .check(
                Front::ExtAuthz,
                bearer_token(request.metadata()),
                Origin::of(&request),
                checked,
            )
            .await?;
        Ok(Response::new(match verdict {
            Verdict::Allow(allowed) => {
                // Envoy removes after it sets: only the client's
                // `x-keyward-*` headers that keyward does not set itself
                // are listed, each once.
                let mut remove: Vec<String> = Vec::new();
                for name in headers.names() {
                    if is_keyward_header(name)
                        && !allowed.sets(name)
                        && !remove.iter().any(|listed| listed == name)
                    {
                        remove.push(name.to_owned());
                    }
                }
                CheckResponse::Allow { allowed, remove }
            }
            Verdict::Deny(refusal) => CheckResponse::Deny(refusal),
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
        if let Some(value) = lookup(&http.headers, name) {
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
            .flat_map(|h| h.headers.iter().map(|entry| entry.key.as_str()));
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
    request
        .attributes
        .as_ref()?
        .source
        .as_ref()?
        .address
        .as_ref()?
        .socket_address
        .as_ref()?
        .address
        .parse()
        .ok()
}
