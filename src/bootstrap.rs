//! First run: the built-in roles and the first admin key.
//!
//! Both `keywardctl init` and a server starting on a database that was never
//! initialised come here, so a fresh database is set up one way only.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::{
    clock::{Clock, SystemClock, Timestamp},
    key::{KeyId, MintedKey, PlaintextKey, Prefix},
    model::{KeySettings, Labels, Role},
    permission::{self, RoleName},
    store::{NewKey, Store, StoreError},
};

/// The role of the first admin key: every keyward permission.
pub const ADMIN_ROLE: &str = "admin";
/// The role for backend servers that call Validate.
pub const VALIDATOR_ROLE: &str = "validator";

/// Why initialisation failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "the database is already initialised: its first admin key was printed by `keywardctl init` or written to the server's bootstrap key file (keyward-admin.key); mint further admin keys with an existing one"
    )]
    /// A first admin key exists already; it is never made twice.
    AlreadyInitialized,
    /// The admin key could not be generated.
    #[error("the OS random source failed: {0}")]
    Random(#[from] getrandom::Error),
    /// The key file could not be written; the database was left uninitialised.
    #[error("cannot write the admin key to {path}: {source}")]
    KeyFile {
        /// The file that could not be written.
        path: PathBuf,
        /// Why, as the operating system said.
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for InitError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::AlreadyInitialized => Self::AlreadyInitialized,
            other => Self::Store(other),
        }
    }
}

/// The first admin key, shown once.
#[derive(Debug)]
pub struct Initialized {
    /// Its public id, safe to log.
    pub key_id: KeyId,
    /// The secret, to hand over once and then forget.
    pub plaintext: PlaintextKey,
}

/// The roles every keyward database has, as created at `now`.
///
/// # Panics
/// Never: the built-in names and permissions it parses are constants, and a
/// unit test parses them.
#[must_use]
pub fn builtin_roles(now: Timestamp) -> Vec<Role> {
    let role = |name: &str, description: &str, permission: &str| Role {
        name: name.parse().expect("built-in role name"),
        description: description.to_owned(),
        permissions: [permission.parse().expect("built-in permission")].into(),
        max_ttl: None,
        rate_limit: None,
        builtin: true,
        created_at: now,
        updated_at: now,
    };
    vec![
        role(ADMIN_ROLE, "Every keyward permission", "keyward:*"),
        role(VALIDATOR_ROLE, "May call Validate", permission::VALIDATE),
    ]
}

/// Opens (creating and migrating) the database at `database_url` and
/// initialises it: for `keywardctl init`.
///
/// # Errors
/// [`InitError::AlreadyInitialized`] on a database initialised before.
pub async fn initialize_database(database_url: &str) -> Result<Initialized, InitError> {
    let store = Store::open(database_url).await?;
    let result = initialize(&store, &SystemClock, |_| Ok(())).await;
    store.close().await;
    result
}

/// Initialises `store`. `persist` sees the admin key before the database
/// commits, so a key that cannot be handed over is never created.
///
/// # Errors
/// [`InitError::AlreadyInitialized`] on a database initialised before, or
/// whatever `persist` or the store report.
///
/// # Panics
/// Never: the built-in role and permission it parses are constants.
pub async fn initialize(
    store: &Store,
    clock: &dyn Clock,
    persist: impl FnOnce(&PlaintextKey) -> Result<(), InitError>,
) -> Result<Initialized, InitError> {
    let minted = MintedKey::generate(&Prefix::default())?;
    persist(&minted.plaintext)?;
    let admin = NewKey {
        id: minted.id,
        digest: minted.digest,
        settings: KeySettings {
            prefix: minted.prefix.clone(),
            roles: vec![ADMIN_ROLE.parse::<RoleName>().expect("built-in role name")],
            permissions: Vec::new(),
            allowed_cidrs: Vec::new(),
            labels: Labels::default(),
            owner: String::new(),
            description: "first admin key, created at initialisation".to_owned(),
            expires_at: None,
            rate_limit: None,
            max_uses: None,
        },
        created_by: None,
    };
    store
        .initialize(&builtin_roles(clock.now()), admin, clock.now())
        .await?;
    Ok(Initialized {
        key_id: minted.id,
        plaintext: minted.plaintext,
    })
}

