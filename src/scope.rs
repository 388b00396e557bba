//! Administration scope: which keys a narrow admin key may mint and manage.
//!
//! Permissions say what a key may *do*; the no-escalation rule
//! ([`crate::auth::Caller::may_grant`]) stops an admin key from handing out
//! more than it holds. Neither says *whose* keys it may touch: a CI minter
//! holding `keyward:keys:write` and `deploy:staging:*` could otherwise rotate
//! the payments team's staging key and walk away with its successor, or mint
//! a key claiming to be the payments team's, which backends may authorize
//! on (Validate reports owner and labels).
//!
//! So every admin key short of `keyward:admin` has a scope, taken from the
//! key itself:
//!
//! - its **owner**: the keys it mints get that owner (filled in when the
//!   request leaves it empty, refused when it names another), and it manages
//!   keys with that owner;
//! - its **tenant**, the value of its [`SCOPE_LABEL`] label if it has one: the
//!   keys it mints carry the same tenant (filled in, or refused when they
//!   name another), and it manages only keys of that tenant; an admin key
//!   with no tenant may not mint a key that claims one;
//! - keys it **minted itself** are always in its scope (how an admin key
//!   without an owner manages anything).
//!
//! A key outside the scope cannot be rotated, revoked or re-limited by it,
//! one by one or in bulk. The root admin (`keyward:admin`) is unrestricted.
//! Reading (`GetKey`, `ListKeys`) and roles are not scoped: roles are shared
//! by every scope, so `keyward:roles:write` belongs to admins trusted with
//! all of them.

use crate::{
    error::ServiceError,
    key::KeyId,
    model::{IndexedKey, KeyRecord, Labels},
};

/// The label that names a key's tenant, and so an admin key's scope.
pub const SCOPE_LABEL: &str = "tenant";

/// Which keys an admin key may mint and manage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Holds `keyward:admin`: every key.
    Unrestricted,
    /// Any other key: see the module docs.
    Narrow {
        /// Its own id: keys it minted are in scope.
        key_id: KeyId,
        /// Its owner, possibly empty.
        owner: String,
        /// Its [`SCOPE_LABEL`] label, if it has one.
        tenant: Option<String>,
    },
}

impl Scope {
    /// The scope of the authenticated key `key`.
    #[must_use]
    pub fn of(key: &IndexedKey, is_root: bool) -> Self {
        if is_root {
            return Self::Unrestricted;
        }
        Self::Narrow {
            key_id: key.id,
            owner: key.profile.owner.to_string(),
            tenant: key.profile.labels.get(SCOPE_LABEL).map(str::to_owned),
        }
    }

    /// Whether the caller may manage (rotate, revoke, re-limit) `key`.
    #[must_use]
    pub fn contains(&self, key: &KeyRecord) -> bool {
        match self {
            Self::Unrestricted => true,
            Self::Narrow {
                key_id,
                owner,
                tenant,
            } => {
                key.created_by == Some(*key_id)
                    || (!owner.is_empty()
                        && key.settings.owner == *owner
                        && tenant.as_deref().is_none_or(|tenant| {
                            key.settings.labels.get(SCOPE_LABEL) == Some(tenant)
                        }))
            }
        }
    }

