//! Test support shared by the tests that start QEMU tools on unix sockets.

use std::path::Path;
use std::time::{Duration, Instant};

/// Waits until a unix socket at `sock` is listening. The file appears at
/// bind(), a moment before listen(): a client that connects in between is
/// refused. /proc/net/unix marks a listening socket with flag `00010000`;
/// probing it with a connection instead would use up a one-client server.
pub fn wait_listening(sock: &Path, what: &str) {
    let started = Instant::now();
    let path = sock.to_string_lossy().into_owned();
    loop {
        let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        let listening = table.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 8 && f[3] == "00010000" && f[7] == path
        });
        if listening {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what} did not listen on {path}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
