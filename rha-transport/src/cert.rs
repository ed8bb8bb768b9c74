//! Certificates for mutual TLS: a scenario CA, engine certificates (server
//! and client) and operator certificates (client only), as `rha cert` makes
//! them.
//!
//! Every file goes into one directory: `ca.pem`, `ca.key`, `<name>.pem`,
//! `<name>.key`. Private keys are written readable by their owner only
//! (mode 0600) and are never printed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// The files of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, mode 0600).
    pub key: PathBuf,
}

impl CertFiles {
    /// The files of certificate `name` in `dir`: `dir/name.pem`, `dir/name.key`.
    pub fn in_dir(dir: &Path, name: &str) -> CertFiles {
        CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
        }
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// An engine: accepts connections (server) and calls other engines (client).
    Engine,
    /// An operator or a script: only calls engines (client).
    Operator,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// The file exists and `force` was not given.
    #[error("{path} exists: pass --force to replace it (peers that trust the old one will refuse the new one)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The CA files are missing.
    #[error(
        "no CA in {dir} ({missing} is missing): make one first with `rha cert ca --dir {dir}`"
    )]
    NoCa {
        /// The directory.
        dir: PathBuf,
        /// The missing file.
        missing: PathBuf,
    },
    /// A name is not usable.
    #[error("`{name}` cannot be used as a certificate name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The CA files could not be parsed, or signing failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// The cause.
        source: rcgen::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn crypto(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertError {
    let what = what.into();
    move |source| CertError::Crypto { what, source }
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = SystemTime::now();
    // A little slack for clocks that differ between hosts.
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(u64::from(days.max(1)) * 86_400)).into();
}

fn check_name(name: &str) -> Result<(), CertError> {
    let bad = |reason: &str| {
        Err(CertError::BadName {
            name: name.into(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.eq_ignore_ascii_case("ca") {
        return bad("`ca` is the CA's own file name; choose another");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
    {
        return bad("use letters, digits, `-`, `_`, `.` and `:` only (it becomes a file name)");
    }
    Ok(())
}

/// Writes `files` unless one exists and `force` is false; the key gets mode 0600.
fn write_pair(
    files: &CertFiles,
    cert_pem: &str,
    key_pem: &str,
    force: bool,
) -> Result<(), CertError> {
    if !force {
        for p in [&files.cert, &files.key] {
            if p.exists() {
                return Err(CertError::Exists { path: p.clone() });
            }
        }
    }
    write_private(&files.key, key_pem.as_bytes())?;
    std::fs::write(&files.cert, cert_pem).map_err(io(&files.cert))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::fs::PermissionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    // An existing file keeps its mode on open: tighten it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Makes a scenario CA in `dir` (`ca.pem`, `ca.key`), valid for `days`.
pub fn make_ca(
    dir: &Path,
    common_name: &str,
    days: u32,
    force: bool,
) -> Result<CertFiles, CertError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let files = CertFiles::in_dir(dir, "ca");
    let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(crypto("CA parameters"))?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rha");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(crypto("signing the CA"))?;
    write_pair(&files, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(files)
}

/// Makes certificate `name` of `kind`, signed by the CA in `ca_dir`, into
/// `out_dir`. Engine certificates carry `name` (when it is a host name or
/// an address) and `sans` as subject alternative names: peers check the
/// address they dial against them.
pub fn make_leaf(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    sans: &[String],
    kind: LeafKind,
    days: u32,
    force: bool,
) -> Result<CertFiles, CertError> {
    check_name(name)?;
    let ca = CertFiles::in_dir(ca_dir, "ca");
    for p in [&ca.cert, &ca.key] {
        if !p.exists() {
            return Err(CertError::NoCa {
                dir: ca_dir.to_path_buf(),
                missing: p.clone(),
            });
        }
    }
    let ca_pem = std::fs::read_to_string(&ca.cert).map_err(io(&ca.cert))?;
    let ca_key_pem = std::fs::read_to_string(&ca.key).map_err(io(&ca.key))?;
    let ca_key =
        KeyPair::from_pem(&ca_key_pem).map_err(crypto(format!("reading {}", ca.key.display())))?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)
        .map_err(crypto(format!("reading {}", ca.cert.display())))?;
    // The issuer as rcgen needs it: same subject and key as the file's CA.
    let issuer = ca_params
        .self_signed(&ca_key)
        .map_err(crypto(format!("loading the CA in {}", ca_dir.display())))?;

    let mut names: Vec<String> = Vec::new();
    if kind == LeafKind::Engine {
        names.push(name.to_owned());
        for s in sans {
            if s.is_empty() {
                continue;
            }
            if s.parse::<std::net::IpAddr>().is_err() && !is_dns_name(s) {
                return Err(CertError::BadName {
                    name: s.clone(),
                    reason: "a --san must be a host name or an IP address".into(),
                });
            }
            if !names.iter().any(|n| n.eq_ignore_ascii_case(s)) {
                names.push(s.clone());
            }
        }
        names.retain(|n| n.parse::<std::net::IpAddr>().is_ok() || is_dns_name(n));
    }
    let mut params = CertificateParams::new(names).map_err(crypto("certificate names"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "rha");
    params.is_ca = IsCa::ExplicitNoCa;
    // keyEncipherment as well: GnuTLS (QEMU's NBD client, `tls-creds-x509`)
    // refuses a certificate whose critical key usage lacks it, for its own
    // certificate and the peer's. TLS 1.3 never uses it, so it grants nothing.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match kind {
        LeafKind::Engine => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        LeafKind::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(crypto("generating the key"))?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(crypto(format!("signing `{name}`")))?;
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let files = CertFiles::in_dir(out_dir, name);
    write_pair(&files, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(files)
}

/// Whether `s` is a usable DNS name (letters, digits, `-`, dots between labels).
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ca_and_leaves_are_written_with_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let ca = make_ca(t.path(), "test CA", 10, false).unwrap();
        assert!(matches!(
            make_ca(t.path(), "again", 10, false),
            Err(CertError::Exists { .. })
        ));
        let e = make_leaf(
            t.path(),
            t.path(),
            "node1",
            &["127.0.0.1".into()],
            LeafKind::Engine,
            10,
            false,
        )
        .unwrap();
        let o = make_leaf(
            t.path(),
            t.path(),
            "operator",
            &[],
            LeafKind::Operator,
            10,
            false,
        )
        .unwrap();
        for f in [&ca, &e, &o] {
            let mode = std::fs::metadata(&f.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.key.display());
            assert!(std::fs::read_to_string(&f.cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE"));
        }
        assert!(matches!(
            make_leaf(t.path(), t.path(), "ca", &[], LeafKind::Engine, 10, false),
            Err(CertError::BadName { .. })
        ));
        assert!(matches!(
            make_leaf(
                t.path(),
                t.path(),
                "x",
                &["not a name!".into()],
                LeafKind::Engine,
                10,
                false
            ),
            Err(CertError::BadName { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        let err = make_leaf(
            empty.path(),
            empty.path(),
            "n",
            &[],
            LeafKind::Engine,
            10,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("rha cert ca"), "{err}");
    }
}
