//! TLS 1.3 with both sides authenticated, through rustls (no OpenSSL).
//!
//! Two ways to trust a peer:
//! - [`Trust::Ca`]: the peer's certificate is signed by the scenario CA
//!   (`rha cert ca`), and, when this side dials, it names the host dialled
//!   (a DNS name or IP address in its subject alternative names);
//! - [`Trust::Pinned`]: the peer's certificate is exactly one of the given
//!   files (and within its validity period).
//!
//! Either way the peer must present a certificate: an engine refuses a
//! client without one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    RootCertStore, ServerConfig, SignatureScheme,
};

/// How the peer's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Signed by the CA in this PEM file.
    Ca {
        /// The CA certificate (`ca.pem`).
        ca: PathBuf,
    },
    /// Exactly one of these certificates (PEM files).
    Pinned {
        /// The peers' certificates.
        peers: Vec<PathBuf>,
    },
}

/// Where this side's certificate, key and trust come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// This side's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM). Never logged.
    pub key: PathBuf,
    /// How peers are checked.
    pub trust: Trust,
}

impl TlsSettings {
    /// The files `rha cert` makes in `dir` for `name`: `name.pem`,
    /// `name.key`, trusting `ca.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> TlsSettings {
        TlsSettings {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            trust: Trust::Ca {
                ca: dir.join("ca.pem"),
            },
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {path}: {source} (make certificates with `rha cert`)")]
    Read {
        /// Which file it is (certificate, key, CA).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("{path} holds no {what} in PEM form: is it the right file?")]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A private key file is readable by others.
    #[error("{path} is readable by other users (mode {mode:o}): run `chmod 600 {path}`")]
    KeyExposed {
        /// The key file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The key does not belong to the certificate, or the certificate is
    /// unusable.
    #[error("{cert} and {key} do not go together, or are unusable: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        reason: String,
    },
    /// The trust settings are unusable.
    #[error("cannot trust {path}: {reason}")]
    Trust {
        /// The CA or pinned file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A host name to dial is not a DNS name or an IP address.
    #[error("`{host}` is not a valid host name or IP address for TLS")]
    BadHost {
        /// The host.
        host: String,
    },
}

/// Loaded TLS configuration for both directions.
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    names: Vec<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key material: only who this side is.
        f.debug_struct("Tls")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyExposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let pem = read("private key", path)?;
    match rustls_pemfile::private_key(&mut pem.as_slice()) {
        Ok(Some(k)) => Ok(k),
        _ => Err(TlsError::Empty {
            what: "private key",
            path: path.to_path_buf(),
        }),
    }
}

impl Tls {
    /// Loads this side's certificate and key and the trust settings.
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let chain = load_certs("certificate", &settings.cert)?;
        let key = load_key(&settings.key)?;
        let names = peer_names(&chain);
        let provider = provider();
        let mismatch = |e: rustls::Error| TlsError::Mismatch {
            cert: settings.cert.clone(),
            key: settings.key.clone(),
            reason: e.to_string(),
        };
        let (client_verifier, server_verifier): (
            Arc<dyn ClientCertVerifier>,
            Arc<dyn ServerCertVerifier>,
        ) = match &settings.trust {
            Trust::Ca { ca } => {
                let mut roots = RootCertStore::empty();
                for c in load_certs("CA certificate", ca)? {
                    roots.add(c).map_err(|e| TlsError::Trust {
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?;
                }
                let roots = Arc::new(roots);
                let cv = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.clone(),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Trust {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                let sv = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Trust {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
                (cv, sv)
            }
            Trust::Pinned { peers } => {
                let mut pinned = Vec::new();
                for p in peers {
                    pinned.extend(load_certs("pinned certificate", p)?.into_iter().take(1));
                }
                if pinned.is_empty() {
                    return Err(TlsError::Trust {
                        path: PathBuf::new(),
                        reason: "no pinned certificates given".into(),
                    });
                }
                let p = Arc::new(Pinned {
                    certs: pinned,
                    algorithms: provider.signature_verification_algorithms,
                });
                (p.clone(), p)
            }
        };
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(mismatch)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(mismatch)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(mismatch)?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            names,
        })
    }

    /// For accepting connections.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// For dialling.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    /// The names in this side's own certificate (common name, then the
    /// subject alternative names).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Trusts exactly the pinned certificates.
#[derive(Debug)]
struct Pinned {
    certs: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, end_entity: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
        if !self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(end_entity.as_ref()) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::BadEncoding,
            ));
        };
        let now = now.as_secs() as i64;
        let v = cert.validity();
        if now < v.not_before.timestamp() {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        if now > v.not_after.timestamp() {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        Ok(())
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, now)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS server name for dialling `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::BadHost { host: host.into() })
}

/// The names a certificate chain's first (end-entity) certificate carries:
/// its common name, then its DNS and IP subject alternative names.
pub fn peer_names(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let Some(first) = certs.first() else {
        return Vec::new();
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(first.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            let s = match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                x509_parser::extensions::GeneralName::IPAddress(b) => ip_text(b),
                _ => None,
            };
            if let Some(s) = s {
                if !names.iter().any(|x| x.eq_ignore_ascii_case(&s)) {
                    names.push(s);
                }
            }
        }
    }
    names
}

fn ip_text(b: &[u8]) -> Option<String> {
    match b.len() {
        4 => {
            let a: [u8; 4] = b.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(a).to_string())
        }
        16 => {
            let a: [u8; 16] = b.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(a).to_string())
        }
        _ => None,
    }
}

/// Explains a failed TLS handshake (or a TLS error on the first read) as a
/// sentence that names the cause and what to do.
pub fn describe_handshake_error(err: &std::io::Error) -> String {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => format!(
                "the peer closed the connection during the TLS handshake ({err}): it may not trust \
                 our certificate, or it does not speak TLS (plaintext on one side only?)"
            ),
            std::io::ErrorKind::InvalidData => format!(
                "the peer does not speak TLS ({err}): is it an rha engine, and is TLS on at both ends?"
            ),
            _ => err.to_string(),
        };
    };
    describe_rustls(tls)
}

fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "the peer's certificate is not signed by our CA (ca.pem): \
                both engines need certificates from the same `rha cert ca`"
                .into(),
            CertificateError::BadSignature => {
                "the peer's certificate is not signed by our CA (ca.pem): another CA of the same name \
                 signed it (or it was altered); both engines need certificates from the same `rha cert ca`"
                    .into()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => format!(
                "the peer's certificate has expired ({e}): make a new one with `rha cert engine --force`"
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => format!(
                "the peer's certificate is not valid yet ({e}): check both hosts' clocks"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the peer's certificate does not name the host we dialled ({e}): remake it with \
                 `rha cert engine --name NAME --san HOST` for the address in the scenario"
            ),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => format!(
                "the peer's certificate is not allowed for this use ({e}): an operator certificate cannot \
                 serve as an engine's; use `rha cert engine`"
            ),
            CertificateError::ApplicationVerificationFailure => {
                "the peer's certificate is not one of the pinned certificates (--pin)".into()
            }
            _ => format!("the peer's certificate was refused: {e}"),
        },
        E::NoCertificatesPresented => {
            "the peer presented no certificate: engines require one (mutual TLS); pass --certs".into()
        }
        E::AlertReceived(a) => match a {
            AlertDescription::UnknownCA | AlertDescription::BadCertificate | AlertDescription::DecryptError => {
                format!(
                    "the peer refused our certificate ({a:?}): it trusts another CA or other pinned \
                     certificates; make ours with the scenario's `rha cert ca`"
                )
            }
            AlertDescription::CertificateExpired => {
                "the peer says our certificate has expired: renew it with `rha cert engine --force`".into()
            }
            AlertDescription::CertificateRequired => {
                "the peer requires a client certificate and we sent none: pass --certs".into()
            }
            AlertDescription::ProtocolVersion => {
                "the peer does not speak TLS 1.3 (rha needs it at both ends)".into()
            }
            _ => format!("the peer ended the TLS handshake: {a:?}"),
        },
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => format!(
            "the peer does not speak TLS as expected ({e}): is TLS on at both ends (no --insecure-plaintext on one side)?"
        ),
        other => format!("TLS failed: {other}"),
    }
}
