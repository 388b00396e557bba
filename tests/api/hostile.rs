//! Hostile input on every RPC and every field, over gRPC: empty, oversized,
//! control and bidirectional characters, invalid UTF-8, negative and
//! overflowing numbers, unknown enum values, absurd durations and dates.
//!
//! Each malformed request must be `INVALID_ARGUMENT` with a message that names
//! the field and echoes neither the caller's key nor a key under validation,
//! and the server must keep serving (a normal Validate after every case).
//!
//! Requests go out as raw protobuf bytes (see [`RawCodec`]), so a case can say
//! what the generated types cannot: a string field that is not UTF-8, a
//! negative varint in an unsigned field, a truncated message.

use bytes::{Buf, BufMut};
use http::uri::PathAndQuery;
use keyward::{
    pb::{self, Denial},
    testing::{Backend, authed, denial, on_both_stores, spawn_app},
};
use prost::{
    Message,
    encoding::{WireType, encode_key, encode_varint},
};
use prost_types::{Duration, Timestamp};
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

const VALIDATE: &str = "/keyward.v1.KeyService/Validate";
const MINT: &str = "/keyward.v1.AdminService/MintKey";
const GET_KEY: &str = "/keyward.v1.AdminService/GetKey";
const LIST_KEYS: &str = "/keyward.v1.AdminService/ListKeys";
const ROTATE: &str = "/keyward.v1.AdminService/RotateKey";
const REVOKE: &str = "/keyward.v1.AdminService/RevokeKey";
const UPDATE_KEY: &str = "/keyward.v1.AdminService/UpdateKey";
const REVOKE_KEYS: &str = "/keyward.v1.AdminService/RevokeKeys";
const CREATE_ROLE: &str = "/keyward.v1.AdminService/CreateRole";
const GET_ROLE: &str = "/keyward.v1.AdminService/GetRole";
const UPDATE_ROLE: &str = "/keyward.v1.AdminService/UpdateRole";
const DELETE_ROLE: &str = "/keyward.v1.AdminService/DeleteRole";
const AUDIT: &str = "/keyward.v1.AdminService/ListAuditRecords";
const CREATE_POLICY: &str = "/keyward.v1.TrustService/CreateTrustPolicy";
const GET_POLICY: &str = "/keyward.v1.TrustService/GetTrustPolicy";
const UPDATE_POLICY: &str = "/keyward.v1.TrustService/UpdateTrustPolicy";
const DELETE_POLICY: &str = "/keyward.v1.TrustService/DeleteTrustPolicy";
const EXCHANGE: &str = "/keyward.v1.ExchangeService/Exchange";

/// Sends pre-encoded request bytes and ignores what a successful answer
/// holds: the cases here are about the status.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct IgnoringDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = IgnoringDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> IgnoringDecoder {
        IgnoringDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

