//! Where a database URL points, and how it is shown: the file behind
//! `sqlite://PATH`, created private before SQLite opens it, or the
//! PostgreSQL server and database, described without the password a URL may
//! hold.

use std::{
    fmt::{self, Write as _},
    fs::OpenOptions,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    str::FromStr,
};

use sqlx::postgres::PgConnectOptions;

use super::StoreError;

/// Where a database URL points. Its `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum Location {
    SqliteFile(PathBuf),
    /// The URL as given, and a description for messages (no password).
    Postgres {
        url: String,
        shown: String,
    },
}

impl Location {
    pub(super) fn parse(database_url: &str) -> Result<Self, StoreError> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(database_url)
                .map_err(|error| StoreError::InvalidUrl(without_secrets(&error.to_string())))?;
            let shown = format!(
                "postgres://{}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or_default()
            );
            return Ok(Self::Postgres {
                url: database_url.to_owned(),
                shown,
            });
        }
        sqlite_path(database_url).map(Self::SqliteFile)
    }

    pub(super) fn shown(&self) -> String {
        match self {
            Self::SqliteFile(path) => path.display().to_string(),
            Self::Postgres { shown, .. } => shown.clone(),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown())
    }
}

/// `database_url` for logs and `Debug`: the file, or the PostgreSQL server
/// and database, never a password.
#[must_use]
pub fn redacted_url(database_url: &str) -> String {
    Location::parse(database_url).map_or_else(
        |_| "(unparseable URL)".to_owned(),
        |location| location.shown(),
    )
}

/// Keeps a URL-parsing error's message but drops any URL it quotes, which
/// could hold a password.
fn without_secrets(message: &str) -> String {
    match message.split_once("://") {
        Some((head, _)) => format!("{head}://… (check the URL's syntax)"),
        None => message.to_owned(),
    }
}

/// The file behind `sqlite://PATH` (also `sqlite:PATH`).
fn sqlite_path(database_url: &str) -> Result<PathBuf, StoreError> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .ok_or(StoreError::UnsupportedUrl)?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(StoreError::UnsupportedUrl);
    }
    Ok(PathBuf::from(path))
}

/// `sqlite://PATH` for sqlx, which percent-decodes the path: every byte
/// but unreserved ones and `/` is encoded, so the file opened is the file
/// created, whatever its name holds (` `, `%`, `#`).
pub(super) fn sqlite_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("sqlite://");
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            write!(url, "%{byte:02X}").expect("writing to a String cannot fail");
        }
    }
    url
}

/// Creates the database file readable by its owner only, before SQLite
/// opens it (SQLite gives its WAL and shared-memory files the same mode).
/// An existing file, and its WAL and shared-memory files, that others may
/// read or write are tightened to owner-only, with a warning: the file holds
/// every key's digest, owner and labels, and the audit log.
pub(super) fn create_private_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let error = |path: &Path, source| StoreError::CreateFile {
        path: path.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| error(path, source))?;
    let companions = ["-wal", "-shm"].map(|suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    });
    let files = std::iter::once((path.to_owned(), Some(file)))
        .chain(companions.into_iter().map(|companion| (companion, None)));
    for (path, opened) in files {
        let metadata = match &opened {
            Some(file) => file.metadata(),
            None => match std::fs::metadata(&path) {
                Err(missing) if missing.kind() == std::io::ErrorKind::NotFound => continue,
                other => other,
            },
        }
        .map_err(|source| error(&path, source))?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| error(&path, source))?;
            tracing::warn!(
                path = %path.display(),
                was = format_args!("{mode:o}"),
                "database file was readable or writable by others; now 600"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn sqlite_urls() {
        assert_eq!(
            sqlite_path("sqlite://keyward.db").unwrap(),
            PathBuf::from("keyward.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/k.db").unwrap(),
            PathBuf::from("/var/lib/k.db")
        );
        assert_eq!(
            sqlite_path("sqlite:k.db?mode=rwc").unwrap(),
            PathBuf::from("k.db")
        );
        assert!(matches!(
            sqlite_path("postgres://x"),
            Err(StoreError::UnsupportedUrl)
        ));
        assert!(matches!(
            sqlite_path("sqlite://"),
            Err(StoreError::UnsupportedUrl)
        ));
    }

    #[tokio::test]
    async fn database_urls_are_shown_without_their_password() {
        let location = Location::parse("postgres://kw:hunter2@db.internal:6543/keys").unwrap();
        assert_eq!(location.shown(), "postgres://db.internal:6543/keys");
        let err = Location::parse("postgres://kw:hunter2@db.internal:notaport/keys").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = Store::open("postgres://kw:hunter2@127.0.0.1:1/keys")
            .await
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("127.0.0.1:1"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}
