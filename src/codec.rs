//! The protobuf codec of keyward's generated services and clients
//! (`build.rs` names it with `codec_path`): tonic-prost's, except for what a
//! request that does not decode is answered.
//!
//! tonic-prost answers every decode failure `INTERNAL`, before any keyward
//! code runs. For a request that is wrong: a string field that is not UTF-8,
//! a truncated message, a field sent with the wrong wire type. That is the
//! client's mistake, and product.md wants malformed requests to be
//! `INVALID_ARGUMENT` with a message naming the field: prost's error names the
//! message and field (`ValidateRequest.key: invalid string value: data is not
//! UTF-8 encoded`) and never holds the field's bytes, so it is passed on. A
//! *response* that does not decode (a client talking to a broken server)
//! stays `INTERNAL`.
//!
//! Decoding runs before authentication, so such a request is refused even
//! without a valid caller key: it has not been read, and nothing else is.
//!
//! The other difference is on the sending side: a message that carries a
//! plaintext key or identity token (a mint, rotate or exchange response, a
//! Validate or Exchange request) has that field wiped as soon as it is
//! encoded ([`Sender::wipe_secrets`]), on the server and in every client
//! built on these stubs, `keywardctl` included.
//! The encoded bytes live on in tonic's and hyper's buffers, which keyward
//! does not own; SECURITY.md says so.

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, DecodeBuf, EncodeBuf},
};
use zeroize::Zeroize;

use crate::pb;

pub mod write;

/// Which side of a call sends a message type, so that a decode failure is
/// blamed on the right one, and what of it must not outlive its sending.
pub trait Sender {
    /// True for requests: the client sent them.
    const CLIENT: bool;

    /// Overwrites the plaintext keys this message holds, once it is encoded:
    /// a copy the code no longer needs is a copy a core file, a swap page or
    /// a later bug could reveal. Most messages hold none.
    fn wipe_secrets(&mut self) {}
}

/// Every request and response of `keyward.v1`. A new RPC that is not listed
/// here does not compile, rather than silently getting either status.
macro_rules! sent_by {
    ($client:literal: $($message:ident),+ $(,)?) => {
        $(impl Sender for pb::$message {
            const CLIENT: bool = $client;
        })+
    };
}

sent_by!(true:
    MintKeyRequest, GetKeyRequest, ListKeysRequest, RotateKeyRequest,
    RevokeKeyRequest, UpdateKeyRequest, RevokeKeysRequest, CreateRoleRequest, GetRoleRequest,
    ListRolesRequest, UpdateRoleRequest, DeleteRoleRequest, ListAuditRecordsRequest,
);
sent_by!(false:
    ValidateResponse, Key, ListKeysResponse, RevokeKeyResponse, RevokeKeysResponse, Role,
    ListRolesResponse, DeleteRoleResponse, ListAuditRecordsResponse,
);
// Trust policies and the OIDC exchange (`trust_service.proto`).
sent_by!(true:
    CreateTrustPolicyRequest, GetTrustPolicyRequest, ListTrustPoliciesRequest,
    UpdateTrustPolicyRequest, DeleteTrustPolicyRequest, RevokeSelfRequest,
);
sent_by!(false:
    TrustPolicy, ListTrustPoliciesResponse, DeleteTrustPolicyResponse, RevokeSelfResponse,
);

impl Sender for pb::ValidateRequest {
    const CLIENT: bool = true;

    fn wipe_secrets(&mut self) {
        self.key.zeroize();
    }
}

impl Sender for pb::MintKeyResponse {
    const CLIENT: bool = false;

    fn wipe_secrets(&mut self) {
        self.plaintext.zeroize();
    }
}

impl Sender for pb::RotateKeyResponse {
    const CLIENT: bool = false;

    fn wipe_secrets(&mut self) {
        self.plaintext.zeroize();
    }
}

impl Sender for pb::ExchangeResponse {
    const CLIENT: bool = false;

    fn wipe_secrets(&mut self) {
        self.plaintext.zeroize();
    }
}

/// The identity token is a bearer credential too, for as long as it lives.
impl Sender for pb::ExchangeRequest {
    const CLIENT: bool = true;

    fn wipe_secrets(&mut self) {
        self.token.zeroize();
    }
}

/// Envoy's ext_authz `Check` ([`crate::gateway::ext_authz::wire`]): its
/// headers may hold a client's key, wiped when the request is dropped (see
/// `wire::Entry`); the answer holds none.
impl Sender for crate::gateway::ext_authz::wire::CheckRequest {
    const CLIENT: bool = true;
}

impl Sender for crate::gateway::ext_authz::wire::CheckResponse {
    const CLIENT: bool = false;
}

/// Validate's answer as the server writes it (`service::keys::wire`).
impl Sender for crate::service::keys::wire::ValidateAnswer {
    const CLIENT: bool = false;
}

/// The status for a message of type `U` that did not decode.
#[must_use]
pub fn decode_error<U: Sender>(error: &prost::DecodeError) -> Status {
    if U::CLIENT {
        let text = error.to_string();
        // "failed to decode Protobuf message: " says nothing the code does not.
        let detail = text
            .split_once(": ")
            .map_or(text.as_str(), |(_, rest)| rest);
        Status::invalid_argument(format!("malformed request: {detail}"))
    } else {
        Status::internal(error.to_string())
    }
}

/// `tonic::codec::Codec` for prost messages: encodes `T`, decodes `U`.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Sender + Send + 'static,
    U: Message + Default + Sender + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = Encoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        Encoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(PhantomData)
    }
}

/// Encodes `T` with prost, then wipes the plaintext keys it held.
#[derive(Debug)]
pub struct Encoder<T>(PhantomData<T>);

impl<T: Message + Sender> tonic::codec::Encoder for Encoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // `encode_raw`, not `encode`: `encode` measures the whole message
        // first only to check that the buffer has room, and tonic's buffer
        // grows as it is written (its room is `usize::MAX` less its length),
        // so the check cannot fail. Every answer would be measured twice.
        item.encode_raw(buf);
        item.wipe_secrets();
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U` with prost; see [`decode_error`] for failures.
#[derive(Debug)]
pub struct Decoder<U>(PhantomData<U>);

impl<U: Message + Default + Sender> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|error| decode_error::<U>(&error))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_holding_a_plaintext_key_are_wiped_once_encoded() {
        let mut response = pb::MintKeyResponse {
            plaintext: "kw_secret".into(),
            key: None,
        };
        response.wipe_secrets();
        assert!(response.plaintext.is_empty());
        let mut rotated = pb::RotateKeyResponse {
            plaintext: "kw_secret".into(),
            ..Default::default()
        };
        rotated.wipe_secrets();
        assert!(rotated.plaintext.is_empty());
        let mut request = pb::ValidateRequest {
            key: "kw_secret".into(),
            ..Default::default()
        };
        request.wipe_secrets();
        assert!(request.key.is_empty());
    }

    #[test]
    fn a_request_that_does_not_decode_is_invalid_argument_naming_the_field() {
        // Field 1 (`key`), length 2, not UTF-8.
        let error = pb::ValidateRequest::decode(&b"\x0a\x02\xc0\xaf"[..]).unwrap_err();
        let status = decode_error::<pb::ValidateRequest>(&error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "malformed request: ValidateRequest.key: invalid string value: data is not UTF-8 encoded"
        );

        let error = pb::Key::decode(&b"\x0a\x02\xc0\xaf"[..]).unwrap_err();
        assert_eq!(
            decode_error::<pb::Key>(&error).code(),
            tonic::Code::Internal,
            "a response that does not decode is the server's fault"
        );
    }
}
