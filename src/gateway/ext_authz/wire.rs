//! The messages of `envoy.service.auth.v3.Authorization/Check` as keyward
//! reads and writes them: the same bytes on the wire as Envoy's (the field
//! numbers are Envoy's), but only the fields keyward uses.
//!
//! Why not envoy-types' generated `CheckRequest` and `CheckResponse`: a
//! `Check` is on the path of every proxied request, and the full request
//! decodes everything Envoy sends (method, path, host, protocol, each header
//! into a `HashMap` with its own hasher, the peer's labels, metadata…) for
//! keyward to read three things. Here prost skips the fields not listed, as
//! it skips any unknown field, without allocating for them; maps are read as
//! the repeated entries they are on the wire (the last entry of a key wins,
//! as in a map). The answer is written straight from the index entry of the
//! key, with no intermediate strings.
//!
//! The tests check both against envoy-types: what a full `CheckRequest`
//! encodes decodes here to the same values, and what is written here decodes
//! as a full `CheckResponse`.

use prost::{
    Message,
    bytes::{Buf, BufMut},
    encoding::{self, DecodeContext, WireType},
};
use zeroize::Zeroize;

use super::super::{
    Allowed, HEADER_PREFIX, JSON, KEY_ID_HEADER, OWNER_HEADER, ROLES_HEADER, Refusal,
};
use crate::codec::write::{
    MAP_KEY, MAP_VALUE, delimited_len, put_delimited, put_str, put_varint, str_len, varint_len,
};

