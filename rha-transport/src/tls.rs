//! TEMPORARY STUB (replaced by the TLS helper's module).
#![allow(missing_docs, dead_code, unused_variables)]
use std::path::{Path, PathBuf};
pub enum Trust { Ca { ca: PathBuf }, Pinned { peers: Vec<PathBuf> } }
pub struct TlsSettings { pub cert: PathBuf, pub key: PathBuf, pub trust: Trust }
impl TlsSettings { pub fn in_dir(dir: &Path, name: &str) -> TlsSettings { todo!() } }
pub struct Tls;
impl Tls {
    pub fn load(settings: &TlsSettings) -> Result<Tls, TlsError> { todo!() }
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor { todo!() }
    pub fn connector(&self) -> tokio_rustls::TlsConnector { todo!() }
    pub fn names(&self) -> &[String] { todo!() }
}
pub fn server_name(host: &str) -> Result<rustls::pki_types::ServerName<'static>, TlsError> { todo!() }
pub fn peer_names(certs: &[rustls::pki_types::CertificateDer<'_>]) -> Vec<String> { todo!() }
pub fn describe_handshake_error(err: &std::io::Error) -> String { todo!() }
#[derive(Debug, thiserror::Error)] #[error("x")] pub struct TlsError;
