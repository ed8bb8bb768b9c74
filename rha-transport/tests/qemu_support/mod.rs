//! Test support shared by the tests that start QEMU tools on unix sockets
//! (rha-transport's and rha-cli's): waiting until one listens, QMP, and a
//! QEMU with no machine around one disk.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// One QMP command on `socket`; its `return` (panics on an error).
pub fn qmp(socket: &Path, command: &str, arguments: serde_json::Value) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // the greeting
    let cmd = serde_json::json!({ "execute": command, "arguments": arguments });
    s.write_all(format!("{{\"execute\":\"qmp_capabilities\"}}\n{cmd}\n").as_bytes())
        .unwrap();
    let mut answers = 0;
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "QEMU closed QMP");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "{command}: {v}");
        if let Some(ret) = v.get("return") {
            answers += 1;
            if answers == 2 {
                return ret.clone();
            }
        }
    }
}

/// A QEMU with no machine, the qcow2 as a block node `disk0` and a QMP socket.
pub struct Vm {
    pub child: Child,
    pub qmp: PathBuf,
}

impl Vm {
    pub fn start(img: &Path, qmp: &Path) -> Vm {
        let child = Command::new("qemu-system-x86_64")
            .args(["-machine", "none", "-nodefaults", "-display", "none"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-blockdev")
            .arg(format!(
                "driver=qcow2,node-name=disk0,file.driver=file,file.filename={}",
                img.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(qmp, "qemu-system-x86_64 (QMP)");
        Vm {
            child,
            qmp: qmp.to_path_buf(),
        }
    }

    /// Runs one QMP command; returns its `return` (panics on an error).
    pub fn qmp(&self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        qmp(&self.qmp, command, arguments)
    }

    /// Starts QEMU's own NBD server on unix socket `sock` and exports
    /// `disk0` as `disk`, writable, with `bitmap` (QEMU refuses an enabled
    /// bitmap on a read-only export), under export id `id`.
    pub fn export_with_bitmap(&self, sock: &Path, id: &str, bitmap: &str) {
        self.qmp(
            "nbd-server-start",
            serde_json::json!({ "addr": { "type": "unix", "data": { "path": sock } } }),
        );
        self.qmp(
            "block-export-add",
            serde_json::json!({ "type": "nbd", "id": id, "node-name": "disk0",
                                "name": "disk", "bitmaps": [bitmap], "writable": true }),
        );
    }

    /// `quit` over QMP (the bitmap is stored in the qcow2 on the way out).
    pub fn quit(mut self) {
        self.qmp("quit", serde_json::json!({}));
        let status = self.child.wait().unwrap();
        assert!(status.success(), "qemu exited with {status}");
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
