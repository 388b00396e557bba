//! `keyward.v1.AdminService`: keys, roles and the audit log, for operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use crate::{
    auth::{Caller, authenticate},
    error::ServiceError,
    lifecycle::{Lifecycle, MintRequest, NewRole},
    metrics::Metrics,
    model::{
        RoleUpdate,
        query::{AuditQuery, KeyQuery},
    },
    pb,
    permission::{self, Permission},
    validate::Validator,
};

/// The fine permissions admin RPCs need, parsed once.
struct Needs {
    keys_read: Permission,
    keys_write: Permission,
    roles_read: Permission,
    roles_write: Permission,
    audit_read: Permission,
}

/// Admin RPCs; each needs its fine permission or `keyward:admin`.
pub struct AdminService {
    lifecycle: Arc<Lifecycle>,
    validator: Arc<Validator>,
    needs: Needs,
    metrics: Arc<Metrics>,
}

impl AdminService {
    /// The admin API over `lifecycle`, authenticating callers with
    /// `validator` and counting their refusals into `metrics`.
    ///
    /// # Panics
    /// Never: the permissions it parses are built-in constants.
    pub fn new(
        lifecycle: Arc<Lifecycle>,
        validator: Arc<Validator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let parse = |p: &str| p.parse().expect("built-in permission");
        Self {
            lifecycle,
            validator,
            needs: Needs {
                keys_read: parse(permission::KEYS_READ),
                keys_write: parse(permission::KEYS_WRITE),
                roles_read: parse(permission::ROLES_READ),
                roles_write: parse(permission::ROLES_WRITE),
                audit_read: parse(permission::AUDIT_READ),
            },
            metrics,
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
impl pb::admin_service_server::AdminService for AdminService {
    async fn mint_key(
        &self,
        request: Request<pb::MintKeyRequest>,
    ) -> Result<Response<pb::MintKeyResponse>, Status> {
        let caller = self.caller(&request, &self.needs.keys_write)?;
        let mint = MintRequest::try_from(request.into_inner())?;
        let minted = self.lifecycle.mint(&caller, mint).await?;
        Ok(Response::new(pb::MintKeyResponse {
            key: Some(convert::key(&minted.key, self.lifecycle.now())),
            plaintext: minted.plaintext.expose().to_owned(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        self.caller(&request, &self.needs.keys_read)?;
        let id = convert::key_id("id", &request.get_ref().id)?;
        let record = self.lifecycle.get(id).await?;
        Ok(Response::new(convert::key(&record, self.lifecycle.now())))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.caller(&request, &self.needs.keys_read)?;
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
        let caller = self.caller(&request, &self.needs.keys_write)?;
        let request = request.into_inner();
        let id = convert::key_id("id", &request.id)?;
        let grace = convert::grace(request.grace.as_ref())?;
        let rotated = self.lifecycle.rotate(&caller, id, grace).await?;
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
        let caller = self.caller(&request, &self.needs.keys_write)?;
        let request = request.into_inner();
        let id = convert::key_id("id", &request.id)?;
        let reason = convert::reason(request.reason)?;
        let revocation = self.lifecycle.revoke(&caller, id, &reason).await?;
        Ok(Response::new(pb::RevokeKeyResponse {
            key: Some(convert::key(&revocation.key, self.lifecycle.now())),
            already_revoked: revocation.already_revoked,
        }))
    }

    async fn update_key(
        &self,
        request: Request<pb::UpdateKeyRequest>,
    ) -> Result<Response<pb::Key>, Status> {
        let caller = self.caller(&request, &self.needs.keys_write)?;
        let request = request.into_inner();
        let id = convert::key_id("id", &request.id)?;
        let rate_limit = match (request.rate_limit, request.clear_rate_limit) {
            (Some(_), true) => {
                return Err(ServiceError::invalid(
                    "rate_limit",
                    "give rate_limit or clear_rate_limit, not both",
                )
                .into());
            }
            (None, false) => {
                return Err(ServiceError::invalid("rate_limit", "nothing to change").into());
            }
            (Some(limit), false) => Some(convert::rate_limit(&limit)?),
            (None, true) => None,
        };
        let key = self
            .lifecycle
            .update_rate_limit(&caller, id, rate_limit)
            .await?;
        Ok(Response::new(convert::key(&key, self.lifecycle.now())))
    }

    async fn revoke_keys(
        &self,
        request: Request<pb::RevokeKeysRequest>,
    ) -> Result<Response<pb::RevokeKeysResponse>, Status> {
        let caller = self.caller(&request, &self.needs.keys_write)?;
        let request = request.into_inner();
        let labels = convert::labels(request.labels)?;
        let owner = convert::owner_filter(request.owner)?;
        let reason = convert::reason(request.reason)?;
        let ids = self
            .lifecycle
            .revoke_matching(&caller, &labels, owner.as_deref(), &reason, request.dry_run)
            .await?;
        Ok(Response::new(pb::RevokeKeysResponse {
            key_ids: ids.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn create_role(
        &self,
        request: Request<pb::CreateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request, &self.needs.roles_write)?;
        let new = NewRole::try_from(request.into_inner())?;
        let role = self.lifecycle.create_role(&caller, new).await?;
        Ok(Response::new(convert::role(&role)))
    }

    async fn get_role(
        &self,
        request: Request<pb::GetRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        self.caller(&request, &self.needs.roles_read)?;
        let name = convert::role_name(&request.get_ref().name)?;
        Ok(Response::new(convert::role(&self.lifecycle.role(&name)?)))
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        self.caller(&request, &self.needs.roles_read)?;
        let roles = self.lifecycle.list_roles().await?;
        Ok(Response::new(pb::ListRolesResponse {
            roles: roles.iter().map(convert::role).collect(),
        }))
    }

    async fn update_role(
        &self,
        request: Request<pb::UpdateRoleRequest>,
    ) -> Result<Response<pb::Role>, Status> {
        let caller = self.caller(&request, &self.needs.roles_write)?;
        let request = request.into_inner();
        let name = convert::role_name(&request.name)?;
        let update = RoleUpdate::try_from(request)?;
        let role = self.lifecycle.update_role(&caller, &name, update).await?;
        Ok(Response::new(convert::role(&role)))
    }

    async fn delete_role(
        &self,
        request: Request<pb::DeleteRoleRequest>,
    ) -> Result<Response<pb::DeleteRoleResponse>, Status> {
        let caller = self.caller(&request, &self.needs.roles_write)?;
        let name = convert::role_name(&request.get_ref().name)?;
        self.lifecycle.delete_role(&caller, &name).await?;
        Ok(Response::new(pb::DeleteRoleResponse {}))
    }

    async fn list_audit_records(
        &self,
        request: Request<pb::ListAuditRecordsRequest>,
    ) -> Result<Response<pb::ListAuditRecordsResponse>, Status> {
        self.caller(&request, &self.needs.audit_read)?;
        let query = AuditQuery::try_from(request.into_inner())?;
        let page = self.lifecycle.audit(&query).await?;
        Ok(Response::new(pb::ListAuditRecordsResponse {
            records: page.records.iter().map(convert::audit_record).collect(),
            next_page_token: page
                .next_before_seq
                .map(|seq| seq.to_string())
                .unwrap_or_default(),
        }))
    }
}
