//! Recognising a peer that does not speak the rha protocol (or not in the
//! same way), from the first bytes it sent, for a clear log line.

use super::body::{ty, HELLO_MAGIC};

/// Says what the first bytes received on a connection look like when they
/// are not an rha frame: a TLS handshake on a plaintext port, an HTTP
/// request, SSH, a PROXY protocol header. `None` if they look like none of
/// these (an rha frame included).
///
/// Meant for the error path: when the first frame of a connection fails to
/// decode, the bytes are still in the read buffer.
pub fn sniff_foreign(first_bytes: &[u8]) -> Option<&'static str> {
    let b = first_bytes;
    // TLS record: content type 22 (handshake) or 21 (alert), version 3.x.
    if b.len() >= 3 && (b[0] == 0x16 || b[0] == 0x15) && b[1] == 0x03 && b[2] <= 0x04 {
        return Some(if b[0] == 0x16 {
            "this looks like a TLS handshake: the peer uses TLS and this side does not \
             (or the reverse): make both sides' TLS settings agree"
        } else {
            "this looks like a TLS alert: the peer uses TLS and this side does not \
             (or the reverse): make both sides' TLS settings agree"
        });
    }
    const HTTP: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"CONNECT ",
        b"PATCH ",
        b"TRACE ",
        b"HTTP/",
    ];
    if HTTP.iter().any(|m| b.starts_with(m)) {
        return Some(
            "this looks like HTTP: a web client, proxy or health check reached the rha \
             port; the rha port speaks only the rha protocol",
        );
    }
    if b.starts_with(b"SSH-") {
        return Some("this looks like SSH: the peer is an SSH client or server, not an rha engine");
    }
    if b.starts_with(b"PROXY ") || b.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
        return Some(
            "this looks like a PROXY protocol header: a load balancer in front of this \
             engine adds it; turn that off for the rha port",
        );
    }
    None
}

/// Whether `first_bytes` (at least 10 of them) start like an rha
/// connection: a frame of type Hello whose payload starts with the magic
/// `RHA\x01`. Useful to say "the peer speaks plaintext rha" when a TLS
/// handshake fails.
pub fn looks_like_rha(first_bytes: &[u8]) -> bool {
    first_bytes.len() >= 10 && first_bytes[4] == ty::HELLO && first_bytes[6..10] == HELLO_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_tls_and_http() {
        let client_hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc];
        assert!(sniff_foreign(&client_hello).unwrap().contains("TLS"));
        assert!(sniff_foreign(b"GET / HTTP/1.1\r\n")
            .unwrap()
            .contains("HTTP"));
        assert_eq!(sniff_foreign(b"RHA"), None);
        assert_eq!(sniff_foreign(&[]), None);
    }
}