    /// The owner and labels of a key this caller mints: as asked, with the
    /// caller's owner and tenant filled in where the request leaves them out.
    ///
    /// # Errors
    /// `PermissionDenied` when the request names another owner or tenant, or
    /// a tenant the caller has none of; `InvalidArgument` when adding the
    /// tenant makes too many labels.
    pub fn admit_mint(
        &self,
        owner: String,
        labels: Labels,
    ) -> Result<(String, Labels), ServiceError> {
        let Self::Narrow {
            owner: own,
            tenant: own_tenant,
            ..
        } = self
        else {
            return Ok((owner, labels));
        };
        let owner = match owner {
            owner if owner.is_empty() => own.clone(),
            owner if owner == *own => owner,
            _ if own.is_empty() => {
                return Err(ServiceError::PermissionDenied(
                    "the caller's key has no owner, so the keys it mints have none; \
                     only a keyward:admin key may set another owner"
                        .to_owned(),
                ));
            }
            _ => {
                return Err(ServiceError::PermissionDenied(format!(
                    "the caller's key may mint keys only for its own owner `{own}`"
                )));
            }
        };
        let labels = match (labels.get(SCOPE_LABEL), own_tenant) {
            (None, None) => labels,
            (Some(asked), Some(own)) if asked == own => labels,
            (None, Some(own)) => labels.with(SCOPE_LABEL, own).map_err(|error| {
                ServiceError::invalid("labels", format!("{error} (with the caller's tenant)"))
            })?,
            (Some(_), None) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "the caller's key has no `{SCOPE_LABEL}` label, so it may not mint a key \
                     that claims a tenant"
                )));
            }
            (Some(_), Some(own)) => {
                return Err(ServiceError::PermissionDenied(format!(
                    "the caller's key may mint keys only for its own tenant `{own}`"
                )));
            }
        };
        Ok((owner, labels))
    }

    /// Refuses to manage `key` when it is out of scope.
    ///
    /// # Errors
    /// `PermissionDenied` naming the key and the caller's scope.
    pub fn check_contains(&self, key: &KeyRecord) -> Result<(), ServiceError> {
        match self {
            _ if self.contains(key) => Ok(()),
            Self::Unrestricted => unreachable!("an unrestricted scope contains every key"),
            Self::Narrow { owner, tenant, .. } => {
                let scope = match (owner.as_str(), tenant) {
                    ("", _) => "keys it minted".to_owned(),
                    (owner, None) => format!("keys of owner `{owner}` and keys it minted"),
                    (owner, Some(tenant)) => format!(
                        "keys of owner `{owner}` and {SCOPE_LABEL} `{tenant}`, and keys it minted"
                    ),
                };
                Err(ServiceError::PermissionDenied(format!(
                    "key {} is outside the caller's scope ({scope}); narrow a bulk revocation \
                     with --owner",
                    key.id
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{clock::Timestamp, model::KeySettings};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap()
    }

    fn narrow(owner: &str, tenant: Option<&str>) -> Scope {
        Scope::Narrow {
            key_id: KeyId::from_u64(1),
            owner: owner.to_owned(),
            tenant: tenant.map(str::to_owned),
        }
    }

    fn key(owner: &str, tags: &[(&str, &str)], created_by: u64) -> KeyRecord {
        KeyRecord::new(
            KeyId::from_u64(99),
            KeySettings {
                owner: owner.to_owned(),
                labels: labels(tags),
                ..KeySettings::default()
            },
            Timestamp::from_millis(0),
            Some(KeyId::from_u64(created_by)),
        )
    }

    #[test]
    fn a_narrow_scope_holds_its_owner_its_tenant_and_what_it_minted() {
        let ci = narrow("ci", None);
        assert!(ci.contains(&key("ci", &[], 7)));
        assert!(ci.contains(&key("ci", &[("tenant", "acme")], 7)));
        assert!(!ci.contains(&key("payments", &[], 7)));
        assert!(ci.contains(&key("payments", &[], 1)), "minted by it");

        let acme = narrow("ci", Some("acme"));
        assert!(acme.contains(&key("ci", &[("tenant", "acme")], 7)));
        assert!(!acme.contains(&key("ci", &[], 7)));
        assert!(!acme.contains(&key("ci", &[("tenant", "globex")], 7)));

        // No owner: only what it minted, never every ownerless key.
        let ownerless = narrow("", None);
        assert!(!ownerless.contains(&key("", &[], 7)));
        assert!(ownerless.contains(&key("", &[], 1)));

        assert!(Scope::Unrestricted.contains(&key("anyone", &[("tenant", "x")], 7)));
    }

    #[test]
    fn mints_get_the_callers_owner_and_tenant_and_no_other() {
        let acme = narrow("ci", Some("acme"));
        let (owner, minted) = acme.admit_mint(String::new(), labels(&[])).unwrap();
        assert_eq!(
            (owner.as_str(), minted.get(SCOPE_LABEL)),
            ("ci", Some("acme"))
        );
        assert!(
            acme.admit_mint("ci".into(), labels(&[("tenant", "acme")]))
                .is_ok()
        );
        for (owner, tags) in [("payments", vec![]), ("ci", vec![("tenant", "globex")])] {
            let refused = acme.admit_mint(owner.into(), labels(&tags)).unwrap_err();
            assert!(
                matches!(refused, ServiceError::PermissionDenied(_)),
                "{refused}"
            );
        }
        let untenanted = narrow("ci", None);
        assert!(
            untenanted
                .admit_mint(String::new(), labels(&[("tenant", "acme")]))
                .is_err()
        );
        let ownerless = narrow("", None);
        assert_eq!(
            ownerless.admit_mint(String::new(), labels(&[])).unwrap().0,
            ""
        );
        assert!(ownerless.admit_mint("ci".into(), labels(&[])).is_err());
        // Root mints anything.
        let (owner, tags) = Scope::Unrestricted
            .admit_mint("payments".into(), labels(&[("tenant", "acme")]))
            .unwrap();
        assert_eq!(
            (owner.as_str(), tags.get(SCOPE_LABEL)),
            ("payments", Some("acme"))
        );
    }
}
