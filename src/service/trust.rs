//! `keyward.v1.TrustService` (trust policies, for operators) and
//! `keyward.v1.ExchangeService` (what a CI job calls: exchange an identity
//! token, revoke its own key).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{
    self,
    trust::{policy_name, policy_spec, trust_policy},
};
use crate::{
    auth::{Caller, authenticate, authenticate_key},
    exchange::Exchanger,
    lifecycle::Lifecycle,
    metrics::Metrics,
    oidc::IdentityToken,
    pb,
    permission::{self, Permission},
    validate::Validator,
};

/// Trust policy RPCs; each needs `keyward:trust:read`/`write` or
/// `keyward:admin`.
pub struct TrustService {
    lifecycle: Arc<Lifecycle>,
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
    read: Permission,
    write: Permission,
    /// `--oidc-allow-http-issuers`: whether a policy may name an `http://` issuer.
    allow_http: bool,
}

impl TrustService {
    /// The trust policy API over `lifecycle`, authenticating callers with
    /// `validator`; `allow_http` lets policies name `http://` issuers.
    ///
    /// # Panics
    /// Never: the permissions it parses are built-in constants.
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        validator: Arc<Validator>,
        metrics: Arc<Metrics>,
        allow_http: bool,
    ) -> Self {
        let parse = |p: &str| p.parse().expect("built-in permission");
        Self {
            lifecycle,
            validator,
            metrics,
            read: parse(permission::TRUST_READ),
            write: parse(permission::TRUST_WRITE),
            allow_http,
        }
    }

    fn caller<T>(&self, request: &Request<T>, needed: &Permission) -> Result<Caller, Status> {
        Ok(authenticate(
            request,
            &self.validator,
            needed,
            &self.metrics,
        )?)
    }
}

#[tonic::async_trait]
impl pb::trust_service_server::TrustService for TrustService {
    async fn create_trust_policy(
        &self,
        request: Request<pb::CreateTrustPolicyRequest>,
    ) -> Result<Response<pb::TrustPolicy>, Status> {
        let caller = self.caller(&request, &self.write)?;
        let request = request.into_inner();
        let name = policy_name("name", &request.name)?;
        let spec = policy_spec(request.spec, self.allow_http)?;
        let policy = self.lifecycle.create_policy(&caller, name, spec).await?;
        Ok(Response::new(trust_policy(&policy)))
    }

    async fn get_trust_policy(
        &self,
        request: Request<pb::GetTrustPolicyRequest>,
    ) -> Result<Response<pb::TrustPolicy>, Status> {
        self.caller(&request, &self.read)?;
        let name = policy_name("name", &request.get_ref().name)?;
        Ok(Response::new(trust_policy(
            &self.lifecycle.policy(&name).await?,
        )))
    }

    async fn list_trust_policies(
        &self,
        request: Request<pb::ListTrustPoliciesRequest>,
    ) -> Result<Response<pb::ListTrustPoliciesResponse>, Status> {
        self.caller(&request, &self.read)?;
        let policies = self.lifecycle.list_policies().await?;
        Ok(Response::new(pb::ListTrustPoliciesResponse {
            policies: policies.iter().map(trust_policy).collect(),
        }))
    }

    async fn update_trust_policy(
        &self,
        request: Request<pb::UpdateTrustPolicyRequest>,
    ) -> Result<Response<pb::TrustPolicy>, Status> {
        let caller = self.caller(&request, &self.write)?;
        let request = request.into_inner();
        let name = policy_name("name", &request.name)?;
        let spec = policy_spec(request.spec, self.allow_http)?;
        let policy = self.lifecycle.update_policy(&caller, &name, spec).await?;
        Ok(Response::new(trust_policy(&policy)))
    }

    async fn delete_trust_policy(
        &self,
        request: Request<pb::DeleteTrustPolicyRequest>,
    ) -> Result<Response<pb::DeleteTrustPolicyResponse>, Status> {
        let caller = self.caller(&request, &self.write)?;
        let name = policy_name("name", &request.get_ref().name)?;
        self.lifecycle.delete_policy(&caller, &name).await?;
        Ok(Response::new(pb::DeleteTrustPolicyResponse {}))
    }
}

/// What a CI job calls: no admin key, just its identity token, then its
/// own key.
pub struct ExchangeService {
    exchanger: Arc<Exchanger>,
    lifecycle: Arc<Lifecycle>,
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
}

impl ExchangeService {
    /// Exchanges with `exchanger`; `RevokeSelf` authenticates with
    /// `validator` and revokes through `lifecycle`.
    pub fn new(
        exchanger: Arc<Exchanger>,
        lifecycle: Arc<Lifecycle>,
        validator: Arc<Validator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            exchanger,
            lifecycle,
            validator,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl pb::exchange_service_server::ExchangeService for ExchangeService {
    async fn exchange(
        &self,
        request: Request<pb::ExchangeRequest>,
    ) -> Result<Response<pb::ExchangeResponse>, Status> {
        // A replica too stale to know the roles may not mint on them.
        self.validator
            .ensure_fresh()
            .map_err(crate::error::ServiceError::from)?;
        let request = request.into_inner();
        let token = IdentityToken::new(request.token);
        let minted = self.exchanger.exchange(&request.policy, &token).await?;
        Ok(Response::new(pb::ExchangeResponse {
            key: Some(convert::key(&minted.key, self.lifecycle.now())),
            plaintext: minted.plaintext.expose().to_owned(),
        }))
    }

    async fn revoke_self(
        &self,
        request: Request<pb::RevokeSelfRequest>,
    ) -> Result<Response<pb::RevokeSelfResponse>, Status> {
        let caller = authenticate_key(&request, &self.validator, &self.metrics)?;
        let revocation = self.lifecycle.revoke_self(&caller).await?;
        Ok(Response::new(pb::RevokeSelfResponse {
            key: Some(convert::key(&revocation.key, self.lifecycle.now())),
        }))
    }
}
