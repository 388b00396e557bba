//! Talking to a keyward server: its address, the admin credential, and the
//! authenticated gRPC clients.
//!
//! The admin key lives in [`AdminKey`], whose `Debug` is redacted, and goes
//! on the wire only as the `authorization` metadata of each call. It is
//! never taken from the command line, where shell history and `ps` would see
//! it.

use std::{
    ffi::OsString,
    fmt, fs,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use keyward::pb::{
    admin_service_client::AdminServiceClient, exchange_service_client::ExchangeServiceClient,
    key_service_client::KeyServiceClient, trust_service_client::TrustServiceClient,
};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use zeroize::Zeroizing;

use crate::{
    cli::GlobalArgs,
    error::{CliError, root_cause},
};

/// How long to wait for a TCP connection: long enough for a slow network,
/// short enough that a wrong address fails while the operator still waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound for one RPC; every admin RPC is a handful of queries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable holding the admin key itself.
pub const ADMIN_KEY_ENV: &str = "KEYWARD_ADMIN_KEY";

/// The address of a keyward server, as a URL with a scheme: `host:port` is
/// read as `http://host:port`, so the usual way to write an address works.
///
/// `https://` means TLS: the server's certificate is checked against
/// `--ca-cert` (or the system's trusted CAs) and the URL's host name, so
/// the admin key never goes to a server that cannot prove it is the one
/// named. `http://` is plaintext HTTP/2, for loopback or a private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Whether this URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        self.0
            .split_once("://")
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"))
    }
}

impl FromStr for ServerUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let url = match s.split_once("://") {
            None => format!("http://{s}"),
            Some((scheme, _))
                if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
            {
                s.to_owned()
            }
            Some(_) => {
                return Err(
                    "not a server address (the scheme must be http:// or https://); expected \
                     e.g. https://keyward.internal:50051"
                        .to_owned(),
                );
            }
        };
        Endpoint::from_shared(url.clone()).map_err(|e| {
            format!("not a server address ({e}); expected e.g. https://keyward.internal:50051")
        })?;
        Ok(Self(url))
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The admin credential, ready to send as `authorization: Bearer <key>`.
#[derive(Clone)]
pub struct AdminKey(MetadataValue<Ascii>);

impl fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

impl AdminKey {
    /// Finds the admin key: in `file` when one is given (by flag or
    /// `KEYWARD_ADMIN_KEY_FILE`), else in `env_value` (`KEYWARD_ADMIN_KEY`).
    /// The more specific source wins, so a file named for one command
    /// overrides a key exported for the whole shell session.
    ///
    /// # Errors
    /// [`CliError::NoAdminKey`] when neither source gives a key, or the file
    /// cannot be read, is empty, or the key cannot be sent as a header.
    pub fn resolve(file: Option<&Path>, env_value: Option<OsString>) -> Result<Self, CliError> {
        if let Some(path) = file {
            let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| {
                CliError::AdminKeyFile {
                    path: path.to_owned(),
                    source,
                }
            })?);
            return match text.trim() {
                "" => Err(CliError::EmptyAdminKeyFile {
                    path: PathBuf::from(path),
                }),
                key => Self::from_text(key),
            };
        }
        match env_value {
            None => Err(CliError::NoAdminKey),
            Some(value) => match value.into_string().map(Zeroizing::new) {
                Ok(text) if text.trim().is_empty() => Err(CliError::NoAdminKey),
                Ok(text) => Self::from_text(text.trim()),
                Err(_) => Err(CliError::MalformedAdminKey),
            },
        }
    }

    /// Resolves the admin key from the global flags and the environment.
    ///
    /// # Errors
    /// As [`AdminKey::resolve`].
    pub fn from_args(global: &GlobalArgs) -> Result<Self, CliError> {
        Self::resolve(
            global.admin_key_file.as_deref(),
            std::env::var_os(ADMIN_KEY_ENV),
        )
    }

    fn from_text(key: &str) -> Result<Self, CliError> {
        // The header value is a copy in tonic's own type, which cannot be
        // wiped; the text it was made from is.
        let header = Zeroizing::new(format!("Bearer {key}"));
        let mut value =
            MetadataValue::try_from(header.as_str()).map_err(|_| CliError::MalformedAdminKey)?;
        // Keeps the value out of tonic's and hyper's `Debug` output.
        value.set_sensitive(true);
        Ok(Self(value))
    }
}