impl Decoder for IgnoringDecoder {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// Calls `method` with `body` as the request message, authenticated as `caller`.
async fn call(channel: &Channel, caller: &str, method: &'static str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let path = PathAndQuery::from_static(method);
    match grpc.unary(authed(caller, body), path, RawCodec).await {
        Ok(_) => Status::ok(""),
        Err(status) => status,
    }
}

/// A length-delimited field: a string, bytes or an embedded message.
fn raw_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// A varint field with `value`'s two's complement, as a client that sends
/// `int64` into an unsigned field would.
fn varint_field(tag: u32, value: i64) -> Vec<u8> {
    let mut out = Vec::new();
    encode_key(tag, WireType::Varint, &mut out);
    encode_varint(u64::from_ne_bytes(value.to_ne_bytes()), &mut out);
    out
}

/// Not UTF-8: a lone continuation byte, an overlong `/` and a surrogate.
const NOT_UTF8: &[u8] = b"ab\x80c\xc0\xaf\xed\xa0\x80";

/// `message` followed by string field `tag` holding [`NOT_UTF8`]; protobuf
/// keeps the last occurrence of a field, so this replaces its value.
fn with_bad_utf8(message: &impl Message, tag: u32) -> Vec<u8> {
    let mut body = message.encode_to_vec();
    body.extend(raw_field(tag, NOT_UTF8));
    body
}

/// `message` followed by a map entry (`tag`) whose key or value is [`NOT_UTF8`].
fn with_bad_utf8_label(message: &impl Message, tag: u32, in_value: bool) -> Vec<u8> {
    let (key, value) = if in_value {
        (raw_field(1, b"env"), raw_field(2, NOT_UTF8))
    } else {
        (raw_field(1, NOT_UTF8), raw_field(2, b"prod"))
    };
    let mut body = message.encode_to_vec();
    body.extend(raw_field(tag, &[key, value].concat()));
    body
}

fn encoded(message: &impl Message) -> Vec<u8> {
    message.encode_to_vec()
}

fn duration(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

fn timestamp(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

fn limit(requests: u32, per: Option<Duration>, burst: u32) -> Option<pb::RateLimit> {
    Some(pb::RateLimit {
        requests,
        per,
        burst,
    })
}

fn one_second() -> Option<Duration> {
    duration(1, 0)
}

fn many(count: usize, item: impl Fn(usize) -> String) -> Vec<String> {
    (0..count).map(item).collect()
}

fn text(count: usize) -> String {
    "x".repeat(count)
}

const YEAR_SECONDS: i64 = 365 * 24 * 3600;
const CONTROL: &str = "ops\u{1b}[2J";
const NUL: &str = "ops\0";
const BIDI: &str = "\u{202E}spo";
const ZERO_WIDTH: &str = "o\u{200B}ps";

/// One malformed request: which RPC, what is hostile about it, its bytes,
/// and the text the error must contain (the field's name).
struct Case {
    method: &'static str,
    what: String,
    body: Vec<u8>,
    field: &'static str,
}

fn case(method: &'static str, what: impl Into<String>, body: Vec<u8>, field: &'static str) -> Case {
    Case {
        method,
        what: what.into(),
        body,
        field,
    }
}

/// What the cases point at: a key to rotate, revoke and update, and a role
/// to update and delete, none of which a refused case may change.
struct Targets {
    key_id: String,
    key: String,
    role: String,
}

// The tables below are laid out by hand, one case a line.

#[rustfmt::skip]
fn validate_cases(t: &Targets) -> Vec<Case> {
    let with = |required: Vec<String>, client_ip: &str| pb::ValidateRequest {
        key: t.key.clone(),
        required_permissions: required,
        client_ip: client_ip.to_owned(),
    };
    let required = |permission: &str| encoded(&with(vec![permission.to_owned()], ""));
    let ip = |client_ip: &str| encoded(&with(vec![], client_ip));
    let plain = with(vec![], "");
    vec![
        case(VALIDATE, "65 permissions", encoded(&with(many(65, |i| format!("p:{i}")), "")), "required_permissions"),
        case(VALIDATE, "a 257-byte permission", required(&text(257)), "required_permissions"),
        case(VALIDATE, "an empty permission", required(""), "required_permissions"),
        case(VALIDATE, "a permission with a control character", required("deploy:\u{1b}"), "required_permissions"),
        case(VALIDATE, "a permission with a bidi override", required("deploy:\u{202E}"), "required_permissions"),
        case(VALIDATE, "the key itself as a permission", required(&t.key), "required_permissions"),
        case(VALIDATE, "client_ip not an address", ip("not-an-ip"), "client_ip"),
        case(VALIDATE, "client_ip a range", ip("10.0.0.0/8"), "client_ip"),
        case(VALIDATE, "client_ip with a newline", ip("10.0.0.1\n"), "client_ip"),
        case(VALIDATE, "client_ip with a zone", ip("fe80::1%eth0"), "client_ip"),
        case(VALIDATE, "client_ip of 10 KiB", ip(&"1".repeat(10 * 1024)), "client_ip"),
        case(VALIDATE, "client_ip with a bidi override", ip("\u{202E}10.0.0.1"), "client_ip"),
        case(VALIDATE, "client_ip the key itself", ip(&t.key), "client_ip"),
        case(VALIDATE, "key not UTF-8", with_bad_utf8(&plain, 1), "ValidateRequest.key"),
        case(VALIDATE, "a permission not UTF-8", with_bad_utf8(&plain, 2), "ValidateRequest.required_permissions"),
        case(VALIDATE, "client_ip not UTF-8", with_bad_utf8(&plain, 3), "ValidateRequest.client_ip"),
        case(VALIDATE, "key as a varint (wrong wire type)", varint_field(1, 7), "ValidateRequest.key"),
    ]
}

#[rustfmt::skip]
fn mint_cases() -> Vec<Case> {
    let mint = |f: &dyn Fn(&mut pb::MintKeyRequest)| {
        let mut request = pb::MintKeyRequest::default();
        f(&mut request);
        encoded(&request)
    };
    let ttl = |d: Option<Duration>| mint(&|r| r.expiry = d.map(pb::mint_key_request::Expiry::Ttl));
    let at = |t: Option<Timestamp>| mint(&|r| r.expiry = t.map(pb::mint_key_request::Expiry::ExpiresAt));
    let rate = |l: Option<pb::RateLimit>| mint(&|r| r.rate_limit.clone_from(&l));
    let label = |k: &str, v: &str| mint(&|r| r.labels = [(k.to_owned(), v.to_owned())].into());
    let bad_utf8 = |tag| with_bad_utf8(&pb::MintKeyRequest::default(), tag);
    let bad_label = |in_value| with_bad_utf8_label(&pb::MintKeyRequest::default(), 3, in_value);
    let now = now_seconds();
    let truncated = encoded(&pb::MintKeyRequest { owner: "payments".into(), ..Default::default() })[..4].to_vec();
    vec![
        case(MINT, "prefix uppercase", mint(&|r| r.prefix = "Kw".into()), "prefix"),
        case(MINT, "prefix of 17 characters", mint(&|r| r.prefix = "k".repeat(17)), "prefix"),
        case(MINT, "prefix with a bidi override", mint(&|r| r.prefix = "k\u{202E}w".into()), "prefix"),
        case(MINT, "prefix with a newline", mint(&|r| r.prefix = "kw\n".into()), "prefix"),
        case(MINT, "prefix in Cyrillic", mint(&|r| r.prefix = "ключ".into()), "prefix"),
        case(MINT, "65 roles", mint(&|r| r.roles = many(65, |i| format!("r{i}"))), "roles"),
        case(MINT, "role uppercase", mint(&|r| r.roles = vec!["Admin".into()]), "roles"),
        case(MINT, "role of 65 characters", mint(&|r| r.roles = vec![text(65)]), "roles"),
        case(MINT, "role with a zero-width space", mint(&|r| r.roles = vec!["adm\u{200B}in".into()]), "roles"),
        case(MINT, "role that does not exist", mint(&|r| r.roles = vec!["no-such-role".into()]), "roles"),
        case(MINT, "65 labels", mint(&|r| r.labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect()), "labels"),
        case(MINT, "label key empty", label("", "x"), "labels"),
        case(MINT, "label key of 257 bytes", label(&text(257), "x"), "labels"),
        case(MINT, "label key with `=`", label("a=b", "x"), "labels"),
        case(MINT, "label key with a control character", label("env\u{7}", "x"), "labels"),
        case(MINT, "label value of 257 bytes", label("env", &text(257)), "labels"),
        case(MINT, "label value with a control character", label("env", CONTROL), "labels"),
        case(MINT, "label value with a bidi override", label("env", BIDI), "labels"),
        case(MINT, "label value with a zero-width space", label("env", ZERO_WIDTH), "labels"),
        case(MINT, "owner of 257 bytes", mint(&|r| r.owner = text(257)), "owner"),
        case(MINT, "owner with an escape sequence", mint(&|r| r.owner = CONTROL.into()), "owner"),
        case(MINT, "owner with NUL", mint(&|r| r.owner = NUL.into()), "owner"),
        case(MINT, "owner with a bidi override", mint(&|r| r.owner = BIDI.into()), "owner"),
        case(MINT, "description of 1025 bytes", mint(&|r| r.description = text(1025)), "description"),
        case(MINT, "description with a control character", mint(&|r| r.description = CONTROL.into()), "description"),
        case(MINT, "description with a zero-width space", mint(&|r| r.description = ZERO_WIDTH.into()), "description"),
        case(MINT, "ttl negative", ttl(duration(-1, 0)), "ttl"),
        case(MINT, "ttl with negative nanos", ttl(duration(0, -1)), "ttl"),
        case(MINT, "ttl of zero", ttl(duration(0, 0)), "ttl"),
        case(MINT, "ttl below a millisecond", ttl(duration(0, 1)), "ttl"),
        case(MINT, "ttl with nanos out of range", ttl(duration(1, 1_000_000_000)), "ttl"),
        case(MINT, "ttl over 100 years", ttl(duration(101 * YEAR_SECONDS, 0)), "ttl"),
        case(MINT, "ttl of i64::MAX seconds", ttl(duration(i64::MAX, 999_999_999)), "ttl"),
        case(MINT, "ttl of i64::MIN seconds", ttl(duration(i64::MIN, 0)), "ttl"),
        case(MINT, "expires_at in the past", at(timestamp(now - 3600, 0)), "expires_at"),
        case(MINT, "expires_at at the epoch", at(timestamp(0, 0)), "expires_at"),
        case(MINT, "expires_at in year 1", at(timestamp(-62_135_596_800, 0)), "expires_at"),
        case(MINT, "expires_at over 100 years away", at(timestamp(now + 101 * YEAR_SECONDS, 0)), "expires_at"),
        case(MINT, "expires_at at i64::MAX seconds", at(timestamp(i64::MAX, 0)), "expires_at"),
        case(MINT, "expires_at at i64::MIN seconds", at(timestamp(i64::MIN, 0)), "expires_at"),
        case(MINT, "expires_at with negative nanos", at(timestamp(now + 3600, -1)), "expires_at"),
        case(MINT, "expires_at with nanos out of range", at(timestamp(now + 3600, 1_000_000_000)), "expires_at"),
        case(MINT, "permission `*`", mint(&|r| r.permissions = vec!["*".into()]), "permissions"),
        case(MINT, "permission uppercase", mint(&|r| r.permissions = vec!["Deploy".into()]), "permissions"),
        case(MINT, "permission empty", mint(&|r| r.permissions = vec![String::new()]), "permissions"),
        case(MINT, "permission of 257 bytes", mint(&|r| r.permissions = vec![text(257)]), "permissions"),
        case(MINT, "permission with a bidi override", mint(&|r| r.permissions = vec!["a:\u{202E}b".into()]), "permissions"),
        case(MINT, "65 permissions", mint(&|r| r.permissions = many(65, |i| format!("p:{i}"))), "permissions"),
        case(MINT, "CIDR prefix too long", mint(&|r| r.allowed_cidrs = vec!["10.0.0.0/33".into()]), "allowed_cidrs"),
        case(MINT, "CIDR garbage", mint(&|r| r.allowed_cidrs = vec!["garbage".into()]), "allowed_cidrs"),
        case(MINT, "CIDR with a newline", mint(&|r| r.allowed_cidrs = vec!["10.0.0.0/8\n".into()]), "allowed_cidrs"),
        case(MINT, "CIDR of 10 KiB", mint(&|r| r.allowed_cidrs = vec!["1".repeat(10 * 1024)]), "allowed_cidrs"),
        case(MINT, "65 CIDRs", mint(&|r| r.allowed_cidrs = many(65, |i| format!("10.0.0.{i}"))), "allowed_cidrs"),
        case(MINT, "rate of zero requests", rate(limit(0, one_second(), 1)), "rate_limit"),
        case(MINT, "rate with zero burst", rate(limit(1, one_second(), 0)), "rate_limit"),
        case(MINT, "rate without a period", rate(limit(1, None, 1)), "rate_limit"),
        case(MINT, "rate period negative", rate(limit(1, duration(-1, 0), 1)), "rate_limit"),
        case(MINT, "rate period over 24h", rate(limit(1, duration(25 * 3600, 0), 1)), "rate_limit"),
        case(MINT, "rate period below a millisecond", rate(limit(1, duration(0, 1), 1)), "rate_limit"),
        case(MINT, "rate period with nanos out of range", rate(limit(1, duration(0, 1_500_000_000), 1)), "rate_limit"),
        case(MINT, "rate period of i64::MAX seconds", rate(limit(1, duration(i64::MAX, 0), 1)), "rate_limit"),
        case(MINT, "max_uses over i64::MAX", mint(&|r| r.max_uses = u64::MAX), "max_uses"),
        case(MINT, "max_uses -1 as a varint", varint_field(11, -1), "max_uses"),
        case(MINT, "prefix not UTF-8", bad_utf8(1), "MintKeyRequest.prefix"),
        case(MINT, "role not UTF-8", bad_utf8(2), "MintKeyRequest.roles"),
        case(MINT, "label key not UTF-8", bad_label(false), "MintKeyRequest.labels"),
        case(MINT, "label value not UTF-8", bad_label(true), "MintKeyRequest.labels"),
        case(MINT, "owner not UTF-8", bad_utf8(4), "MintKeyRequest.owner"),
        case(MINT, "description not UTF-8", bad_utf8(5), "MintKeyRequest.description"),
        case(MINT, "permission not UTF-8", bad_utf8(8), "MintKeyRequest.permissions"),
        case(MINT, "CIDR not UTF-8", bad_utf8(9), "MintKeyRequest.allowed_cidrs"),
        case(MINT, "a truncated message", truncated, "MintKeyRequest.owner"),
    ]
}

/// Hostile key ids, for every field that takes one.
fn bad_ids(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("too short", "abc".into()),
        ("of 12 characters", "0".repeat(12)),
        ("above u64::MAX", "z".repeat(11)),
        ("with a control character", "0000000000\u{1b}".into()),
        ("with a bidi override", "\u{202E}000000000A".into()),
        ("of 10 KiB", "A".repeat(10 * 1024)),
        ("the full key", key.to_owned()),
    ]
}

#[rustfmt::skip]
fn key_cases(t: &Targets) -> Vec<Case> {
    let mut cases = Vec::new();
    for (what, id) in bad_ids(&t.key) {
        cases.extend([
            case(GET_KEY, format!("id {what}"), encoded(&pb::GetKeyRequest { id: id.clone() }), "id"),
            case(ROTATE, format!("id {what}"), encoded(&pb::RotateKeyRequest { id: id.clone(), grace: None }), "id"),
            case(REVOKE, format!("id {what}"), encoded(&pb::RevokeKeyRequest { id: id.clone(), reason: String::new() }), "id"),
            case(UPDATE_KEY, format!("id {what}"), encoded(&pb::UpdateKeyRequest { id: id.clone(), rate_limit: None, clear_rate_limit: true }), "id"),
        ]);
        // An empty key_id or actor means "any".
        if !id.is_empty() {
            cases.extend([
                case(AUDIT, format!("key_id {what}"), encoded(&pb::ListAuditRecordsRequest { key_id: id.clone(), ..Default::default() }), "key_id"),
                case(AUDIT, format!("actor {what}"), encoded(&pb::ListAuditRecordsRequest { actor: id, ..Default::default() }), "actor"),
            ]);
        }
    }
    let rotate = |grace| encoded(&pb::RotateKeyRequest { id: t.key_id.clone(), grace });
    let revoke = |reason: &str| pb::RevokeKeyRequest { id: t.key_id.clone(), reason: reason.to_owned() };
    let update = |rate_limit, clear_rate_limit| encoded(&pb::UpdateKeyRequest { id: t.key_id.clone(), rate_limit, clear_rate_limit });
    cases.extend([
        case(ROTATE, "grace negative", rotate(duration(-1, 0)), "grace"),
        case(ROTATE, "grace with negative nanos", rotate(duration(0, -5)), "grace"),
        case(ROTATE, "grace with nanos out of range", rotate(duration(0, 1_000_000_000)), "grace"),
        case(ROTATE, "grace over 100 years", rotate(duration(101 * YEAR_SECONDS, 0)), "grace"),
        case(ROTATE, "grace of i64::MAX seconds", rotate(duration(i64::MAX, 999_999_999)), "grace"),
        case(ROTATE, "id not UTF-8", with_bad_utf8(&pb::RotateKeyRequest::default(), 1), "RotateKeyRequest.id"),
        case(REVOKE, "reason of 1025 bytes", encoded(&revoke(&text(1025))), "reason"),
        case(REVOKE, "reason with an escape sequence", encoded(&revoke(CONTROL)), "reason"),
        case(REVOKE, "reason with a bidi override", encoded(&revoke(BIDI)), "reason"),
        case(REVOKE, "reason not UTF-8", with_bad_utf8(&revoke(""), 2), "RevokeKeyRequest.reason"),
        case(GET_KEY, "id not UTF-8", with_bad_utf8(&pb::GetKeyRequest::default(), 1), "GetKeyRequest.id"),
        case(UPDATE_KEY, "nothing to change", update(None, false), "rate_limit"),
        case(UPDATE_KEY, "a rate limit and clear_rate_limit", update(limit(1, one_second(), 1), true), "rate_limit"),
        case(UPDATE_KEY, "rate of zero requests", update(limit(0, one_second(), 1), false), "rate_limit"),
        case(UPDATE_KEY, "rate with zero burst", update(limit(1, one_second(), 0), false), "rate_limit"),
        case(UPDATE_KEY, "rate period negative", update(limit(1, duration(-3, 0), 1), false), "rate_limit"),
        case(UPDATE_KEY, "rate period with negative nanos", update(limit(1, duration(1, -1), 1), false), "rate_limit"),
        case(UPDATE_KEY, "id not UTF-8", with_bad_utf8(&pb::UpdateKeyRequest::default(), 1), "UpdateKeyRequest.id"),
    ]);
    cases
}

#[rustfmt::skip]
fn list_cases() -> Vec<Case> {
    let list = |f: &dyn Fn(&mut pb::ListKeysRequest)| {
        let mut request = pb::ListKeysRequest::default();
        f(&mut request);
        encoded(&request)
    };
    let audit = |f: &dyn Fn(&mut pb::ListAuditRecordsRequest)| {
        let mut request = pb::ListAuditRecordsRequest::default();
        f(&mut request);
        encoded(&request)
    };
    vec![
        case(LIST_KEYS, "page_size 1001", list(&|r| r.page_size = 1001), "page_size"),
        case(LIST_KEYS, "page_size u32::MAX", list(&|r| r.page_size = u32::MAX), "page_size"),
        case(LIST_KEYS, "page_size -1 as a varint", varint_field(1, -1), "page_size"),
        case(LIST_KEYS, "state 99", list(&|r| r.state = 99), "state"),
        case(LIST_KEYS, "state -1", list(&|r| r.state = -1), "state"),
        case(LIST_KEYS, "page_token garbage", list(&|r| r.page_token = "x".into()), "page_token"),
        case(LIST_KEYS, "page_token without an id", list(&|r| r.page_token = "1.".into()), "page_token"),
        case(LIST_KEYS, "page_token with overflowing millis", list(&|r| r.page_token = "99999999999999999999.0000000000A".into()), "page_token"),
        case(LIST_KEYS, "page_token of 10 KiB", list(&|r| r.page_token = text(10 * 1024)), "page_token"),
        case(LIST_KEYS, "page_token with a control character", list(&|r| r.page_token = "1\n.0000000000A".into()), "page_token"),
        case(LIST_KEYS, "role uppercase", list(&|r| r.role = "Admin".into()), "role"),
        case(LIST_KEYS, "role with a bidi override", list(&|r| r.role = "\u{202E}admin".into()), "role"),
        case(LIST_KEYS, "label key with `=`", list(&|r| r.labels = [("a=b".into(), "x".into())].into()), "labels"),
        case(LIST_KEYS, "label value with a control character", list(&|r| r.labels = [("env".into(), CONTROL.into())].into()), "labels"),
        case(LIST_KEYS, "owner of 257 bytes", list(&|r| r.owner = text(257)), "owner"),
        case(LIST_KEYS, "owner with an escape sequence", list(&|r| r.owner = CONTROL.into()), "owner"),
        case(LIST_KEYS, "owner with a bidi override", list(&|r| r.owner = BIDI.into()), "owner"),
        case(LIST_KEYS, "owner not UTF-8", with_bad_utf8(&pb::ListKeysRequest::default(), 4), "ListKeysRequest.owner"),
        case(LIST_KEYS, "page_token not UTF-8", with_bad_utf8(&pb::ListKeysRequest::default(), 2), "ListKeysRequest.page_token"),
        case(LIST_KEYS, "label value not UTF-8", with_bad_utf8_label(&pb::ListKeysRequest::default(), 3, true), "ListKeysRequest.labels"),
        case(AUDIT, "since with negative nanos", audit(&|r| r.since = timestamp(0, -1)), "since"),
        case(AUDIT, "since with nanos out of range", audit(&|r| r.since = timestamp(0, 1_000_000_000)), "since"),
        case(AUDIT, "since at i64::MAX seconds", audit(&|r| r.since = timestamp(i64::MAX, 0)), "since"),
        case(AUDIT, "until at i64::MIN seconds", audit(&|r| r.until = timestamp(i64::MIN, 0)), "until"),
        case(AUDIT, "until with nanos out of range", audit(&|r| r.until = timestamp(5, i32::MAX)), "until"),
        case(AUDIT, "action of 65 bytes", audit(&|r| r.action = text(65)), "action"),
        case(AUDIT, "action with a control character", audit(&|r| r.action = "key.mint\n".into()), "action"),
        case(AUDIT, "action with a bidi override", audit(&|r| r.action = "\u{202E}key.mint".into()), "action"),
        case(AUDIT, "page_size 1001", audit(&|r| r.page_size = 1001), "page_size"),
        case(AUDIT, "page_size -1 as a varint", varint_field(6, -1), "page_size"),
        case(AUDIT, "page_token garbage", audit(&|r| r.page_token = "x".into()), "page_token"),
        case(AUDIT, "page_token overflowing", audit(&|r| r.page_token = "99999999999999999999".into()), "page_token"),
        case(AUDIT, "action not UTF-8", with_bad_utf8(&pb::ListAuditRecordsRequest::default(), 5), "ListAuditRecordsRequest.action"),
    ]
}

#[rustfmt::skip]
fn bulk_cases() -> Vec<Case> {
    // A dry run on a label nothing carries: if a case were accepted, nothing would be revoked.
    let base = pb::RevokeKeysRequest {
        labels: [("hostile".into(), "never-matches".into())].into(),
        dry_run: true,
        ..Default::default()
    };
    let revoke = |f: &dyn Fn(&mut pb::RevokeKeysRequest)| {
        let mut request = base.clone();
        f(&mut request);
        encoded(&request)
    };
    vec![
        case(REVOKE_KEYS, "no labels", revoke(&|r| r.labels.clear()), "labels"),
        case(REVOKE_KEYS, "label key empty", revoke(&|r| r.labels = [(String::new(), "x".into())].into()), "labels"),
        case(REVOKE_KEYS, "label value with a bidi override", revoke(&|r| r.labels = [("env".into(), BIDI.into())].into()), "labels"),
        case(REVOKE_KEYS, "65 labels", revoke(&|r| r.labels = (0..65).map(|i| (format!("k{i}"), String::new())).collect()), "labels"),
        case(REVOKE_KEYS, "reason of 1025 bytes", revoke(&|r| r.reason = text(1025)), "reason"),
        case(REVOKE_KEYS, "reason with NUL", revoke(&|r| r.reason = NUL.into()), "reason"),
        case(REVOKE_KEYS, "owner of 257 bytes", revoke(&|r| r.owner = text(257)), "owner"),
        case(REVOKE_KEYS, "owner with an escape sequence", revoke(&|r| r.owner = CONTROL.into()), "owner"),
        case(REVOKE_KEYS, "owner not UTF-8", with_bad_utf8(&base, 2), "RevokeKeysRequest.owner"),
        case(REVOKE_KEYS, "label key not UTF-8", with_bad_utf8_label(&base, 1, false), "RevokeKeysRequest.labels"),
    ]
}

#[rustfmt::skip]
fn role_cases(t: &Targets) -> Vec<Case> {
    let create = |f: &dyn Fn(&mut pb::CreateRoleRequest)| {
        let mut request = pb::CreateRoleRequest {
            name: "hostile-new".into(),
            permissions: vec!["deploy:read".into()],
            ..Default::default()
        };
        f(&mut request);
        encoded(&request)
    };
    let update_request = pb::UpdateRoleRequest { name: t.role.clone(), ..Default::default() };
    let update = |f: &dyn Fn(&mut pb::UpdateRoleRequest)| {
        let mut request = update_request.clone();
        f(&mut request);
        encoded(&request)
    };
    let bad_names = [
        ("empty", String::new()),
        ("uppercase", "Ops".into()),
        ("of 65 characters", text(65)),
        ("starting with `-`", "-ops".into()),
        ("with a zero-width space", ZERO_WIDTH.into()),
        ("with a bidi override", BIDI.into()),
        ("with a control character", CONTROL.into()),
    ];
    let mut cases = Vec::new();
    for (what, name) in bad_names {
        cases.extend([
            case(CREATE_ROLE, format!("name {what}"), create(&|r| r.name.clone_from(&name)), "name"),
            case(GET_ROLE, format!("name {what}"), encoded(&pb::GetRoleRequest { name: name.clone() }), "name"),
            case(UPDATE_ROLE, format!("name {what}"), update(&|r| r.name.clone_from(&name)), "name"),
            case(DELETE_ROLE, format!("name {what}"), encoded(&pb::DeleteRoleRequest { name }), "name"),
        ]);
    }
    cases.extend([
        case(CREATE_ROLE, "no permissions", create(&|r| r.permissions.clear()), "permissions"),
        case(CREATE_ROLE, "permission `*`", create(&|r| r.permissions = vec!["*".into()]), "permissions"),
        case(CREATE_ROLE, "permission with a space", create(&|r| r.permissions = vec!["deploy write".into()]), "permissions"),
        case(CREATE_ROLE, "permission of 257 bytes", create(&|r| r.permissions = vec![text(257)]), "permissions"),
        case(CREATE_ROLE, "65 permissions", create(&|r| r.permissions = many(65, |i| format!("p:{i}"))), "permissions"),
        case(CREATE_ROLE, "description of 1025 bytes", create(&|r| r.description = text(1025)), "description"),
        case(CREATE_ROLE, "description with a bidi override", create(&|r| r.description = BIDI.into()), "description"),
        case(CREATE_ROLE, "max_ttl zero", create(&|r| r.max_ttl = duration(0, 0)), "max_ttl"),
        case(CREATE_ROLE, "max_ttl negative", create(&|r| r.max_ttl = duration(-60, 0)), "max_ttl"),
        case(CREATE_ROLE, "max_ttl below a millisecond", create(&|r| r.max_ttl = duration(0, 1)), "max_ttl"),
        case(CREATE_ROLE, "max_ttl with nanos out of range", create(&|r| r.max_ttl = duration(60, 1_000_000_000)), "max_ttl"),
        case(CREATE_ROLE, "max_ttl over 100 years", create(&|r| r.max_ttl = duration(101 * YEAR_SECONDS, 0)), "max_ttl"),
        case(CREATE_ROLE, "max_ttl of i64::MAX seconds", create(&|r| r.max_ttl = duration(i64::MAX, 0)), "max_ttl"),
        case(CREATE_ROLE, "default rate of zero requests", create(&|r| r.default_rate_limit = limit(0, one_second(), 1)), "rate_limit"),
        case(CREATE_ROLE, "default rate period over 24h", create(&|r| r.default_rate_limit = limit(1, duration(86_401, 0), 1)), "rate_limit"),
        case(CREATE_ROLE, "name not UTF-8", with_bad_utf8(&pb::CreateRoleRequest::default(), 1), "CreateRoleRequest.name"),
        case(CREATE_ROLE, "permission not UTF-8", with_bad_utf8(&pb::CreateRoleRequest::default(), 3), "CreateRoleRequest.permissions"),
        case(UPDATE_ROLE, "added permission `*`", update(&|r| r.add_permissions = vec!["*".into()]), "permissions"),
        case(UPDATE_ROLE, "added permission malformed", update(&|r| r.add_permissions = vec!["deploy::x".into()]), "add_permissions"),
        case(UPDATE_ROLE, "65 added permissions", update(&|r| r.add_permissions = many(65, |i| format!("p:{i}"))), "add_permissions"),
        case(UPDATE_ROLE, "removed permission malformed", update(&|r| r.remove_permissions = vec!["DEPLOY".into()]), "remove_permissions"),
        case(UPDATE_ROLE, "description of 1025 bytes", update(&|r| r.description = Some(text(1025))), "description"),
        case(UPDATE_ROLE, "description with a control character", update(&|r| r.description = Some(CONTROL.into())), "description"),
        case(UPDATE_ROLE, "max_ttl and clear_max_ttl", update(&|r| { r.max_ttl = duration(60, 0); r.clear_max_ttl = true; }), "max_ttl"),
        case(UPDATE_ROLE, "max_ttl negative", update(&|r| r.max_ttl = duration(-1, 0)), "max_ttl"),
        case(UPDATE_ROLE, "max_ttl over 100 years", update(&|r| r.max_ttl = duration(200 * YEAR_SECONDS, 0)), "max_ttl"),
        case(UPDATE_ROLE, "default rate and clear", update(&|r| { r.default_rate_limit = limit(1, one_second(), 1); r.clear_default_rate_limit = true; }), "default_rate_limit"),
        case(UPDATE_ROLE, "default rate with zero burst", update(&|r| r.default_rate_limit = limit(1, one_second(), 0)), "rate_limit"),
        case(UPDATE_ROLE, "description not UTF-8", with_bad_utf8(&update_request, 4), "UpdateRoleRequest.description"),
        case(GET_ROLE, "name not UTF-8", with_bad_utf8(&pb::GetRoleRequest::default(), 1), "GetRoleRequest.name"),
        case(DELETE_ROLE, "name not UTF-8", with_bad_utf8(&pb::DeleteRoleRequest::default(), 1), "DeleteRoleRequest.name"),
    ]);
    cases
}

fn now_seconds() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after the epoch");
    i64::try_from(since_epoch.as_secs()).expect("before year 292 billion")
}

/// The 33 characters of a key's secret: what no message may contain.
fn secret_of(key: &str) -> &str {
    let body = key.split_once('_').expect("a key").1;
    &body[11..44]
}

async fn every_malformed_field_is_invalid_argument_naming_it(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create_role("hostile-target", &["deploy:read"], None)
        .await
        .unwrap();
    let (key_id, key) = app.mint_with_roles(&["hostile-target"]).await;
    let targets = Targets {
        key_id,
        key,
        role: "hostile-target".to_owned(),
    };
    let channel = app.channel().await;
    let cases = [
        validate_cases(&targets),
        mint_cases(),
        key_cases(&targets),
        list_cases(),
        bulk_cases(),
        role_cases(&targets),
        trust_cases(),
    ];

    let mut failures = Vec::new();
    for Case {
        method,
        what,
        body,
        field,
    } in cases.into_iter().flatten()
    {
        let status = call(&channel, &app.admin_key, method, body).await;
        let message = status.message();
        let label = format!("{method} with {what}: {:?} {message:?}", status.code());
        if status.code() != Code::InvalidArgument || !message.contains(field) {
            failures.push(format!("{label}; expected INVALID_ARGUMENT naming {field}"));
        }
        for secret in [secret_of(&app.admin_key), secret_of(&targets.key)] {
            assert!(!message.contains(secret), "{label} echoes a secret");
        }
        assert!(
            app.validate(&targets.key, &[]).await.valid,
            "the server stopped serving after {label}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Nothing a refused case pointed at changed.
    let target = app.get(&targets.key_id).await.unwrap();
    assert_eq!(target.revoked_at, None);
    assert_eq!(target.rotated_to, "");
    assert_eq!(target.rate_limit, None);
    let role = app
        .admin_client()
        .await
        .get_role(authed(
            &app.admin_key,
            pb::GetRoleRequest {
                name: targets.role.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(role.permissions, ["deploy:read"]);
    assert_eq!((role.description.as_str(), role.max_ttl), ("", None));
}

/// A trust policy's spec that the server accepts.
fn good_spec() -> pb::TrustPolicySpec {
    pb::TrustPolicySpec {
        issuer: "https://token.actions.githubusercontent.com".into(),
        audience: "keyward".into(),
        required_claims: [("repository".to_owned(), "acme/api".to_owned())].into(),
        ttl: duration(600, 0),
        ..Default::default()
    }
}

#[rustfmt::skip]
fn trust_cases() -> Vec<Case> {
    let create = |f: &dyn Fn(&mut pb::TrustPolicySpec)| {
        let mut spec = good_spec();
        f(&mut spec);
        encoded(&pb::CreateTrustPolicyRequest { name: "p".into(), spec: Some(spec) })
    };
    let named = |name: &str| encoded(&pb::CreateTrustPolicyRequest { name: name.into(), spec: Some(good_spec()) });
    let claim = |k: &str, v: &str| create(&|s| s.required_claims = [(k.to_owned(), v.to_owned())].into());
    let ttl = |d: Option<Duration>| create(&|s| s.ttl = d);
    vec![
        case(CREATE_POLICY, "name uppercase", named("Deploy"), "name"),
        case(CREATE_POLICY, "name of 65 bytes", named(&text(65)), "name"),
        case(CREATE_POLICY, "name with a bidi override", named(BIDI), "name"),
        case(CREATE_POLICY, "no spec", encoded(&pb::CreateTrustPolicyRequest { name: "p".into(), spec: None }), "spec"),
        case(CREATE_POLICY, "an http:// issuer", create(&|s| s.issuer = "http://127.0.0.1:1".into()), "issuer"),
        case(CREATE_POLICY, "an issuer with a bidi override", create(&|s| s.issuer = format!("https://{BIDI}.example")), "issuer"),
        case(CREATE_POLICY, "an issuer of 600 bytes", create(&|s| s.issuer = format!("https://{}", text(600))), "issuer"),
        case(CREATE_POLICY, "an issuer with a query", create(&|s| s.issuer = "https://x.example/?a=b".into()), "issuer"),
        case(CREATE_POLICY, "an empty audience", create(&|s| s.audience = String::new()), "audience"),
        case(CREATE_POLICY, "an audience with a control character", create(&|s| s.audience = CONTROL.into()), "audience"),
        case(CREATE_POLICY, "no required claim", create(&|s| s.required_claims.clear()), "required_claims"),
        case(CREATE_POLICY, "33 required claims", create(&|s| s.required_claims = (0..33).map(|i| (format!("c{i}"), "v".to_owned())).collect()), "required_claims"),
        case(CREATE_POLICY, "a claim glob in the middle", claim("repository", "acme/*/api"), "required_claims"),
        case(CREATE_POLICY, "a claim value with a bidi override", claim("repository", BIDI), "required_claims"),
        case(CREATE_POLICY, "a claim value with a NUL", claim("repository", NUL), "required_claims"),
        case(CREATE_POLICY, "a claim value of 257 bytes", claim("repository", &text(257)), "required_claims"),
        case(CREATE_POLICY, "an empty claim value", claim("repository", ""), "required_claims"),
        case(CREATE_POLICY, "a claim named exp", claim("exp", "1"), "required_claims"),
        case(CREATE_POLICY, "a claim name with a space", claim("a b", "1"), "required_claims"),
        case(CREATE_POLICY, "no ttl", ttl(None), "ttl"),
        case(CREATE_POLICY, "a zero ttl", ttl(duration(0, 0)), "ttl"),
        case(CREATE_POLICY, "a negative ttl", ttl(duration(-60, 0)), "ttl"),
        case(CREATE_POLICY, "a ttl over an hour", ttl(duration(3601, 0)), "ttl"),
        case(CREATE_POLICY, "a sub-millisecond ttl", ttl(duration(60, 1)), "ttl"),
        case(CREATE_POLICY, "ttl nanos of 1e9", ttl(duration(60, 1_000_000_000)), "ttl"),
        case(CREATE_POLICY, "65 roles", create(&|s| s.roles = many(65, |i| format!("r{i}"))), "roles"),
        case(CREATE_POLICY, "an unknown role", create(&|s| s.roles = vec!["nope".into()]), "roles"),
        case(CREATE_POLICY, "the global wildcard", create(&|s| s.permissions = vec!["*".into()]), "permissions"),
        case(CREATE_POLICY, "a malformed permission", create(&|s| s.permissions = vec!["Deploy".into()]), "permissions"),
        case(CREATE_POLICY, "a CIDR that is not one", create(&|s| s.allowed_cidrs = vec!["10.0.0.0/33".into()]), "allowed_cidrs"),
        case(CREATE_POLICY, "a label with a bad key", create(&|s| s.labels = [("a=b".to_owned(), "x".to_owned())].into()), "labels"),
        case(CREATE_POLICY, "a label the exchange sets", create(&|s| s.labels = [("oidc.subject".to_owned(), "x".to_owned())].into()), "labels"),
        case(CREATE_POLICY, "a description of 1025 bytes", create(&|s| s.description = text(1025)), "description"),
        case(CREATE_POLICY, "name not UTF-8", with_bad_utf8(&pb::CreateTrustPolicyRequest::default(), 1), "CreateTrustPolicyRequest.name"),
        case(GET_POLICY, "name with a control character", encoded(&pb::GetTrustPolicyRequest { name: CONTROL.into() }), "name"),
        case(UPDATE_POLICY, "name with a zero-width space", encoded(&pb::UpdateTrustPolicyRequest { name: ZERO_WIDTH.into(), spec: Some(good_spec()) }), "name"),
        case(UPDATE_POLICY, "a claim glob in the middle", encoded(&pb::UpdateTrustPolicyRequest { name: "p".into(), spec: Some(pb::TrustPolicySpec { required_claims: [("ref".to_owned(), "*main".to_owned())].into(), ..good_spec() }) }), "required_claims"),
        case(DELETE_POLICY, "an empty name", encoded(&pb::DeleteTrustPolicyRequest { name: String::new() }), "name"),
        case(EXCHANGE, "token not UTF-8", with_bad_utf8(&pb::ExchangeRequest::default(), 2), "ExchangeRequest.token"),
    ]
}

/// A hostile *presented key* is not a malformed request: it is a key that
/// is not valid, answered `valid: false`, `INVALID`, like any other.
async fn a_hostile_presented_key_is_just_invalid(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, key) = app.mint_with_roles(&[]).await;
    let hostile = [
        String::new(),
        "_".into(),
        "kw_".into(),
        format!("{key}\n"),
        format!("\u{202E}{key}"),
        format!("{}\u{200B}{}", &key[..10], &key[10..]),
        key.replace("kw_", "KW_"),
        format!("{key}{key}"),
        "kw_".to_owned() + &"\0".repeat(50),
        "k".repeat(100 * 1024),
        "ключ_".to_owned() + &"я".repeat(25),
    ];
    for presented in hostile {
        let response = app.validate(&presented, &[]).await;
        assert!(!response.valid, "{presented:?}");
        assert_eq!(denial(&response), Denial::Invalid, "{presented:?}");
        assert_eq!(response.key_id, "", "{presented:?}");
    }
    assert!(app.validate(&key, &[]).await.valid);
}

/// Odd values that are legal: answered, not refused.
#[rustfmt::skip]
async fn odd_but_legal_values_are_answered(backend: Backend) {
    let app = spawn_app(backend).await;
    let channel = app.channel().await;
    let list_roles = "/keyward.v1.AdminService/ListRoles";
    let accepted = [
        (list_roles, "an unknown field", raw_field(99, b"ignored")),
        (LIST_KEYS, "a cursor before the epoch", encoded(&pb::ListKeysRequest { page_token: "-5.0000000000A".into(), ..Default::default() })),
        (LIST_KEYS, "a unicode owner filter", encoded(&pb::ListKeysRequest { owner: "Équipe paiements – 日本".into(), ..Default::default() })),
        (AUDIT, "since after until", encoded(&pb::ListAuditRecordsRequest { since: timestamp(2_000_000_000, 0), until: timestamp(0, 0), ..Default::default() })),
        (AUDIT, "since in year 1", encoded(&pb::ListAuditRecordsRequest { since: timestamp(-62_135_596_800, 0), ..Default::default() })),
        (VALIDATE, "64 permissions of 256 bytes and a mapped address", encoded(&pb::ValidateRequest { key: String::new(), required_permissions: many(64, |_| text(256)), client_ip: "::ffff:10.0.0.1".into() })),
    ];
    for (method, what, body) in accepted {
        let status = call(&channel, &app.admin_key, method, body).await;
        assert_eq!(status.code(), Code::Ok, "{method} with {what}: {status:?}");
    }
}

on_both_stores!(
    every_malformed_field_is_invalid_argument_naming_it,
    a_hostile_presented_key_is_just_invalid,
    odd_but_legal_values_are_answered,
);
