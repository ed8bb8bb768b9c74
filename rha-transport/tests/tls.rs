//! Mutual TLS between two sides on loopback: the right certificates pass,
//! and each wrong one is refused with a message that names the cause.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use rha_transport::cert::{make_ca, make_leaf, LeafKind};
use rha_transport::connect::{accept, dial, ConnectError, LocalInfo, Security};
use rha_transport::limit::{Limiter, Schedule};
use rha_transport::tls::{Tls, TlsError, TlsSettings, Trust};
use rha_transport::wire::{Compression, Intent};

fn ca(dir: &Path, engines: &[(&str, &[&str])]) {
    make_ca(dir, "test CA", 30, false).unwrap();
    for (name, sans) in engines {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        make_leaf(dir, dir, name, &sans, LeafKind::Engine, 30, false).unwrap();
    }
}

fn tls(dir: &Path, name: &str) -> Security {
    Security::Tls(Arc::new(
        Tls::load(&TlsSettings::in_dir(dir, name)).unwrap(),
    ))
}

fn local(name: &str) -> LocalInfo {
    LocalInfo {
        name: name.into(),
        compression: vec![Compression::Lz4, Compression::None],
    }
}

fn limiter() -> Arc<Limiter> {
    Arc::new(Limiter::new(Schedule::unlimited()))
}

/// Runs one accept on 127.0.0.1 with `server` and one dial with `client`;
/// returns both outcomes (the accepted side's peer names on success).
async fn pair(
    server: Security,
    client: Security,
    host: &str,
) -> (
    Result<Vec<String>, ConnectError>,
    Result<Vec<String>, ConnectError>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(tcp, &server, &local("server"), limiter())
            .await
            .map(|a| a.link.peer().cert_names.clone())
    });
    let addr = format!("{host}:{port}");
    let cli = dial(
        &addr,
        &client,
        &local("client"),
        Intent::Operator,
        limiter(),
    )
    .await
    .map(|(l, _)| l.peer().cert_names.clone());
    let srv = srv.await.unwrap();
    (srv, cli)
}

#[tokio::test]
async fn same_ca_both_sides_authenticated() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &[("server", &["127.0.0.1"]), ("client", &[])]);
    let (s, c) = pair(
        tls(t.path(), "server"),
        tls(t.path(), "client"),
        "127.0.0.1",
    )
    .await;
    let server_saw = s.unwrap();
    let client_saw = c.unwrap();
    assert!(server_saw.contains(&"client".to_string()), "{server_saw:?}");
    assert!(
        client_saw.contains(&"server".to_string()) && client_saw.contains(&"127.0.0.1".to_string()),
        "{client_saw:?}"
    );
}

#[tokio::test]
async fn another_ca_is_refused_on_both_sides() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    ca(a.path(), &[("server", &["127.0.0.1"])]);
    ca(b.path(), &[("client", &[])]);
    let (s, c) = pair(
        tls(a.path(), "server"),
        tls(b.path(), "client"),
        "127.0.0.1",
    )
    .await;
    let c = c.unwrap_err().to_string();
    assert!(c.contains("not signed by our CA"), "{c}");
    // The server never saw a TLS handshake finish.
    assert!(s.is_err());
}

#[tokio::test]
async fn client_from_another_ca_is_refused_by_the_server() {
    let a = tempfile::tempdir().unwrap();
    ca(a.path(), &[("server", &["127.0.0.1"])]);
    // The client trusts the server's CA but its own certificate comes from elsewhere.
    let b = tempfile::tempdir().unwrap();
    ca(b.path(), &[("client", &[])]);
    let settings = TlsSettings {
        cert: b.path().join("client.pem"),
        key: b.path().join("client.key"),
        trust: Trust::Ca {
            ca: a.path().join("ca.pem"),
        },
    };
    let client = Security::Tls(Arc::new(Tls::load(&settings).unwrap()));
    let (s, c) = pair(tls(a.path(), "server"), client, "127.0.0.1").await;
    let s = s.unwrap_err().to_string();
    assert!(s.contains("not signed by our CA"), "{s}");
    assert!(c.is_err(), "the client must not get a session");
}