/// `envoy.service.auth.v3.CheckRequest`: only `attributes`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    /// What Envoy knows of the request it holds.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`: the source peer, the request,
/// and the route's `context_extensions`.
#[derive(Clone, PartialEq, Message)]
pub struct AttributeContext {
    /// The downstream client.
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    /// The request being checked.
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// The route's settings for this filter (`map<string, string>`).
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`: only its address.
#[derive(Clone, PartialEq, Message)]
pub struct Peer {
    /// Where the peer connects from.
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
}

/// `envoy.config.core.v3.Address`: only the `socket_address` case of its
/// oneof (a pipe or an internal address has no IP).
#[derive(Clone, PartialEq, Message)]
pub struct Address {
    /// An IP socket address.
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`: only `address`.
#[derive(Clone, PartialEq, Message)]
pub struct SocketAddress {
    /// The IP address as text.
    #[prost(string, tag = "2")]
    pub address: String,
}

/// `AttributeContext.Request`: only `http`.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    /// The HTTP request.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: only its headers, in either form Envoy
/// sends them.
#[derive(Clone, PartialEq, Message)]
pub struct HttpRequest {
    /// `map<string, string>` with lower-case names (Envoy's default).
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    /// With `encode_raw_headers: true`: the headers as a list.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Message)]
pub struct HeaderMap {
    /// The headers in order.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`. Its value may be a client's key:
/// wiped on drop, and left out of `Debug`.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub struct HeaderValue {
    /// The lower-case name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value, when it is UTF-8.
    #[prost(string, tag = "2")]
    pub value: String,
    /// The value as bytes (Envoy's `encode_raw_headers`).
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

impl Drop for HeaderValue {
    fn drop(&mut self) {
        self.value.zeroize();
        self.raw_value.zeroize();
    }
}

impl std::fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderValue")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// An entry of a `map<string, string>`, as maps are on the wire. Its value
/// may be a client's key (a header): wiped on drop, and left out of `Debug`.
#[derive(Clone, PartialEq, Message)]
#[prost(skip_debug)]
pub struct Entry {
    /// The map's key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value.
    #[prost(string, tag = "2")]
    pub value: String,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.value.zeroize();
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The value under `key` in a map read as entries: the last one, as prost
/// (and protobuf) keep the last of repeated keys.
#[must_use]
pub fn lookup<'a>(entries: &'a [Entry], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.key == key)
        .map(|entry| entry.value.as_str())
}

/// `envoy.service.auth.v3.CheckResponse` as keyward answers: allowed with
/// the upstream headers and dynamic metadata, or denied with an HTTP
/// response. Encode-only: a server never reads one.
#[derive(Debug)]
pub enum CheckResponse {
    /// `status` OK, an `ok_response` and `dynamic_metadata`.
    Allow {
        /// The key's facts.
        allowed: Allowed,
        /// The client's own `x-keyward-*` headers, to be removed.
        remove: Vec<String>,
    },
    /// `status` with the refusal's code, and a `denied_response`.
    Deny(Refusal),
}

/// `HeaderValueOption.append_action`: `OVERWRITE_IF_EXISTS_OR_ADD`, so what
/// keyward sets replaces whatever the client sent under the same name.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

// Field numbers, from Envoy's protos.
const RESPONSE_STATUS: u32 = 1;
const RESPONSE_DENIED: u32 = 2;
const RESPONSE_OK: u32 = 3;
const RESPONSE_METADATA: u32 = 4;
const STATUS_CODE: u32 = 1;
const STATUS_MESSAGE: u32 = 2;
const DENIED_STATUS: u32 = 1;
const DENIED_HEADERS: u32 = 2;
const DENIED_BODY: u32 = 3;
const HTTP_STATUS_CODE: u32 = 1;
const OK_HEADERS: u32 = 2;
const OK_HEADERS_TO_REMOVE: u32 = 5;
const OPTION_HEADER: u32 = 1;
const OPTION_APPEND_ACTION: u32 = 3;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;
const STRUCT_FIELDS: u32 = 1;
const VALUE_STRING: u32 = 3;

/// A `HeaderValueOption { header { key, value }, append_action }`: its
/// contents' length.
fn option_len(name: &[u8], value: &[u8]) -> usize {
    let header = str_len(HEADER_KEY, name) + str_len(HEADER_VALUE, value);
    delimited_len(OPTION_HEADER, header)
        + varint_len(OPTION_APPEND_ACTION, OVERWRITE_IF_EXISTS_OR_ADD)
}

fn put_option(tag: u32, name: &[u8], value: &[u8], buf: &mut impl BufMut) {
    put_delimited(tag, option_len(name, value), buf);
    put_delimited(
        OPTION_HEADER,
        str_len(HEADER_KEY, name) + str_len(HEADER_VALUE, value),
        buf,
    );
    put_str(HEADER_KEY, name, buf);
    put_str(HEADER_VALUE, value, buf);
    put_varint(OPTION_APPEND_ACTION, OVERWRITE_IF_EXISTS_OR_ADD, buf);
}

/// A `Struct.fields` entry whose value is a string: its contents' length.
/// `string_value` is a case of `Value`'s oneof, so it is written even when
/// empty (an empty string is still a string, not a missing value).
fn field_len(name: &[u8], value: &[u8]) -> usize {
    str_len(MAP_KEY, name) + delimited_len(MAP_VALUE, delimited_len(VALUE_STRING, value.len()))
}

fn put_field(name: &[u8], value: &[u8], buf: &mut impl BufMut) {
    put_delimited(STRUCT_FIELDS, field_len(name, value), buf);
    put_str(MAP_KEY, name, buf);
    put_delimited(MAP_VALUE, delimited_len(VALUE_STRING, value.len()), buf);
    put_delimited(VALUE_STRING, value.len(), buf);
    buf.put_slice(value);
}

/// The facts of an allowed key, as header and metadata values.
struct Facts<'a> {
    key_id: [u8; crate::key::KEY_ID_CHARS],
    owner: &'a str,
    roles: String,
}

impl<'a> Facts<'a> {
    fn of(allowed: &'a Allowed) -> Self {
        Self {
            key_id: allowed.key_id().ascii(),
            owner: allowed.owner(),
            roles: allowed.roles_text(),
        }
    }

    /// The upstream headers, leaving out empty values.
    fn headers(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        [
            (KEY_ID_HEADER, &self.key_id[..]),
            (OWNER_HEADER, self.owner.as_bytes()),
            (ROLES_HEADER, self.roles.as_bytes()),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
    }

    /// `dynamic_metadata`'s fields (all three, empty or not).
    fn metadata(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("key_id", &self.key_id[..]),
            ("owner", self.owner.as_bytes()),
            ("roles", self.roles.as_bytes()),
        ]
    }

    fn ok_len(&self, remove: &[String]) -> usize {
        self.headers()
            .map(|(name, value)| delimited_len(OK_HEADERS, option_len(name.as_bytes(), value)))
            .sum::<usize>()
            + remove
                .iter()
                .map(|name| delimited_len(OK_HEADERS_TO_REMOVE, name.len()))
                .sum::<usize>()
    }