/// Initialises `store` if it never was, writing the admin key to `key_file`
/// (mode 0600, never overwritten). Returns the new key's id, or `None` when
/// the database was initialised before.
///
/// The key reaches `key_file` only once the initialisation has committed:
/// it is first written and flushed to `<key_file>.partial` (so a key that
/// cannot be kept is never committed), then linked to its name and the
/// directory flushed, so the name never shows a key the database lacks and
/// survives a crash once the server says it initialised. A crash between
/// the commit and the link leaves the key in the `.partial` file.
///
/// # Errors
/// When the key file exists or cannot be written (nothing is initialised
/// then), or the store fails.
pub async fn initialize_if_new(
    store: &Arc<Store>,
    clock: &dyn Clock,
    key_file: &Path,
) -> Result<Option<KeyId>, InitError> {
    if store.is_initialized().await? {
        return Ok(None);
    }
    let key_file_error = |path: &Path, source| InitError::KeyFile {
        path: path.to_owned(),
        source,
    };
    if key_file.exists() {
        return Err(key_file_error(
            key_file,
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "the file exists, and a key file is never overwritten",
            ),
        ));
    }
    let partial = partial_path(key_file);
    let result = initialize(store, clock, |key| write_key_file(&partial, key)).await;
    match result {
        Ok(initialized) => {
            publish(&partial, key_file)?;
            Ok(Some(initialized.key_id))
        }
        // Nothing was created: the partial file, if any, is another start's.
        Err(error @ InitError::KeyFile { .. }) => Err(error),
        Err(error) => {
            // The key in the file was never committed: remove it so no dead
            // key lies around.
            let _ = fs::remove_file(&partial);
            match error {
                // Another replica, starting at the same moment, won.
                InitError::AlreadyInitialized => Ok(None),
                error => Err(error),
            }
        }
    }
}

/// Where the key is written before the initialisation commits.
fn partial_path(key_file: &Path) -> PathBuf {
    let mut name = key_file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// Gives the committed key in `partial` its name `key_file` (never replacing
/// a file there), and makes the name durable.
fn publish(partial: &Path, key_file: &Path) -> Result<(), InitError> {
    let error = |source| InitError::KeyFile {
        path: key_file.to_owned(),
        source,
    };
    fs::hard_link(partial, key_file).map_err(error)?;
    fs::remove_file(partial).map_err(error)?;
    let dir = match key_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(error)
}

fn write_key_file(path: &Path, key: &PlaintextKey) -> Result<(), InitError> {
    let error = |source| InitError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    writeln!(file, "{}", key.expose()).map_err(error)?;
    file.sync_all().map_err(error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::store::open_temporary;

    #[tokio::test]
    async fn first_start_writes_a_private_key_file_once() {
        let (store, dir) = open_temporary().await;
        let key_file = dir.path().join("admin.key");
        let id = initialize_if_new(&store, &SystemClock, &key_file)
            .await
            .unwrap()
            .expect("a new database is initialised");
        let text = fs::read_to_string(&key_file).unwrap();
        assert!(text.starts_with(&format!("kw_{id}")));
        let mode = fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !partial_path(&key_file).exists(),
            "the partial file is gone"
        );

        assert!(
            initialize_if_new(&store, &SystemClock, &key_file)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            initialize(&store, &SystemClock, |_| Ok(())).await,
            Err(InitError::AlreadyInitialized)
        ));
    }

    #[tokio::test]
    async fn an_existing_key_file_is_never_overwritten() {
        let (store, dir) = open_temporary().await;
        let key_file = dir.path().join("admin.key");
        fs::write(&key_file, "precious").unwrap();
        let error = initialize_if_new(&store, &SystemClock, &key_file)
            .await
            .unwrap_err();
        assert!(matches!(error, InitError::KeyFile { .. }), "{error}");
        assert_eq!(fs::read_to_string(&key_file).unwrap(), "precious");
        assert!(
            !store.is_initialized().await.unwrap(),
            "nothing half-written"
        );
    }

    /// Replicas starting together on a new PostgreSQL database: exactly one
    /// initialises it, the others carry on, and no dead key file is left (a
    /// key file names only a committed key).
    #[tokio::test]
    async fn replicas_starting_together_initialise_once() {
        let Some(database) = crate::testing::ScratchDatabase::create().await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut starts = tokio::task::JoinSet::new();
        for replica in 0..4 {
            let url = database.url().to_owned();
            let key_file = dir.path().join(format!("admin-{replica}.key"));
            starts.spawn(async move {
                let store = Arc::new(Store::open(&url).await.unwrap());
                let outcome = initialize_if_new(&store, &SystemClock, &key_file).await;
                store.close().await;
                (outcome.unwrap(), key_file)
            });
        }
        let mut initialised = 0;
        for (outcome, key_file) in starts.join_all().await {
            match outcome {
                Some(id) => {
                    initialised += 1;
                    assert!(
                        fs::read_to_string(&key_file)
                            .unwrap()
                            .starts_with(&format!("kw_{id}"))
                    );
                }
                // The loser's commit failed: neither its key file nor the
                // partial copy written before the commit is left.
                None => assert!(
                    !key_file.exists() && !partial_path(&key_file).exists(),
                    "{}",
                    key_file.display()
                ),
            }
        }
        assert_eq!(initialised, 1);
    }
}
