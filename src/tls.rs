//! TLS on the gRPC port (and the HTTP listener), with certificates that can change under a running
//! server.
//!
//! cert-manager, Vault agents and `certbot` replace certificate files in
//! place; a server that read them once would serve an expired certificate
//! until someone restarts it. [`TlsConfig`] keeps the current rustls
//! configuration behind a lock: each new connection's handshake takes the
//! configuration of the moment, so a reload ([`TlsConfig::reload`], run when
//! the files change and on `SIGHUP`) changes what new connections get and
//! leaves established ones as they are.
//!
//! With a client CA (`--tls-client-ca`) the server asks every client for a
//! certificate and refuses, at the handshake, one without a certificate
//! signed by that CA (mTLS): such a client never reaches a gRPC handler.
//!
//! [`handshake`] is the TLS step of accepting a connection
//! ([`crate::listener`]): handshakes run concurrently (a slow client delays
//! only itself) and are bounded in time and number.

use std::{
    fmt, fs,
    future::Future,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        crypto::CryptoProvider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;

use crate::listener::{Connection, ConnectionLimit};

/// How long a client gets to finish its TLS handshake. A handshake is two
/// round trips; a client that takes longer is stalled or hostile.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once. Each holds a socket and a few KiB;
/// the cap keeps a flood of clients that connect and never speak from
/// holding an unbounded number of them.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// How often the certificate files are checked for a change.
pub const RELOAD_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Where the server's certificate, its key and the optional client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates, PEM, that client certificates must chain to. With
    /// one, every client must present a certificate (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// Why a TLS configuration cannot be built. Each variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// As the operating system said.
        source: io::Error,
    },
    /// A file was read but does not hold what it should.
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl TlsError {
    fn invalid(path: &Path, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The files' contents as last loaded: a reload that finds them unchanged
/// does nothing.
#[derive(Debug, Default, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: read(&files.cert)?,
            key: read(&files.key)?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

/// The server's TLS configuration of the moment (see the module docs).
pub struct TlsConfig {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

struct Loaded {
    contents: Contents,
    acceptor: TlsAcceptor,
    /// The same configuration offering HTTP/1.1, for the HTTP listener.
    http1_acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Reads and checks the files.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that cannot be read, holds no
    /// certificate or key, or whose key does not belong to the certificate.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let contents = Contents::read(&files)?;
        let (acceptor, http1_acceptor) = build(&files, &contents)?;
        Ok(Self {
            files,
            current: RwLock::new(Loaded {
                contents,
                acceptor,
                http1_acceptor,
            }),
        })
    }

    /// The files this configuration comes from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again and, if they changed and are valid, makes new
    /// connections use them. Returns whether anything changed. Established
    /// connections keep the configuration they started with.
    ///
    /// # Errors
    /// When the changed files are not a valid configuration; the previous one
    /// stays in use (a half-written certificate must not take the port down).
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = Contents::read(&self.files)?;
        if self.current().contents == contents {
            return Ok(false);
        }
        let (acceptor, http1_acceptor) = build(&self.files, &contents)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Loaded {
            contents,
            acceptor,
            http1_acceptor,
        };
        Ok(true)
    }

    fn current(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.current().acceptor.clone()
    }

    fn http1_acceptor(&self) -> TlsAcceptor {
        self.current().http1_acceptor.clone()
    }
}

/// The acceptors of one configuration: gRPC's (HTTP/2 only) and the HTTP
/// listener's (HTTP/1.1, which nginx, Traefik and Caddy speak to an auth
/// service).
fn build(files: &TlsFiles, contents: &Contents) -> Result<(TlsAcceptor, TlsAcceptor), TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|error| {
        TlsError::invalid(&files.key, format!("no usable private key ({error})"))
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::invalid(&files.cert, error))?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem, provider)?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => TlsError::invalid(
                &files.key,
                format!(
                    "this key does not belong to the certificate in {}",
                    files.cert.display()
                ),
            ),
            error => TlsError::invalid(&files.key, error),
        })?;
    let mut http1 = config.clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((
        TlsAcceptor::from(Arc::new(config)),
        TlsAcceptor::from(Arc::new(http1)),
    ))
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::invalid(path, format!("not PEM certificates ({error})")))?;
    if chain.is_empty() {
        return Err(TlsError::invalid(path, "holds no PEM certificate"));
    }
    Ok(chain)
}

fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, pem)? {
        roots
            .add(certificate)
            .map_err(|error| TlsError::invalid(path, format!("not a CA certificate ({error})")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| TlsError::invalid(path, error))
}

/// A TLS handshake under way, ending with the connection or `None`.
pub type Handshaking = Pin<Box<dyn Future<Output = Option<TlsStream<TcpStream>>> + Send>>;

/// The TLS side of accepting a connection ([`crate::listener::accept`]):
/// the handshake with the configuration of the moment. Handshakes run at most
/// [`MAX_PENDING_HANDSHAKES`] at once, and a connection gets
/// [`HANDSHAKE_TIMEOUT`] from its accept, waiting for its turn included;
/// one that fails is dropped (`None`).
///
/// # Panics
/// Never: the semaphore of handshake turns is never closed.
pub fn handshake(tls: Arc<TlsConfig>) -> impl Fn(TcpStream, SocketAddr) -> Handshaking + Send {
    handshake_with(tls, TlsConfig::acceptor)
}

/// [`handshake`] for the HTTP listener: the same certificates and client
/// CA, offering HTTP/1.1 rather than HTTP/2.
///
/// # Panics
/// Never, as [`handshake`].
pub fn handshake_http1(
    tls: Arc<TlsConfig>,
) -> impl Fn(TcpStream, SocketAddr) -> Handshaking + Send {
    handshake_with(tls, TlsConfig::http1_acceptor)
}

/// The HTTP listener's TLS connections, accepted as the gRPC port's are
/// ([`crate::listener::accept`]), at most `limit` at once.
pub fn incoming_http1(
    listener: TcpListener,
    tls: Arc<TlsConfig>,
    limit: ConnectionLimit,
    draining: watch::Receiver<bool>,
) -> ReceiverStream<io::Result<Connection<TlsStream<TcpStream>>>> {
    crate::listener::accept(listener, limit, draining, handshake_http1(tls))
}

fn handshake_with(
    tls: Arc<TlsConfig>,
    acceptor: fn(&TlsConfig) -> TlsAcceptor,
) -> impl Fn(TcpStream, SocketAddr) -> Handshaking + Send {
    let handshakes = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    move |socket, peer| {
        let tls = tls.clone();
        let handshakes = handshakes.clone();
        Box::pin(async move {
            let finished = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                let _turn = handshakes.acquire().await.expect("never closed");
                acceptor(&tls).accept(socket).await
            })
            .await;
            match finished {
                Ok(Ok(connection)) => Some(connection),
                // A client without an acceptable certificate, a plaintext
                // client, a scanner: its problem, not the server's. Debug
                // level, so a flood of them cannot flood the log.
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    None
                }
            }
        })
    }
}

/// Reloads `tls` when its files change (checked every
/// [`RELOAD_CHECK_INTERVAL`]) and on `SIGHUP`, logging the outcome; the
/// returned future runs until dropped.
///
/// The `SIGHUP` handler is installed when this is called, so that a `SIGHUP`
/// sent once the server is up never finds the default action (which would
/// end the process).
///
/// # Panics
/// When the process cannot install a `SIGHUP` handler, at start-up.
pub fn reload_on_change(tls: Arc<TlsConfig>) -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler can be installed");
    async move {
        let mut ticks = tokio::time::interval(RELOAD_CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = ticks.tick() => false,
                _ = hangup.recv() => true,
            };
            match tls.reload() {
                Ok(true) => tracing::info!(
                    cert = %tls.files.cert.display(),
                    "TLS certificates reloaded; new connections use them"
                ),
                Ok(false) if asked => tracing::info!("SIGHUP: TLS certificate files unchanged"),
                Ok(false) => {}
                Err(error) => tracing::error!(
                    %error,
                    "cannot reload TLS certificates; still serving the previous ones"
                ),
            }
        }
    }
}
