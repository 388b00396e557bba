//! `keyward.v1.AdminService`: the key lifecycle for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    auth::authenticate,
    lifecycle::{Lifecycle, MintRequest},
    model::Actor,
    pb,
    permission::{self, Permission},
    store::KeyQuery,
    validate::Validator,
};

/// Admin RPCs; each needs `keyward:admin`.
pub struct AdminService {
    lifecycle: Arc<Lifecycle>,
    validator: Arc<Validator>,
    admin_permission: Permission,
}

impl AdminService {
    /// The admin API over `lifecycle`, authenticating callers with `validator`.
    pub fn new(lifecycle: Arc<Lifecycle>, validator: Arc<Validator>) -> Self {
        Self {
            lifecycle,
            validator,
            admin_permission: permission::ADMIN.parse().expect("built-in permission"),
        }
    }

    fn caller<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        Ok(Actor::Key(authenticate(
            request.metadata(),
            &self.validator,
            &self.admin_permission,
        )?))
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for AdminService {
    async fn mint_key(
        &self,
        request: Request<pb::MintKeyRequest>,
    ) -> Result<Response<pb::MintKeyResponse>, Status> {
        let actor = self.caller(&request)?;
        let mint = MintRequest::try_from(request.into_inner())?;
        let minted = self.lifecycle.mint(actor, mint).await?;
        Ok(Response::new(pb::MintKeyResponse {
            key: Some(convert::key(&minted.key, self.lifecycle.now())),
            plaintext: minted.plaintext.expose().to_owned(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        self.caller(&request)?;
        let id = convert::key_id("id", &request.get_ref().id)?;
        let record = self.lifecycle.get(id).await?;
        Ok(Response::new(convert::key(&record, self.lifecycle.now())))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.caller(&request)?;
        let query = KeyQuery::try_from(request.into_inner())?;
        let page = self.lifecycle.list(&query).await?;
        let now = self.lifecycle.now();
        Ok(Response::new(pb::ListKeysResponse {
            keys: page
                .keys
                .iter()
                .map(|record| convert::key(record, now))
                .collect(),
            next_page_token: page.next.map(convert::page_token).unwrap_or_default(),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let actor = self.caller(&request)?;
        let request = request.into_inner();
        let id = convert::key_id("id", &request.id)?;
        let grace = convert::grace(request.grace.as_ref())?;
        let rotated = self.lifecycle.rotate(actor, id, grace).await?;
        let now = self.lifecycle.now();
        Ok(Response::new(pb::RotateKeyResponse {
            key: Some(convert::key(&rotated.rotation.successor, now)),
            plaintext: rotated.plaintext.expose().to_owned(),
            previous: Some(convert::key(&rotated.rotation.previous, now)),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::RevokeKeyResponse>, Status> {
        let actor = self.caller(&request)?;
        let request = request.into_inner();
        let id = convert::key_id("id", &request.id)?;
        let reason = convert::reason(request.reason)?;
        let revocation = self.lifecycle.revoke(actor, id, &reason).await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            key: Some(convert::key(&revocation.key, self.lifecycle.now())),
            already_revoked: revocation.already_revoked,
        }))
    }
}
