//! Certificates for the TLS tests, made at run time: a CA, a server
//! certificate for `localhost` and `127.0.0.1` signed by it, and client
//! certificates signed by a second CA (the one `--tls-client-ca` names) or by
//! a stranger. None is checked in, so none can expire in the repository.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::tls::TlsFiles;

/// A certificate authority that signs server or client certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct TestIdentity {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    ///
    /// # Panics
    /// When rcgen cannot make a key (never, in practice).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a key pair");
        let pem = params.self_signed(&key).expect("a CA certificate").pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// The CA's certificate, PEM: what clients trust, or what
    /// `--tls-client-ca` names.
    #[must_use]
    pub fn cert_pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    #[must_use]
    pub fn server_identity(&self) -> TestIdentity {
        self.sign(
            &["localhost".to_owned(), "127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate named `name`.
    #[must_use]
    pub fn client_identity(&self, name: &str) -> TestIdentity {
        self.sign(&[name.to_owned()], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn sign(&self, names: &[String], usage: ExtendedKeyUsagePurpose) -> TestIdentity {
        let mut params = CertificateParams::new(names.to_vec()).expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a key pair");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        TestIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl TestIdentity {
    /// Writes the certificate and key to `dir` as `NAME.crt` and `NAME.key`
    /// and returns their paths.
    ///
    /// # Panics
    /// When the files cannot be written.
    #[allow(clippy::must_use_candidate)] // Often written for its side effect.
    pub fn write_to(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("certificate written");
        std::fs::write(&key, &self.key_pem).expect("key written");
        (cert, key)
    }
}

/// A server's TLS set-up written to a directory: the CA clients trust, the
/// server's certificate and key, and (for mTLS) the CA that signs accepted
/// client certificates.
pub struct TestPki {
    /// What clients trust.
    pub server_ca: TestCa,
    /// What `--tls-client-ca` names.
    pub client_ca: TestCa,
    /// The files, for [`crate::server::Settings::tls`].
    pub files: TlsFiles,
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Fresh CAs and a server certificate, written to a new directory;
    /// `mtls` decides whether the files name the client CA.
    ///
    /// # Panics
    /// When the files cannot be written.
    #[must_use]
    pub fn new(mtls: bool) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server_ca = TestCa::new("keyward test server CA");
        let client_ca = TestCa::new("keyward test client CA");
        let (cert, key) = server_ca.server_identity().write_to(dir.path(), "server");
        let client_ca_path = dir.path().join("clients-ca.crt");
        std::fs::write(&client_ca_path, client_ca.cert_pem()).expect("CA written");
        let server_ca_path = dir.path().join("ca.crt");
        std::fs::write(&server_ca_path, server_ca.cert_pem()).expect("CA written");
        Self {
            server_ca,
            client_ca,
            files: TlsFiles {
                cert,
                key,
                client_ca: mtls.then_some(client_ca_path),
            },
            dir,
        }
    }

    /// The directory holding the files (`ca.crt` is the server CA).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca.crt`: the CA a client must trust.
    #[must_use]
    pub fn server_ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }
}

/// A client configuration that trusts `ca` and, if given, presents
/// `identity`.
#[must_use]
pub fn client_config(
    ca: &TestCa,
    identity: Option<&TestIdentity>,
) -> tonic::transport::ClientTlsConfig {
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca.cert_pem()));
    match identity {
        Some(identity) => config.identity(tonic::transport::Identity::from_pem(
            &identity.cert_pem,
            &identity.key_pem,
        )),
        None => config,
    }
}
