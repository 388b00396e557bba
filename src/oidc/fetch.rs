//! Fetching an issuer's discovery document and key set: one HTTP/1.1 GET
//! over TLS (the system's trusted CAs, rustls with ring, as the rest of
//! keyward), bounded in time and size, following no redirect.
//!
//! The documents are small (GitHub's JWKS is about 3 KB): a bound far above
//! that keeps a misbehaving or hostile endpoint from making the server
//! buffer without end, and a timeout keeps a silent one from holding an
//! exchange.

use std::{sync::Arc, time::Duration};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, ClientConfig, RootCertStore, pki_types::ServerName},
};

/// The largest document accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
/// How long one fetch (connect, TLS, request and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a document could not be fetched. Logged; the client of an exchange
/// learns only that it was refused.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Not an absolute URL, or of a scheme not allowed.
    #[error("refused URL: {0}")]
    Url(&'static str),
    /// Connecting or the TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Anything but `200 OK` (redirects are not followed).
    #[error("HTTP status {0}")]
    Status(u16),
    /// Over [`MAX_DOCUMENT_BYTES`].
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    /// Over [`FETCH_TIMEOUT`].
    #[error("no answer within {FETCH_TIMEOUT:?}")]
    Timeout,
}

/// Makes the GETs; cheap to share.
#[derive(Clone)]
pub struct Fetcher {
    /// Built on the first `https://` fetch: loading the system's CAs costs
    /// a few milliseconds that a server without trust policies need not pay.
    tls: Arc<std::sync::OnceLock<Arc<ClientConfig>>>,
    allow_http: bool,
    /// CAs trusted besides the system's: a test CA, in tests only.
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("allow_http", &self.allow_http)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `https://` URLs, and `http://` ones too with
    /// `allow_http` (tests: `--oidc-allow-http-issuers`).
    #[must_use]
    pub fn new(allow_http: bool) -> Self {
        Self {
            tls: Arc::default(),
            allow_http,
            extra_roots: Vec::new(),
        }
    }

    /// Also trusts the CA certificates in `ca_pem` for `https://`: for
    /// tests with an issuer whose certificate a test CA signed.
    ///
    /// # Panics
    /// When `ca_pem` holds no certificate.
    #[cfg(any(test, feature = "testing"))]
    #[must_use]
    pub fn trusting(mut self, ca_pem: &str) -> Self {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        self.extra_roots.extend(
            CertificateDer::pem_slice_iter(ca_pem.as_bytes())
                .map(|cert| cert.expect("a PEM certificate")),
        );
        self
    }

    /// Whether `http://` URLs are allowed.
    #[must_use]
    pub fn allows_http(&self) -> bool {
        self.allow_http
    }

    /// The body of `GET url`.
    ///
    /// # Errors
    /// A [`FetchError`] saying what went wrong.
    pub async fn get(&self, url: &str) -> Result<Bytes, FetchError> {
        tokio::time::timeout(FETCH_TIMEOUT, self.get_unbounded(url))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn get_unbounded(&self, url: &str) -> Result<Bytes, FetchError> {
        let uri: http::Uri = url.parse().map_err(|_| FetchError::Url("not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_http => false,
            _ => return Err(FetchError::Url("only https:// URLs are fetched")),
        };
        let authority = uri.authority().ok_or(FetchError::Url("no host"))?.clone();
        if authority.as_str().contains('@') {
            return Err(FetchError::Url("credentials in the URL"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(FetchError::Connect)?;
        let path = uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .to_owned();
        if tls {
            let name =
                ServerName::try_from(host).map_err(|_| FetchError::Url("not a valid host name"))?;
            let stream = TlsConnector::from(self.tls_config())
                .connect(name, tcp)
                .await
                .map_err(FetchError::Connect)?;
            request(stream, authority.as_str(), &path).await
        } else {
            request(tcp, authority.as_str(), &path).await
        }
    }

    fn tls_config(&self) -> Arc<ClientConfig> {
        self.tls
            .get_or_init(|| {
                let mut roots = RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                let (added, _ignored) = roots
                    .add_parsable_certificates(found.certs.into_iter().chain(self.extra_roots.clone()));
                if added == 0 {
                    tracing::warn!(errors = ?found.errors, "no trusted CA certificates found; https:// OIDC issuers will not verify");
                }
                let mut config = ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            })
            .clone()
    }
}

/// One GET over `io`, its body read through the size limit.
async fn request<S>(io: S, authority: &str, path: &str) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |error: &dyn std::fmt::Display| FetchError::Http(error.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http(&e))?;
    let driver = tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "keyward")
        .body(Empty::<Bytes>::new())
        .map_err(|e| http(&e))?;
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| http(&e))?;
        if response.status() != http::StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge
                } else {
                    http(&error)
                }
            })?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use axum::{Router, http::StatusCode, response::Redirect, routing::get};

    use super::*;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        url
    }

    /// An `https://` issuer: its certificate is checked against the trusted
    /// CAs; one they do not vouch for is never read.
    #[tokio::test]
    async fn https_fetches_check_the_servers_certificate() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tokio_rustls::{
            TlsAcceptor,
            rustls::{
                ServerConfig,
                pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
            },
        };

        let ca = crate::testing::tls::TestCa::new("issuer CA");
        let identity = ca.server_identity();
        let certs = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/jwks", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n{\"keys\": []}")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let trusted = Fetcher::new(false).trusting(ca.cert_pem());
        assert_eq!(&trusted.get(&url).await.unwrap()[..], b"{\"keys\": []}");
        let untrusted =
            Fetcher::new(false).trusting(crate::testing::tls::TestCa::new("other").cert_pem());
        assert!(matches!(
            untrusted.get(&url).await,
            Err(FetchError::Connect(_))
        ));
    }

    #[tokio::test]
    async fn fetches_are_bounded_and_follow_no_redirect() {
        let url = serve(
            Router::new()
                .route("/small", get(|| async { "{}" }))
                .route("/big", get(|| async { "x".repeat(MAX_DOCUMENT_BYTES + 1) }))
                .route("/moved", get(|| async { Redirect::temporary("/small") }))
                .route("/gone", get(|| async { StatusCode::NOT_FOUND })),
        )
        .await;
        let fetcher = Fetcher::new(true);
        assert_eq!(
            &fetcher.get(&format!("{url}/small")).await.unwrap()[..],
            b"{}"
        );
        assert!(matches!(
            fetcher.get(&format!("{url}/big")).await,
            Err(FetchError::TooLarge)
        ));
        assert!(matches!(
            fetcher.get(&format!("{url}/moved")).await,
            Err(FetchError::Status(307))
        ));
        assert!(matches!(
            fetcher.get(&format!("{url}/gone")).await,
            Err(FetchError::Status(404))
        ));
        // Without --oidc-allow-http-issuers, http:// is never fetched.
        assert!(matches!(
            Fetcher::new(false).get(&format!("{url}/small")).await,
            Err(FetchError::Url(_))
        ));
        for bad in ["ftp://x/y", "not a url", "http://user@127.0.0.1/"] {
            assert!(
                matches!(fetcher.get(bad).await, Err(FetchError::Url(_))),
                "{bad}"
            );
        }
    }
}
