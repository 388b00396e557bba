//! Counting admin RPCs (`keyward_admin_requests_total{rpc, code}`) around
//! the generated `AdminServiceServer` and `TrustServiceServer`, so every
//! answer is counted: the
//! handlers' own, and those tonic gives before a handler runs (a message too
//! large, an unknown method). Wrapping that one service keeps Validate's path
//! free of it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::{Code, server::NamedService};

use super::Metrics;

/// The methods of `keyward.v1.AdminService` and `keyward.v1.TrustService`:
/// the only values the `rpc` label takes besides `unknown` (a method this
/// build does not have, answered `UNIMPLEMENTED`), so a client cannot make
/// up series.
pub const ADMIN_RPCS: [&str; 18] = [
    "MintKey",
    "GetKey",
    "ListKeys",
    "RotateKey",
    "RevokeKey",
    "UpdateKey",
    "RevokeKeys",
    "CreateRole",
    "GetRole",
    "ListRoles",
    "UpdateRole",
    "DeleteRole",
    "ListAuditRecords",
    "CreateTrustPolicy",
    "GetTrustPolicy",
    "ListTrustPolicies",
    "UpdateTrustPolicy",
    "DeleteTrustPolicy",
];

/// The `rpc` label of a request path `/keyward.v1.AdminService/<Method>`.
fn rpc_label(path: &str, service: &str) -> &'static str {
    let method = path
        .strip_prefix('/')
        .and_then(|path| path.strip_prefix(service))
        .and_then(|path| path.strip_prefix('/'));
    method
        .and_then(|method| ADMIN_RPCS.into_iter().find(|known| *known == method))
        .unwrap_or("unknown")
}

/// The gRPC status of an answer. A unary error is sent "trailers-only", with
/// `grpc-status` in the response headers, as tonic does for every error a
/// handler or the codec returns; an answer without it carries a message, and
/// its status (`OK`) in the trailers.
fn status_of(headers: &http::HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .map_or(Code::Ok, |status| Code::from_bytes(status.as_bytes()))
}

/// `inner` (an `AdminServiceServer`), counting each request's answer.
#[derive(Debug, Clone)]
pub struct CountAdminRpcs<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> CountAdminRpcs<S> {
    /// Wraps `inner`, counting into `metrics`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }
}

impl<S: NamedService> NamedService for CountAdminRpcs<S> {
    const NAME: &'static str = S::NAME;
}

/// A request not answered yet; dropped unanswered (the client went away, or
/// the request timed out) it counts as `CANCELLED`, which is what tonic's
/// timeout answers.
struct Pending {
    metrics: Arc<Metrics>,
    rpc: &'static str,
    answered: bool,
}

impl Pending {
    fn answered(mut self, code: Code) {
        self.answered = true;
        self.metrics.admin_request(self.rpc, code);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.metrics.admin_request(self.rpc, Code::Cancelled);
        }
    }
}

impl<S, RequestBody, ResponseBody> tower_service::Service<http::Request<RequestBody>>
    for CountAdminRpcs<S>
where
    S: tower_service::Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + NamedService,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let pending = Pending {
            metrics: self.metrics.clone(),
            rpc: rpc_label(request.uri().path(), S::NAME),
            answered: false,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            pending.answered(match &answer {
                Ok(response) => status_of(response.headers()),
                Err(_) => Code::Unknown,
            });
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::pb;

    #[test]
    fn the_rpc_label_is_one_of_the_admin_methods() {
        let service = "keyward.v1.AdminService";
        assert_eq!(
            rpc_label("/keyward.v1.AdminService/MintKey", service),
            "MintKey"
        );
        for odd in [
            "/keyward.v1.AdminService/MintKeyX",
            "/keyward.v1.AdminService/",
            "/keyward.v1.KeyService/Validate",
            "/keyward.v1.AdminService/kw_8ErJx4bNWs7AbQIJgyowE2LAV1h09GVh0Fo8ZBxKmhvh0S6kPJ",
            "",
        ] {
            assert_eq!(rpc_label(odd, service), "unknown", "{odd}");
        }
    }

    #[test]
    fn the_method_list_matches_the_proto() {
        let set = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| &file.service)
            .filter(|service| ["AdminService", "TrustService"].contains(&service.name()))
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        let mut listed: Vec<String> = ADMIN_RPCS.iter().map(|m| (*m).to_owned()).collect();
        methods.sort();
        listed.sort();
        assert_eq!(methods, listed);
    }

    #[test]
    fn a_status_in_the_headers_is_the_answer_s_code() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_of(&headers), Code::Ok);
        headers.insert("grpc-status", "7".parse().unwrap());
        assert_eq!(status_of(&headers), Code::PermissionDenied);
    }
}