    fn metadata_len(&self) -> usize {
        self.metadata()
            .iter()
            .map(|(name, value)| delimited_len(STRUCT_FIELDS, field_len(name.as_bytes(), value)))
            .sum()
    }
}

/// The denied response's parts.
struct Denied {
    refusal: Refusal,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Denied {
    fn of(refusal: Refusal) -> Self {
        let mut headers = vec![("content-type", JSON.to_owned())];
        headers.extend(refusal.headers());
        Self {
            refusal,
            headers,
            body: refusal.body(),
        }
    }

    fn status_len(&self) -> usize {
        varint_len(STATUS_CODE, rpc_code(self.refusal))
            + str_len(STATUS_MESSAGE, self.refusal.name().as_bytes())
    }

    fn http_status(&self) -> u64 {
        u64::from(self.refusal.http_status())
    }

    fn denied_len(&self) -> usize {
        delimited_len(
            DENIED_STATUS,
            varint_len(HTTP_STATUS_CODE, self.http_status()),
        ) + self
            .headers
            .iter()
            .map(|(name, value)| {
                delimited_len(
                    DENIED_HEADERS,
                    option_len(name.as_bytes(), value.as_bytes()),
                )
            })
            .sum::<usize>()
            + str_len(DENIED_BODY, self.body.as_bytes())
    }
}

/// The refusal's gRPC code as `google.rpc.Status.code` encodes it.
fn rpc_code(refusal: Refusal) -> u64 {
    // A gRPC code is a small positive int32.
    u64::try_from(i32::from(refusal.rpc_code())).unwrap_or(0)
}

impl CheckResponse {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            Self::Allow { allowed, remove } => {
                let facts = Facts::of(allowed);
                // An empty `google.rpc.Status` is OK.
                put_delimited(RESPONSE_STATUS, 0, buf);
                put_delimited(RESPONSE_OK, facts.ok_len(remove), buf);
                for (name, value) in facts.headers() {
                    put_option(OK_HEADERS, name.as_bytes(), value, buf);
                }
                for name in remove {
                    put_delimited(OK_HEADERS_TO_REMOVE, name.len(), buf);
                    buf.put_slice(name.as_bytes());
                }
                put_delimited(RESPONSE_METADATA, facts.metadata_len(), buf);
                for (name, value) in facts.metadata() {
                    put_field(name.as_bytes(), value, buf);
                }
            }
            Self::Deny(refusal) => {
                let denied = Denied::of(*refusal);
                put_delimited(RESPONSE_STATUS, denied.status_len(), buf);
                put_varint(STATUS_CODE, rpc_code(*refusal), buf);
                put_str(STATUS_MESSAGE, refusal.name().as_bytes(), buf);
                put_delimited(RESPONSE_DENIED, denied.denied_len(), buf);
                put_delimited(
                    DENIED_STATUS,
                    varint_len(HTTP_STATUS_CODE, denied.http_status()),
                    buf,
                );
                put_varint(HTTP_STATUS_CODE, denied.http_status(), buf);
                for (name, value) in &denied.headers {
                    put_option(DENIED_HEADERS, name.as_bytes(), value.as_bytes(), buf);
                }
                put_str(DENIED_BODY, denied.body.as_bytes(), buf);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Allow { allowed, remove } => {
                let facts = Facts::of(allowed);
                delimited_len(RESPONSE_STATUS, 0)
                    + delimited_len(RESPONSE_OK, facts.ok_len(remove))
                    + delimited_len(RESPONSE_METADATA, facts.metadata_len())
            }
            Self::Deny(refusal) => {
                let denied = Denied::of(*refusal);
                delimited_len(RESPONSE_STATUS, denied.status_len())
                    + delimited_len(RESPONSE_DENIED, denied.denied_len())
            }
        }
    }
}

impl Default for CheckResponse {
    fn default() -> Self {
        Self::Deny(Refusal::Unavailable)
    }
}

/// Written by hand (see the module docs); never decoded by keyward.
impl Message for CheckResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.write(buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Whether `name` is one of the client's `x-keyward-*` headers (any case).
#[must_use]
pub fn is_keyward_header(name: &str) -> bool {
    name.as_bytes()
        .get(..HEADER_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(HEADER_PREFIX.as_bytes()))
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use envoy_types::pb::{
        envoy::{
            config::core::v3::{
                self as core, SocketAddress as FullSocketAddress, address,
                header_value_option::HeaderAppendAction, socket_address::PortSpecifier,
            },
            service::auth::v3::{self as full, attribute_context, check_response::HttpResponse},
        },
        google::protobuf::{Struct, value::Kind},
    };

    use super::*;
    use crate::{
        clock::Timestamp,
        key::{KeyDigest, KeyId},
        model::{IndexedKey, KeyRecord, KeySettings},
    };

    fn pairs(list: &[(&str, &str)]) -> HashMap<String, String> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A `CheckRequest` as Envoy fills it, with many fields keyward never
    /// reads (they must be skipped, whatever their type).
    fn full_request() -> full::CheckRequest {
        let peer = |ip: &str, port| attribute_context::Peer {
            address: Some(core::Address {
                address: Some(address::Address::SocketAddress(FullSocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(PortSpecifier::PortValue(port)),
                    resolver_name: "resolver".to_owned(),
                    ipv4_compat: true,
                    ..Default::default()
                })),
            }),
            service: "frontend".to_owned(),
            labels: pairs(&[("app", "web")]),
            principal: "spiffe://example/web".to_owned(),
            certificate: "-----BEGIN CERTIFICATE-----".to_owned(),
        };
        full::CheckRequest {
            attributes: Some(full::AttributeContext {
                source: Some(peer("203.0.113.7", 51_234)),
                destination: Some(peer("10.0.0.1", 443)),
                request: Some(attribute_context::Request {
                    time: Some(envoy_types::pb::google::protobuf::Timestamp {
                        seconds: 1_700_000_000,
                        nanos: 5,
                    }),
                    http: Some(attribute_context::HttpRequest {
                        id: "12345".to_owned(),
                        method: "POST".to_owned(),
                        headers: pairs(&[
                            ("authorization", "Bearer kw_secret"),
                            (":path", "/deploy"),
                            ("x-keyward-owner", "forged"),
                        ]),
                        header_map: Some(core::HeaderMap {
                            headers: vec![
                                core::HeaderValue {
                                    key: "x-api-key".to_owned(),
                                    raw_value: b"kw_raw".to_vec(),
                                    ..Default::default()
                                },
                                core::HeaderValue {
                                    key: "x-keyward-roles".to_owned(),
                                    value: "forged".to_owned(),
                                    ..Default::default()
                                },
                            ],
                        }),
                        path: "/deploy".to_owned(),
                        host: "api.example.com".to_owned(),
                        scheme: "https".to_owned(),
                        query: "a=b".to_owned(),
                        fragment: "f".to_owned(),
                        size: 42,
                        protocol: "HTTP/2".to_owned(),
                        body: "{}".to_owned(),
                        raw_body: b"{}".to_vec(),
                    }),
                }),
                context_extensions: pairs(&[
                    ("keyward_permissions", "deploy:write, deploy:read"),
                    ("other", "x"),
                ]),
                metadata_context: Some(core::Metadata {
                    filter_metadata: [("f".to_owned(), Struct::default())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn what_envoy_encodes_decodes_to_the_fields_keyward_reads() {
        let bytes = full_request().encode_to_vec();
        let request = CheckRequest::decode(bytes.as_slice()).unwrap();
        let attributes = request.attributes.as_ref().unwrap();
        let address = attributes
            .source
            .as_ref()
            .unwrap()
            .address
            .as_ref()
            .unwrap();
        assert_eq!(
            address.socket_address.as_ref().unwrap().address,
            "203.0.113.7"
        );
        assert_eq!(
            lookup(&attributes.context_extensions, "keyward_permissions"),
            Some("deploy:write, deploy:read")
        );
        assert_eq!(lookup(&attributes.context_extensions, "missing"), None);
        let http = attributes.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(
            lookup(&http.headers, "authorization"),
            Some("Bearer kw_secret")
        );
        assert_eq!(http.headers.len(), 3);
        let raw = &http.header_map.as_ref().unwrap().headers;
        assert_eq!(raw[0].key, "x-api-key");
        assert_eq!(raw[0].raw_value, b"kw_raw");
        assert_eq!(raw[1].value, "forged");
        // Nothing of the key in `Debug`.
        assert!(!format!("{request:?}").contains("kw_"), "{request:?}");
    }

    #[test]
    fn a_repeated_map_key_keeps_its_last_value_as_a_map_would() {
        // Two entries of field 10 with the same key, as a concatenation of
        // two encoded requests gives.
        let first = full::AttributeContext {
            context_extensions: pairs(&[("keyward_permissions", "a:read")]),
            ..Default::default()
        };
        let second = full::AttributeContext {
            context_extensions: pairs(&[("keyward_permissions", "b:read")]),
            ..Default::default()
        };
        let mut bytes = first.encode_to_vec();
        bytes.extend(second.encode_to_vec());
        let full = full::AttributeContext::decode(bytes.as_slice()).unwrap();
        let trimmed = AttributeContext::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            lookup(&trimmed.context_extensions, "keyward_permissions"),
            full.context_extensions
                .get("keyward_permissions")
                .map(String::as_str)
        );
    }

    #[test]
    fn a_malformed_request_does_not_decode() {
        // `attributes` (field 1) claiming more bytes than there are.
        assert!(CheckRequest::decode(&b"\x0a\x05\x0a"[..]).is_err());
        // A header value that is not UTF-8.
        let bad = [0x0a, 0x08, 0x22, 0x06, 0x12, 0x04, 0x1a, 0x02, 0x12, 0x00];
        let mut bytes = bad.to_vec();
        bytes[9] = 0xc0;
        assert!(CheckRequest::decode(bytes.as_slice()).is_err());
    }

    fn allowed(owner: &str, roles: &[&str]) -> Allowed {
        let settings = KeySettings {
            owner: owner.to_owned(),
            roles: roles.iter().map(|r| r.parse().unwrap()).collect(),
            ..Default::default()
        };
        let record = KeyRecord::new(
            KeyId::from_u64(42),
            settings,
            Timestamp::from_millis(0),
            None,
        );
        Allowed {
            key: Arc::new(IndexedKey::new(&record, KeyDigest::dummy())),
        }
    }

    fn metadata(fields: &Struct) -> HashMap<String, String> {
        fields
            .fields
            .iter()
            .map(|(name, value)| match &value.kind {
                Some(Kind::StringValue(text)) => (name.clone(), text.clone()),
                other => panic!("{name}: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn an_allow_decodes_as_envoy_reads_it() {
        for (owner, roles) in [("team-a", &["ci", "deployer"][..]), ("", &[][..])] {
            let answer = CheckResponse::Allow {
                allowed: allowed(owner, roles),
                remove: vec!["x-keyward-other".to_owned()],
            };
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes.len(), answer.encoded_len());
            let full = full::CheckResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                full.status,
                Some(envoy_types::pb::google::rpc::Status::default())
            );
            let Some(HttpResponse::OkResponse(ok)) = full.http_response else {
                panic!("{full:?}");
            };
            let id = KeyId::from_u64(42).to_string();
            let mut expected = vec![("x-keyward-key-id".to_owned(), id.clone())];
            if !owner.is_empty() {
                expected.push(("x-keyward-owner".to_owned(), owner.to_owned()));
            }
            if !roles.is_empty() {
                expected.push(("x-keyward-roles".to_owned(), roles.join(",")));
            }
            let headers: Vec<(String, String)> = ok
                .headers
                .iter()
                .map(|option| {
                    assert_eq!(
                        option.append_action(),
                        HeaderAppendAction::OverwriteIfExistsOrAdd
                    );
                    let header = option.header.as_ref().unwrap();
                    (header.key.clone(), header.value.clone())
                })
                .collect();
            assert_eq!(headers, expected);
            assert_eq!(ok.headers_to_remove, ["x-keyward-other"]);
            assert_eq!(
                metadata(full.dynamic_metadata.as_ref().unwrap()),
                pairs(&[
                    ("key_id", &id),
                    ("owner", owner),
                    ("roles", &roles.join(","))
                ])
            );
        }
    }

    #[test]
    fn a_deny_decodes_as_envoy_reads_it() {
        for refusal in [
            Refusal::InvalidKey { missing: true },
            Refusal::InvalidKey { missing: false },
            Refusal::Forbidden,
            Refusal::RateLimited { retry_after: 7 },
            Refusal::Unavailable,
        ] {
            let answer = CheckResponse::Deny(refusal);
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes.len(), answer.encoded_len());
            let full = full::CheckResponse::decode(bytes.as_slice()).unwrap();
            let status = full.status.unwrap();
            assert_eq!(status.code, i32::from(refusal.rpc_code()), "{refusal:?}");
            assert_eq!(status.message, refusal.name());
            assert_eq!(full.dynamic_metadata, None);
            let Some(HttpResponse::DeniedResponse(denied)) = full.http_response else {
                panic!("{refusal:?}");
            };
            assert_eq!(
                denied.status.unwrap().code,
                i32::from(refusal.http_status())
            );
            let headers: Vec<(String, String)> = denied
                .headers
                .iter()
                .map(|option| {
                    let header = option.header.as_ref().unwrap();
                    (header.key.clone(), header.value.clone())
                })
                .collect();
            let mut expected = vec![("content-type".to_owned(), JSON.to_owned())];
            expected.extend(
                refusal
                    .headers()
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value)),
            );
            assert_eq!(headers, expected, "{refusal:?}");
            assert_eq!(denied.body, refusal.body());
        }
    }

    #[test]
    fn keyward_headers_are_recognised_in_any_case() {
        assert!(is_keyward_header("x-keyward-key-id"));
        assert!(is_keyward_header("X-Keyward-Anything"));
        assert!(!is_keyward_header("x-keywar"));
        assert!(!is_keyward_header("authorization"));
    }
}
