//! Shared pieces of the NBD tests: an in-process server over a tracked
//! image file, a raw client speaking the protocol byte by byte, and
//! replaying the journal to a replica.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rha_core::events::Events;
use rha_core::journal::{FsyncPolicy, JournalConfig};
use rha_core::sink::MemSink;
use rha_core::source::{ChangeSource, TrackedSet};
use rha_core::sync::{replicate_until_idle, LocalPeer};
use rha_core::volume::{FileVolume, Volume};
use rha_transport::nbd::proto::*;
use rha_transport::nbd::{NbdExport, NbdHandle, NbdServer};

pub const MIB: u64 = 1 << 20;

/// A server on 127.0.0.1 serving one tracked image as export `disk`.
pub struct Served {
    pub rt: tokio::runtime::Runtime,
    pub handle: Option<NbdHandle>,
    pub set: Arc<TrackedSet>,
    pub image: PathBuf,
    pub journal: PathBuf,
    pub port: u16,
}

impl Served {
    /// Serves a new zero-filled image of `size` bytes in `dir`.
    pub fn start(dir: &Path, size: u64) -> Served {
        let image = dir.join("disk.img");
        FileVolume::create(&image, size).unwrap();
        Served::start_on(dir, &image)
    }

    /// Serves the existing `image`.
    pub fn start_on(dir: &Path, image: &Path) -> Served {
        let volume: Arc<dyn Volume> = Arc::new(FileVolume::open(image).unwrap());
        let journal = dir.join("journal");
        let config = JournalConfig {
            fsync: FsyncPolicy::Interval(Duration::from_millis(50)),
            ..JournalConfig::default()
        };
        let (set, _) = TrackedSet::open(&journal, config, vec![volume], Events::new()).unwrap();
        let set = Arc::new(set);
        let export = NbdExport {
            name: "disk".into(),
            description: "test disk".into(),
            volume: Arc::new(set.volume(0).unwrap()),
            read_only: false,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = NbdServer::builder().export(export).build().unwrap();
        let handle = rt.block_on(server.listen("127.0.0.1:0")).unwrap();
        let port = handle.local_addr().unwrap().port();
        Served {
            rt,
            handle: Some(handle),
            set,
            image: image.to_path_buf(),
            journal,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/disk", self.port)
    }

    /// Stops the server (requests in flight are answered first).
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.rt.block_on(h.shutdown());
        }
    }

    /// Replays every journal record onto `replica` (a copy of the image
    /// as it was before the server started).
    pub fn replay_to(&self, replica: &Path) {
        let v: Arc<dyn Volume> = Arc::new(FileVolume::open(replica).unwrap());
        let sink = MemSink::with_volumes(vec![v.clone()]);
        let mut peer = LocalPeer::new(&sink);
        let at = replicate_until_idle(&*self.set, &mut peer, 4 << 20, usize::MAX, &Events::new())
            .unwrap();
        assert_eq!(at, self.set.last_seq(), "every record replayed");
        assert!(!self.set.needs_resync(), "the journal overflowed");
        v.flush().unwrap();
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `qemu-img compare` of two raw images (or NBD URLs).
pub fn qemu_compare(a: &str, b: &str) -> (bool, String) {
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", a, b])
        .output()
        .expect("qemu-img (qemu-utils) is needed; scripts/test.sh installs it");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A client that speaks NBD byte by byte, for malformed input.
pub struct RawClient {
    pub s: TcpStream,
}

impl RawClient {
    /// Connects and reads the greeting.
    pub fn connect(port: u16) -> RawClient {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = RawClient { s };
        let g = c.read_n(GREETING_BYTES);
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        c
    }

    /// Connects, sends fixed-newstyle + no-zeroes client flags.
    pub fn negotiating(port: u16) -> RawClient {
        let mut c = RawClient::connect(port);
        c.send(&(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES).to_be_bytes());
        c
    }

    /// Negotiates `disk` with NBD_OPT_GO (structured replies if asked).
    pub fn transmitting(port: u16, structured: bool) -> RawClient {
        let mut c = RawClient::negotiating(port);
        if structured {
            c.option(NBD_OPT_STRUCTURED_REPLY, &[]);
            assert_eq!(c.reply().reply, NBD_REP_ACK);
        }
        let go = OptionRequest::Go(InfoRequest {
            name: "disk".into(),
            requests: vec![NBD_INFO_BLOCK_SIZE],
        });
        c.option(NBD_OPT_GO, &go.encode_data());
        loop {
            let r = c.reply();
            if r.reply == NBD_REP_ACK {
                return c;
            }
            assert_eq!(r.reply, NBD_REP_INFO, "{r:?}");
        }
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// True if the server closed the connection (EOF or reset) before sending anything more.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        }
    }

    pub fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = Vec::new();
        encode_option(option, data, &mut b);
        self.send(&b);
    }

    pub fn reply(&mut self) -> OptionReply {
        let mut b = self.read_n(OPTION_REPLY_HEADER_BYTES);
        let len = u32::from_be_bytes(b[16..20].try_into().unwrap()) as usize;
        b.extend(self.read_n(len));
        decode_option_reply(&b).unwrap().unwrap().0
    }

    pub fn request(&mut self, kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) {
        self.send(&encode_request(&Request {
            flags,
            kind,
            cookie,
            offset,
            len,
        }));
    }

    /// Reads one simple reply: (error, cookie).
    pub fn simple(&mut self) -> (u32, u64) {
        let b = self.read_n(SIMPLE_REPLY_BYTES);
        match decode_reply_header(&b).unwrap().unwrap() {
            ReplyHeader::Simple { error, cookie } => (error, cookie),
            other => panic!("expected a simple reply, got {other:?}"),
        }
    }

    /// Reads one structured chunk: (flags, type, cookie, payload).
    pub fn chunk(&mut self) -> (u16, u16, u64, Vec<u8>) {
        let b = self.read_n(CHUNK_HEADER_BYTES);
        match decode_reply_header(&b).unwrap().unwrap() {
            ReplyHeader::Chunk {
                flags,
                kind,
                cookie,
                len,
            } => (flags, kind, cookie, self.read_n(len as usize)),
            other => panic!("expected a structured chunk, got {other:?}"),
        }
    }
}

/// A deterministic pseudo-random generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
