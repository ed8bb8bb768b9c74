//! The body of the `nbd_server` fuzz target (`fuzz/fuzz_targets/nbd_server.rs`).
//!
//! It lives in the library so that `cargo test` compiles it and runs it on
//! the committed seeds (`fuzz/corpus/nbd_server/`) and on the property
//! tests' inputs; the fuzz target only calls [`fuzz_server_input`].

use super::negotiate::{ExportInfo, Negotiation, Next, TlsMode};
use super::proto::*;

/// What [`fuzz_server_input`] got through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FuzzOutcome {
    /// Options answered.
    pub options: usize,
    /// Whether the input reached the transmission phase.
    pub transmission: bool,
    /// Requests decoded in transmission.
    pub requests: usize,
    /// Requests [`check_request`] accepted.
    pub accepted: usize,
}

/// Feeds arbitrary bytes, as a client would send them, through the
/// server's pure decoders and negotiation: client flags, option requests
/// (answered by a [`Negotiation`] over two exports, TLS off), then
/// transmission requests with their write payloads. Checks that nothing
/// panics, that every decoded option and request re-encodes to the bytes
/// it came from, that every reply the negotiation writes decodes as option
/// replies, and that an accepted request lies inside its export, aligned
/// and within the payload limit.
pub fn fuzz_server_input(data: &[u8]) -> FuzzOutcome {
    let mut out = FuzzOutcome::default();
    let exports = vec![
        ExportInfo {
            name: "disk".into(),
            description: "fuzz".into(),
            size: 1 << 20,
            read_only: false,
        },
        ExportInfo {
            name: "ro".into(),
            description: String::new(),
            size: 64 << 10,
            read_only: true,
        },
    ];
    let Some(flags) = data.get(..4) else {
        return out;
    };
    let offered = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;
    let mut b4 = [0u8; 4];
    b4.copy_from_slice(flags);
    let Ok(client) = decode_client_flags(b4, offered) else {
        return out;
    };
    let mut neg = Negotiation::new(TlsMode::Off, client);
    let mut rest = &data[4..];
    let mut reply = Vec::new();
    let agreed = loop {
        let header = match decode_option_header(rest) {
            Ok(Some(h)) => h,
            Ok(None) | Err(_) => return out,
        };
        rest = &rest[OPTION_HEADER_BYTES..];
        reply.clear();
        let next = if header.len > MAX_OPTION_BYTES {
            neg.too_big(header, &mut reply)
        } else {
            let Some(body) = rest.get(..header.len as usize) else {
                return out;
            };
            rest = &rest[header.len as usize..];
            let request = decode_option(header.option, body);
            if let Ok(r) = &request {
                if !matches!(r, OptionRequest::Unknown(_)) {
                    assert_eq!(r.option(), header.option);
                    assert_eq!(r.encode_data(), body, "option {r:?} re-encodes differently");
                }
            }
            neg.answer(header.option, request, &exports, &mut reply)
        };
        out.options += 1;
        check_replies(&reply, &next, client.no_zeroes);
        match next {
            Next::Continue => {}
            Next::StartTls | Next::Close(_) => return out,
            Next::Transmission(a) => break a,
        }
    };
    out.transmission = true;
    let limits = Limits {
        size: agreed.export.size,
        read_only: agreed.export.read_only,
        structured: agreed.structured,
    };
    loop {
        let req = match decode_request(rest) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return out,
        };
        assert_eq!(&encode_request(&req)[..], &rest[..REQUEST_BYTES]);
        rest = &rest[REQUEST_BYTES..];
        out.requests += 1;
        if req.kind == NBD_CMD_DISC {
            return out;
        }
        let accepted = check_request(&req, &limits);
        if accepted.is_ok() {
            out.accepted += 1;
            if req.kind != NBD_CMD_FLUSH {
                let end = req.offset + req.len as u64;
                assert!(end <= limits.size, "accepted {req:?} past the end");
                assert_eq!(req.offset % MIN_BLOCK_SIZE as u64, 0);
                assert_eq!(req.len % MIN_BLOCK_SIZE, 0);
            }
            if matches!(req.kind, NBD_CMD_READ | NBD_CMD_WRITE) {
                assert!(req.len <= MAX_PAYLOAD);
            }
        }
        if req.kind == NBD_CMD_WRITE {
            // The payload follows, accepted or not.
            match rest.get(req.len as usize..) {
                Some(r) => rest = r,
                None => return out,
            }
        }
    }
}

/// The reply bytes of one option decode as whole option replies (or, for
/// `NBD_OPT_EXPORT_NAME`, as its fixed-size reply).
fn check_replies(reply: &[u8], next: &Next, no_zeroes: bool) {
    if let Next::Transmission(a) = next {
        if !reply.starts_with(&OPTION_REPLY_MAGIC.to_be_bytes()) {
            let zeroes = if no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
            assert_eq!(reply.len(), 10 + zeroes);
            assert_eq!(&reply[..8], &a.export.size.to_be_bytes());
            return;
        }
    }
    let mut b = reply;
    while !b.is_empty() {
        match decode_option_reply(b) {
            Ok(Some((_, n))) => b = &b[n..],
            other => panic!("the server wrote an undecodable option reply: {other:?}"),
        }
    }
}
