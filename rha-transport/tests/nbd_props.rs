//! Property tests of the NBD decoders (`rha_transport::nbd::proto`):
//! requests, option requests and replies round-trip; arbitrary bytes never
//! panic a decoder or the negotiation; an accepted request always lies
//! inside its export; and the fuzz target's body on its committed seeds
//! (`fuzz/corpus/nbd_server/`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use proptest::collection::vec;
use proptest::prelude::*;
use rha_transport::nbd::fuzz_server_input;
use rha_transport::nbd::proto::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9/._-]{0,40}"
}

fn option_request() -> impl Strategy<Value = OptionRequest> {
    prop_oneof![
        name().prop_map(OptionRequest::ExportName),
        Just(OptionRequest::Abort),
        Just(OptionRequest::List),
        Just(OptionRequest::StartTls),
        Just(OptionRequest::StructuredReply),
        (name(), vec(any::<u16>(), 0..8))
            .prop_map(|(name, requests)| OptionRequest::Info(InfoRequest { name, requests })),
        (name(), vec(any::<u16>(), 0..8))
            .prop_map(|(name, requests)| OptionRequest::Go(InfoRequest { name, requests })),
        (name(), vec(name(), 0..4)).prop_map(|(name, queries)| {
            OptionRequest::ListMetaContext(MetaContextRequest { name, queries })
        }),
        (name(), vec(name(), 0..4)).prop_map(|(name, queries)| {
            OptionRequest::SetMetaContext(MetaContextRequest { name, queries })
        }),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(flags: u16, kind: u16, cookie: u64, offset: u64, len: u32) {
        let r = Request { flags, kind, cookie, offset, len };
        let b = encode_request(&r);
        prop_assert_eq!(decode_request(&b).unwrap(), Some(r));
        for cut in 0..REQUEST_BYTES {
            prop_assert_eq!(decode_request(&b[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn option_requests_round_trip(r in option_request()) {
        let data = r.encode_data();
        let mut wire = Vec::new();
        encode_option(r.option(), &data, &mut wire);
        let h = decode_option_header(&wire).unwrap().unwrap();
        prop_assert_eq!(h, OptionHeader { option: r.option(), len: data.len() as u32 });
        prop_assert_eq!(decode_option(h.option, &wire[OPTION_HEADER_BYTES..]).unwrap(), r);
    }

    #[test]
    fn option_replies_round_trip(option: u32, reply: u32, data in vec(any::<u8>(), 0..300)) {
        let mut b = Vec::new();
        encode_option_reply(option, reply, &data, &mut b);
        let (r, n) = decode_option_reply(&b).unwrap().unwrap();
        prop_assert_eq!(n, b.len());
        prop_assert_eq!(r, OptionReply { option, reply, data });
        prop_assert!(decode_option_reply(&b[..b.len() - 1]).unwrap().is_none());
    }

    #[test]
    fn reply_headers_round_trip(error: u32, cookie: u64, flags: u16, kind: u16, len: u32) {
        let s = encode_simple_reply(error, cookie);
        prop_assert_eq!(decode_reply_header(&s).unwrap(), Some(ReplyHeader::Simple { error, cookie }));
        let c = encode_chunk_header(flags, kind, cookie, len);
        prop_assert_eq!(decode_reply_header(&c).unwrap(), Some(ReplyHeader::Chunk { flags, kind, cookie, len }));
    }

    #[test]
    fn arbitrary_option_data_never_panics(option in 0u32..16, data in vec(any::<u8>(), 0..200)) {
        if let Ok(r) = decode_option(option, &data) {
            if !matches!(r, OptionRequest::Unknown(_)) {
                prop_assert_eq!(r.encode_data(), data);
            }
        }
    }

    #[test]
    fn accepted_requests_lie_inside_the_export(
        flags in 0u16..64, kind in 0u16..10, offset in prop_oneof![0u64..(1 << 22), any::<u64>()],
        len in prop_oneof![0u32..(1 << 22), any::<u32>()], size in (1u64..8192).prop_map(|s| s * 512),
        read_only: bool, structured: bool,
    ) {
        let r = Request { flags, kind, cookie: 1, offset, len };
        let limits = Limits { size, read_only, structured };
        if check_request(&r, &limits).is_ok() && !matches!(kind, NBD_CMD_FLUSH | NBD_CMD_DISC) {
            prop_assert!(offset.checked_add(len as u64).is_some_and(|e| e <= size));
            prop_assert!(len > 0 && offset % 512 == 0 && len % 512 == 0);
            prop_assert!(!(read_only && matches!(kind, NBD_CMD_WRITE | NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES)));
        }
    }

    #[test]
    fn arbitrary_client_input_never_panics(data in vec(any::<u8>(), 0..600)) {
        fuzz_server_input(&data);
    }

    #[test]
    fn mutated_seeds_never_panic(seed in 0usize..6, at: usize, byte: u8) {
        let mut s = seeds().swap_remove(seed % seeds().len()).1;
        let i = at % s.len();
        s[i] = byte;
        fuzz_server_input(&s);
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/nbd_server");
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn seed_corpus_reaches_every_phase() {
    let seeds = seeds();
    assert!(seeds.len() >= 6);
    let mut transmission = 0;
    let mut accepted = 0;
    for (name, data) in &seeds {
        let o = fuzz_server_input(data);
        assert!(o.options > 0 || o.transmission, "{name} answered no option");
        transmission += o.transmission as usize;
        accepted += o.accepted;
    }
    assert!(transmission >= 3, "too few seeds reach transmission");
    assert!(accepted >= 5, "too few seed requests are accepted");
}
