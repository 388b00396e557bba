//! Permissions and role names, parsed once so the rest of the code only ever
//! sees well-formed values.
//!
//! Grammar: `segment(:segment)*`, each segment `[a-z0-9_.-]+`; a permission
//! held by a role may end in `*` (`deploy:*`), which grants everything under
//! that prefix (`deploy:write`, `deploy:prod:write`) but not `deploy` itself.
//! `*` alone grants everything; only built-in roles may hold it.

use std::{fmt, str::FromStr, sync::Arc};

/// Longest permission accepted, in bytes.
pub const MAX_PERMISSION_BYTES: usize = 256;
/// Longest role name accepted, in bytes.
pub const MAX_ROLE_NAME_BYTES: usize = 64;

/// The permission Validate callers need.
pub const VALIDATE: &str = "keyward:validate";
/// Full administration: every admin RPC, and the right to grant any
/// permission (the root of trust; the built-in `admin` role has it through
/// `keyward:*`).
pub const ADMIN: &str = "keyward:admin";
/// `GetKey`, `ListKeys`.
pub const KEYS_READ: &str = "keyward:keys:read";
/// `MintKey`, `RotateKey`, `RevokeKey`, `RevokeKeys` (only keys within the caller's own permissions).
pub const KEYS_WRITE: &str = "keyward:keys:write";
/// `GetRole`, `ListRoles`.
pub const ROLES_READ: &str = "keyward:roles:read";
/// `CreateRole`, `UpdateRole`, `DeleteRole` (only permissions the caller holds).
pub const ROLES_WRITE: &str = "keyward:roles:write";
/// `ListAuditRecords`.
pub const AUDIT_READ: &str = "keyward:audit:read";
/// `GetTrustPolicy`, `ListTrustPolicies`.
pub const TRUST_READ: &str = "keyward:trust:read";
/// `CreateTrustPolicy`, `UpdateTrustPolicy`, `DeleteTrustPolicy` (only
/// policies granting what the caller holds).
pub const TRUST_WRITE: &str = "keyward:trust:write";

/// Why a string is not a permission. The message explains the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPermission {
    /// An empty string.
    #[error("permission is empty")]
    Empty,
    /// Longer than the stored column allows.
    #[error("permission is longer than {MAX_PERMISSION_BYTES} bytes")]
    TooLong,
    #[error(
        "permission must be segments of [a-z0-9_.-] joined by ':', optionally ending in ':*' (e.g. deploy:write, deploy:*)"
    )]
    /// Not segments joined by `:`, or a `*` other than a whole last segment.
    Malformed,
}

/// A parsed permission, possibly ending in a wildcard.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission(Arc<str>);

impl Permission {
    /// The permission as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`.
    ///
    /// A wildcard grants by prefix, which also makes permission sets
    /// comparable: `deploy:*` grants `deploy:prod:*`.
    #[must_use]
    pub fn grants(&self, required: &Permission) -> bool {
        self.grants_text(&required.0)
    }

    /// [`Permission::grants`] for a permission's text, checked with
    /// [`Permission::check`] but not copied into a `Permission`.
    #[must_use]
    pub fn grants_text(&self, required: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(scope) => required.len() > scope.len() && required.starts_with(scope),
            None => *self.0 == *required,
        }
    }

    /// Checks that `text` is a permission without making one: for the
    /// permissions a Validate request requires, compared and let go.
    ///
    /// # Errors
    /// As parsing a [`Permission`].
    pub fn check(text: &str) -> Result<(), InvalidPermission> {
        if text.is_empty() {
            return Err(InvalidPermission::Empty);
        }
        if text.len() > MAX_PERMISSION_BYTES {
            return Err(InvalidPermission::TooLong);
        }
        let concrete = match text.strip_suffix('*') {
            Some("") => return Ok(()),
            Some(scope) => scope
                .strip_suffix(':')
                .ok_or(InvalidPermission::Malformed)?,
            None => text,
        };
        // Bytes, not chars: every Validate checks its required permissions,
        // and a `str` pattern search costs more than the check itself.
        let well_formed = concrete.as_bytes().split(|&b| b == b':').all(|segment| {
            !segment.is_empty()
                && segment
                    .iter()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
        });
        if well_formed {
            Ok(())
        } else {
            Err(InvalidPermission::Malformed)
        }
    }

    /// True for `*` alone, which only built-in roles may hold.
    #[must_use]
    pub fn is_global_wildcard(&self) -> bool {
        &*self.0 == "*"
    }
}

impl FromStr for Permission {
    type Err = InvalidPermission;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::check(s).map(|()| Self(s.into()))
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permission({})", self.0)
    }
}

/// Why a string is not a role name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "role name must be 1 to {MAX_ROLE_NAME_BYTES} characters of [a-z0-9_.-], starting with a letter or digit"
)]
pub struct InvalidRoleName;

/// A role name such as `admin` or `deployer`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(Arc<str>);