#[tokio::test]
async fn a_certificate_that_does_not_name_the_host_is_refused() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &[("server", &[]), ("client", &[])]);
    let (_, c) = pair(
        tls(t.path(), "server"),
        tls(t.path(), "client"),
        "127.0.0.1",
    )
    .await;
    let c = c.unwrap_err().to_string();
    assert!(
        c.contains("does not name the host") && c.contains("--san"),
        "{c}"
    );
}

#[tokio::test]
async fn pinned_certificates() {
    let t = tempfile::tempdir().unwrap();
    ca(
        t.path(),
        &[("server", &[]), ("client", &[]), ("other", &[])],
    );
    let pinned = |me: &str, peer: &str| {
        Security::Tls(Arc::new(
            Tls::load(&TlsSettings {
                cert: t.path().join(format!("{me}.pem")),
                key: t.path().join(format!("{me}.key")),
                trust: Trust::Pinned {
                    peers: vec![t.path().join(format!("{peer}.pem"))],
                },
            })
            .unwrap(),
        ))
    };
    // Pinning does not need the host name in the certificate.
    let (s, c) = pair(
        pinned("server", "client"),
        pinned("client", "server"),
        "127.0.0.1",
    )
    .await;
    s.unwrap();
    c.unwrap();
    let (_, c) = pair(
        pinned("server", "client"),
        pinned("client", "other"),
        "127.0.0.1",
    )
    .await;
    let c = c.unwrap_err().to_string();
    assert!(c.contains("not one of the pinned certificates"), "{c}");
}

#[tokio::test]
async fn tls_on_one_side_only() {
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &[("server", &["127.0.0.1"]), ("client", &[])]);
    let (s, c) = pair(
        tls(t.path(), "server"),
        Security::InsecurePlaintext,
        "127.0.0.1",
    )
    .await;
    let s = s.unwrap_err().to_string();
    assert!(s.contains("does not speak TLS"), "{s}");
    let c = c.unwrap_err().to_string();
    assert!(
        c.contains("TLS"),
        "the plaintext side should recognise a TLS alert: {c}"
    );
    let started = std::time::Instant::now();
    let (s, c) = pair(
        Security::InsecurePlaintext,
        tls(t.path(), "client"),
        "127.0.0.1",
    )
    .await;
    let s = s.unwrap_err().to_string();
    assert!(
        s.contains("TLS"),
        "the plaintext side should recognise a TLS hello: {s}"
    );
    assert!(c.is_err());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "a TLS hello on a plaintext port must be refused at once, not waited for"
    );
}

#[test]
fn bad_key_files_are_refused_with_the_cause() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    ca(t.path(), &[("a", &[]), ("b", &[])]);
    // A key readable by others.
    let key = t.path().join("a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Tls::load(&TlsSettings::in_dir(t.path(), "a")).unwrap_err();
    assert!(matches!(e, TlsError::KeyExposed { .. }), "{e}");
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The key of another certificate.
    let wrong = TlsSettings {
        key: t.path().join("b.key"),
        ..TlsSettings::in_dir(t.path(), "a")
    };
    let e = Tls::load(&wrong).unwrap_err();
    assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    // A missing certificate names the file and the command that makes one.
    let e = Tls::load(&TlsSettings::in_dir(t.path(), "nobody"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nobody.pem") && e.contains("rha cert"), "{e}");
    // Not a certificate at all.
    std::fs::write(t.path().join("junk.pem"), "hello").unwrap();
    std::fs::copy(t.path().join("a.key"), t.path().join("junk.key")).unwrap();
    let e = Tls::load(&TlsSettings::in_dir(t.path(), "junk")).unwrap_err();
    assert!(matches!(e, TlsError::Empty { .. }), "{e}");
    // Debug never shows key material.
    let ok = Tls::load(&TlsSettings::in_dir(t.path(), "a")).unwrap();
    assert!(!format!("{ok:?}").contains("PRIVATE"));
}