/// Adds the admin key to every request.
#[derive(Clone, Debug)]
pub struct BearerAuth(AdminKey);

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.0.clone());
        Ok(request)
    }
}

/// An authenticated channel to the admin API.
pub type AdminClient = AdminServiceClient<InterceptedService<Channel, BearerAuth>>;
/// An authenticated channel to the data plane (Validate).
pub type KeyClient = KeyServiceClient<InterceptedService<Channel, BearerAuth>>;
/// An authenticated channel to the trust policy API.
pub type TrustClient = TrustServiceClient<InterceptedService<Channel, BearerAuth>>;
/// A channel to the exchange API, authenticated (`RevokeSelf`) or not
/// (`Exchange`, where the identity token is the credential).
pub type ExchangeClient<T = InterceptedService<Channel, BearerAuth>> = ExchangeServiceClient<T>;

/// How to make a TLS connection: whom to trust, and who this client is.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) the server's certificate must chain to; the
    /// system's trusted CAs when `None`.
    pub ca_cert: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that requires one.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM).
    pub client_key: Option<PathBuf>,
}

impl TlsOptions {
    fn any(&self) -> bool {
        self.ca_cert.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }

    /// The tonic configuration for a connection to `server`.
    fn client_config(&self) -> Result<ClientTlsConfig, CliError> {
        let read = |what: &'static str, path: &Path| {
            fs::read(path).map_err(|source| CliError::TlsFile {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_cert {
            Some(path) => {
                config.ca_certificate(Certificate::from_pem(read("CA certificate", path)?))
            }
            None => config.with_native_roots(),
        };
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Ok(config.identity(Identity::from_pem(
                read("client certificate", cert)?,
                read("client key", key)?,
            ))),
            (None, None) => Ok(config),
            _ => Err(CliError::Usage(
                "--client-cert and --client-key go together".to_owned(),
            )),
        }
    }
}

/// Connects to the server named by the global flags, with the admin key.
///
/// The key is resolved first, so a missing credential is reported without a
/// network round trip, and the connection is made eagerly, so an unreachable
/// server is reported as such rather than as a failed RPC.
///
/// # Errors
/// A missing or unreadable admin key, or [`CliError::Unreachable`].
pub async fn admin_client(global: &GlobalArgs) -> Result<AdminClient, CliError> {
    let auth = BearerAuth(AdminKey::from_args(global)?);
    let channel = connect(&global.server, &global.tls()).await?;
    Ok(AdminServiceClient::with_interceptor(channel, auth))
}

/// Like [`admin_client`], for the Validate RPC.
///
/// # Errors
/// As [`admin_client`].
pub async fn key_client(global: &GlobalArgs) -> Result<KeyClient, CliError> {
    let auth = BearerAuth(AdminKey::from_args(global)?);
    let channel = connect(&global.server, &global.tls()).await?;
    Ok(KeyServiceClient::with_interceptor(channel, auth))
}

/// Like [`admin_client`], for the trust policy API.
///
/// # Errors
/// As [`admin_client`].
pub async fn trust_client(global: &GlobalArgs) -> Result<TrustClient, CliError> {
    let (channel, auth) = authenticated(global).await?;
    Ok(TrustServiceClient::with_interceptor(channel, auth))
}

/// Like [`admin_client`], for `RevokeSelf`: the key given as the admin key
/// is the one revoked.
///
/// # Errors
/// As [`admin_client`].
pub async fn self_client(global: &GlobalArgs) -> Result<ExchangeClient, CliError> {
    let (channel, auth) = authenticated(global).await?;
    Ok(ExchangeServiceClient::with_interceptor(channel, auth))
}

/// The credential, then the connection (so a missing key is reported
/// without a network round trip).
async fn authenticated(global: &GlobalArgs) -> Result<(Channel, BearerAuth), CliError> {
    let auth = BearerAuth(AdminKey::from_args(global)?);
    Ok((connect(&global.server, &global.tls()).await?, auth))
}

/// A connection for `Exchange`, with no credential: the identity token in
/// the request is one.
///
/// # Errors
/// [`CliError::Unreachable`].
pub async fn exchange_client(global: &GlobalArgs) -> Result<ExchangeClient<Channel>, CliError> {
    Ok(ExchangeServiceClient::new(
        connect(&global.server, &global.tls()).await?,
    ))
}

async fn connect(server: &ServerUrl, tls: &TlsOptions) -> Result<Channel, CliError> {
    let unreachable = |cause: String| CliError::Unreachable {
        server: server.clone(),
        cause,
    };
    // `ServerUrl::from_str` already checked the URL; this cannot fail.
    let mut endpoint = Endpoint::from_shared(server.0.clone())
        .map_err(|e| unreachable(e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if server.is_tls() {
        endpoint = endpoint
            .tls_config(tls.client_config()?)
            .map_err(|e| unreachable(root_cause(&e)))?;
    } else if tls.any() {
        // Certificates were given for a plaintext connection: the operator
        // expects TLS, and would not get it.
        return Err(CliError::Usage(format!(
            "--ca-cert, --client-cert and --client-key need an https:// server URL, not {server}"
        )));
    }
    endpoint
        .connect()
        .await
        .map_err(|e| unreachable(root_cause(&e)))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn server_urls_get_a_scheme() {
        let cases = [
            ("127.0.0.1:50051", "http://127.0.0.1:50051"),
            ("localhost:1", "http://localhost:1"),
            ("http://keyward:50051", "http://keyward:50051"),
            ("HTTP://keyward:50051", "HTTP://keyward:50051"),
            ("https://keyward.example", "https://keyward.example"),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<ServerUrl>().unwrap().to_string(), expected);
        }
        assert!("http://bad host".parse::<ServerUrl>().is_err());
        for tls in ["https://keyward.example", "HTTPS://127.0.0.1:50051"] {
            assert!(tls.parse::<ServerUrl>().unwrap().is_tls(), "{tls}");
        }
        assert!(!"127.0.0.1:1".parse::<ServerUrl>().unwrap().is_tls());
        let refused = "grpc://keyward:50051".parse::<ServerUrl>().unwrap_err();
        assert!(
            refused.contains("scheme must be http:// or https://"),
            "{refused}"
        );
    }

    #[test]
    fn admin_key_debug_is_redacted() {
        let key = AdminKey::resolve(None, Some("kw_secret".into())).unwrap();
        let debug = format!("{key:?} {:?}", BearerAuth(key.clone()));
        assert!(!debug.contains("kw_secret"), "{debug}");
    }

    #[test]
    fn admin_key_sources() {
        assert!(matches!(
            AdminKey::resolve(None, None),
            Err(CliError::NoAdminKey)
        ));
        assert!(matches!(
            AdminKey::resolve(None, Some("  ".into())),
            Err(CliError::NoAdminKey)
        ));
        assert!(matches!(
            AdminKey::resolve(None, Some("kw_a\nb".into())),
            Err(CliError::MalformedAdminKey)
        ));

        let mut file = tempfile::NamedTempFile::new().unwrap();
        writeln!(file, "kw_fromfile").unwrap();
        let key = AdminKey::resolve(Some(file.path()), Some("kw_fromenv".into())).unwrap();
        assert_eq!(
            key.0.to_str().unwrap(),
            "Bearer kw_fromfile",
            "the file wins"
        );

        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(matches!(
            AdminKey::resolve(Some(empty.path()), None),
            Err(CliError::EmptyAdminKeyFile { .. })
        ));
        assert!(matches!(
            AdminKey::resolve(Some(Path::new("/nonexistent/keyward-admin.key")), None),
            Err(CliError::AdminKeyFile { .. })
        ));
    }
}