impl RoleName {
    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RoleName {
    type Err = InvalidRoleName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= MAX_ROLE_NAME_BYTES
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|&b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'));
        if valid {
            Ok(Self(s.into()))
        } else {
            Err(InvalidRoleName)
        }
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoleName({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn perm(s: &str) -> Permission {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn grammar() {
        let cases: &[(&str, Result<(), InvalidPermission>)] = &[
            ("deploy", Ok(())),
            ("deploy:write", Ok(())),
            ("deploy:prod:write", Ok(())),
            ("a.b-c_d:0", Ok(())),
            ("deploy:*", Ok(())),
            ("*", Ok(())),
            ("", Err(InvalidPermission::Empty)),
            ("deploy:", Err(InvalidPermission::Malformed)),
            (":deploy", Err(InvalidPermission::Malformed)),
            ("deploy::write", Err(InvalidPermission::Malformed)),
            ("deploy:**", Err(InvalidPermission::Malformed)),
            ("**", Err(InvalidPermission::Malformed)),
            ("deploy*", Err(InvalidPermission::Malformed)),
            ("de*ploy", Err(InvalidPermission::Malformed)),
            ("*:deploy", Err(InvalidPermission::Malformed)),
            ("Deploy:Write", Err(InvalidPermission::Malformed)),
            ("déploy", Err(InvalidPermission::Malformed)),
            ("deploy write", Err(InvalidPermission::Malformed)),
        ];
        for (input, expected) in cases {
            assert_eq!(
                input.parse::<Permission>().map(|_| ()),
                *expected,
                "{input:?}"
            );
        }
        let longest = "a".repeat(MAX_PERMISSION_BYTES);
        assert!(longest.parse::<Permission>().is_ok());
        assert_eq!(
            format!("{longest}a").parse::<Permission>(),
            Err(InvalidPermission::TooLong)
        );
    }

    #[test]
    fn matching() {
        let cases: &[(&str, &str, bool)] = &[
            ("deploy:write", "deploy:write", true),
            ("deploy:write", "deploy:read", false),
            ("deploy:write", "deploy", false),
            ("deploy", "deploy:write", false),
            ("deploy:*", "deploy:write", true),
            ("deploy:*", "deploy:prod:write", true),
            ("deploy:*", "deploy", false),
            ("deploy:*", "deployer:write", false),
            ("deploy:*", "deploy:*", true),
            ("deploy:*", "deploy:prod:*", true),
            ("deploy:prod:*", "deploy:*", false),
            ("keyward:*", "keyward:validate", true),
            ("keyward:*", "keyward:admin", true),
            ("keyward:validate", "keyward:admin", false),
            ("*", "anything:at:all", true),
            ("*", "*", true),
        ];
        for (held, required, expected) in cases {
            assert_eq!(
                perm(held).grants(&perm(required)),
                *expected,
                "{held} grants {required}"
            );
        }
    }

    /// Permissions as the grammar makes them, wildcards included.
    fn permission() -> impl Strategy<Value = Permission> {
        prop_oneof![
            1 => Just("*".to_owned()),
            9 => "[a-z0-9_.-]{1,6}(:[a-z0-9_.-]{1,6}){0,3}(:[*])?",
        ]
        .prop_map(|text| perm(&text))
    }

    /// Any text, and text that is almost a permission: separators, stars,
    /// uppercase, control and bidirectional characters in the wrong places.
    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9:*_. \\x00-\\x1f\u{202e}\u{200b}é-]{0,40}",
            "[a-z:*]{0,300}",
        ]
    }

    proptest! {
        /// No text makes a parser panic; what they accept prints back as it
        /// came and obeys the grammar's bounds.
        #[test]
        fn parsers_answer_any_text(input in hostile_text()) {
            if let Ok(permission) = input.parse::<Permission>() {
                prop_assert_eq!(permission.as_str(), input.as_str());
                prop_assert!(input.len() <= MAX_PERMISSION_BYTES);
                prop_assert!(input.is_ascii() && !input.contains("::") && !input.contains("**"));
                prop_assert!(permission.grants(&permission));
            }
            if let Ok(name) = input.parse::<RoleName>() {
                prop_assert_eq!(name.as_str(), input.as_str());
                prop_assert!(!input.is_empty() && input.len() <= MAX_ROLE_NAME_BYTES);
            }
        }

        /// Holding a permission grants it, and granting is transitive: a
        /// wildcard that grants a narrower wildcard grants all it grants.
        #[test]
        fn granting_is_reflexive_and_transitive(a in permission(), b in permission(), c in permission()) {
            prop_assert!(a.grants(&a));
            if a.grants(&b) && b.grants(&c) {
                prop_assert!(a.grants(&c), "{a} grants {b} grants {c}");
            }
            // Only a wildcard grants something other than itself.
            if a.grants(&b) && a != b {
                prop_assert!(a.as_str().ends_with('*'));
            }
        }

        /// `scope:*` grants every permission under `scope:`, and nothing
        /// outside it, `scope` itself included.
        #[test]
        fn a_wildcard_grants_exactly_its_scope(scope in "[a-z]{1,4}(:[a-z]{1,4}){0,2}", rest in permission()) {
            let wildcard = perm(&format!("{scope}:*"));
            let inside = perm(&format!("{scope}:{rest}"));
            prop_assert!(wildcard.grants(&inside));
            prop_assert!(!wildcard.grants(&perm(&scope)));
            let sibling = perm(&format!("{scope}x:{rest}"));
            prop_assert!(!wildcard.grants(&sibling));
        }
    }

    #[test]
    fn role_names() {
        for good in ["admin", "validator", "ci-deploy", "0day", "a.b_c"] {
            assert!(good.parse::<RoleName>().is_ok(), "{good}");
        }
        for bad in ["", "-x", "Admin", "a b", "a:b", &"r".repeat(65)] {
            assert!(bad.parse::<RoleName>().is_err(), "{bad:?}");
        }
    }
}
