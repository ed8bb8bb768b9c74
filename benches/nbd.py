#!/usr/bin/env python3
"""Throughput of a VM's disk writes through rha's NBD export, with
replication running, against qemu-nbd serving a copy of the same image
without replication, in the same go and with the same load:

- sequential 1 MiB writes: ``qemu-img bench -w -s 1M -d 16``;
- random 4 KiB writes: ``qemu-io`` reading a generated script of
  ``aio_write`` commands at random 4 KiB-aligned offsets, 32 in flight
  (``aio_flush`` after each group waits for them), then a ``flush``.

rha side: a master engine (``--nbd-listen``) and an appliance engine on
loopback over mutual TLS, a scenario with ``[capture] method = "nbd"``
(journal ``fsync = "interval"``), synchronised before the load starts; the
load writes into ``nbd://.../bench/disk`` while the master journals and
ships every write. At the end it waits until the replica has applied every
write and compares the replica VHD with the master image (qemu-img compare).

Prints both figures and the ratio per load (target: rha at least 70% of
qemu-nbd). Installs nothing: it names what is missing and stops.

    python3 benches/nbd.py [--rha target/release/rha] [--work DIR] [--size-mib 1024]
                           [--loads seq,random] [--appliance-data DIR] [--fsync interval]
                           [--memory-mb N]
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def need(tool):
    if shutil.which(tool) is None:
        sys.exit(f"benches/nbd.py: `{tool}` is needed (apt-get install qemu-utils)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, secs=20):
    t = time.time()
    while time.time() - t < secs:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on port {port}")


class Rha:
    def __init__(self, exe, certs):
        self.exe = exe
        self.certs = certs

    def run(self, *args, check=True):
        out = subprocess.run([self.exe, *args, "--certs", str(self.certs)],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"rha {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def engine(self, name, data, extra, log):
        p = subprocess.Popen(
            [self.exe, "engine", "--name", name, "--as", name, "--no-qemu", "--print-addr",
             "--data", str(data), "--certs", str(self.certs), *extra],
            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
            env={**os.environ, "RHA_LOG": "warn"})
        line = p.stdout.readline().strip()
        if not line.startswith("listening "):
            sys.exit(f"engine {name} did not start: {line} (log {log})")
        return p, line.split()[1]

    def status(self, engine, name):
        out = self.run("scenario", "status", name, "--engine", engine, "--json")
        return json.loads(out)["scenarios"][0]


def bench_seq(url, mib):
    t = time.perf_counter()
    out = subprocess.run(["qemu-img", "bench", "-f", "raw", "-w", "-s", "1M", "-d", "16",
                          "-c", str(mib), url], capture_output=True, text=True)
    dt = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"qemu-img bench: {out.stderr}")
    return mib / dt  # MiB/s


def random_script(size, count, seed):
    rnd = random.Random(seed)
    lines = []
    blocks = size // 4096
    for i in range(count):
        lines.append(f"aio_write -P {i % 255 + 1} {rnd.randrange(blocks) * 4096} 4k")
        if i % 32 == 31:
            lines.append("aio_flush")
    lines += ["aio_flush", "flush", "quit"]
    return "\n".join(lines) + "\n"


def bench_random(url, script, count):
    t = time.perf_counter()
    out = subprocess.run(["qemu-io", "-f", "raw", url], input=script,
                         capture_output=True, text=True)
    dt = time.perf_counter() - t
    if out.returncode != 0 or "failed" in out.stdout + out.stderr:
        sys.exit(f"qemu-io: {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return count / dt  # IOPS


def main():
    ap = argparse.ArgumentParser()
    default = ROOT / "target/release/rha"
    if not default.exists():
        default = ROOT / "target/debug/rha"
    ap.add_argument("--rha", default=str(default))
    ap.add_argument("--work", default=None)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seq-mib", type=int, default=1024, help="MiB written by the sequential load")
    ap.add_argument("--random-writes", type=int, default=40000)
    ap.add_argument("--rounds", type=int, default=2, help="each load runs this many times per side; the best counts")
    ap.add_argument("--loads", default="seq,random",
                    help="comma-separated loads to run (seq, random); the verdict needs both")
    ap.add_argument("--fsync", default="interval", choices=["interval", "never", "always"],
                    help="the scenario's journal fsync policy (default interval, as the README recommends)")
    ap.add_argument("--memory-mb", type=int, default=None,
                    help="the scenario's journal memory_mb (default: the scenario's default, 64)")
    ap.add_argument("--appliance-data", default=None,
                    help="the appliance's data directory (default: inside --work); e.g. a tmpfs, "
                         "to see how much of the figure the appliance's own I/O costs")
    args = ap.parse_args()
    for t in ["qemu-img", "qemu-io", "qemu-nbd"]:
        need(t)
    work = Path(args.work or tempfile.mkdtemp(prefix="rha-nbd-bench-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    size = args.size_mib << 20
    rha = Rha(args.rha, work / "certs")
    d = str(work / "certs")
    subprocess.run([args.rha, "cert", "ca", "--dir", d], check=True, capture_output=True)
    for n in ["master", "appliance"]:
        subprocess.run([args.rha, "cert", "engine", "--dir", d, "--name", n, "--san", "127.0.0.1"],
                       check=True, capture_output=True)
    subprocess.run([args.rha, "cert", "operator", "--dir", d], check=True, capture_output=True)

    img = work / "disk.img"
    copy = work / "copy" / "disk.img"
    copy.parent.mkdir()
    # Both images fully written (as a used disk is), so neither side pays
    # for block allocation that the other does not: shutil.copy of a sparse
    # file writes every block of the copy, which left the two unequal.
    zeros = bytes(4 << 20)
    for path in (img, copy):
        with open(path, "wb") as f:
            for _ in range(size // len(zeros)):
                f.write(zeros)
            f.truncate(size)
            os.fsync(f.fileno())

    procs = []
    try:
        m, maddr = rha.engine("master", work / "m",
                              ["--listen", "127.0.0.1:0", "--nbd-listen", "127.0.0.1:0", "--nbd-plaintext"],
                              work / "m.log")
        procs.append(m)
        adata = Path(args.appliance_data) / "rha-nbd-bench-appliance" if args.appliance_data else work / "a"
        if adata.exists():
            shutil.rmtree(adata)
        a, aaddr = rha.engine("appliance", adata, ["--listen", "127.0.0.1:0"], work / "a.log")
        procs.append(a)
        scenario = work / "bench.toml"
        scenario.write_text(f'''name = "bench"
product = "replication"

[master]
host = "127.0.0.1"
port = {maddr.rsplit(":", 1)[1]}
os = "linux"

[replica.local]
appliance = "127.0.0.1"
port = {aaddr.rsplit(":", 1)[1]}
data_dir = "replicas/bench"

[[volumes]]
id = "/"
system = true
path = "{img}"

[journal]
directory = "journal"
max_size_mb = 4096
fsync = "{args.fsync}"
fsync_interval_ms = 100
{"" if args.memory_mb is None else f"memory_mb = {args.memory_mb}"}

[capture]
method = "nbd"

[vm]
name = "bench-vm"
cpus = 1
memory_mb = 512
''')
        rha.run("scenario", "run", str(scenario), "--timeout-secs", "600")
        addr_file = work / "m" / "nbd.addr"
        for _ in range(200):
            if addr_file.exists():
                break
            time.sleep(0.05)
        rha_url = f"nbd://{addr_file.read_text().strip()}/bench/disk"

        qport = free_port()
        q = subprocess.Popen(["qemu-nbd", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", str(qport),
                              "-t", "--cache=writeback", "--aio=threads", str(copy)],
                             stderr=open(work / "qemu-nbd.log", "w"))
        procs.append(q)
        wait_port(qport)
        q_url = f"nbd://127.0.0.1:{qport}/disk"

        script = random_script(size, args.random_writes, 1234)
        results = {}
        loads = [x for x in args.loads.split(",") if x]
        unknown = set(loads) - {"seq", "random"}
        if unknown:
            sys.exit(f"--loads: unknown load(s) {', '.join(sorted(unknown))}; use seq and/or random")
        for load in loads:
            for side, url in [("qemu-nbd", q_url), ("rha", rha_url)]:
                best = 0.0
                for n in range(args.rounds):
                    # On stderr, so that a profiler can be pointed at one phase.
                    print(f"{time.strftime('%H:%M:%S')} {load} load, {side}, round {n + 1}",
                          file=sys.stderr, flush=True)
                    if load == "seq":
                        v = bench_seq(url, args.seq_mib)
                    else:
                        v = bench_random(url, script, args.random_writes)
                    best = max(best, v)
                results[(load, side)] = best

        # Everything written must reach the replica, equal to the master.
        t = time.time()
        while True:
            s = rha.status(aaddr, "bench")
            if s.get("lag", {}).get("records") == 0 and s.get("state") == "replicating":
                break
            if time.time() - t > 600:
                sys.exit(f"the replica did not catch up: {s}")
            time.sleep(0.5)
        catch_up = time.time() - t
        rha.run("scenario", "stop", "bench", "--engine", aaddr)
        replica = next(adata.rglob("*.vhd"))
        cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc", str(img), str(replica)],
                             capture_output=True, text=True)
        same = cmp.returncode == 0
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.appliance_data and adata.exists():
            # Outside --work (a tmpfs holds it in memory): do not leave it behind.
            shutil.rmtree(adata, ignore_errors=True)

    report = {"image_mib": args.size_mib}
    ok = same
    for load, key, unit_round in [("seq", "sequential_1m_mib_per_s", 1), ("random", "random_4k_iops", 0)]:
        if load not in loads:
            continue
        q, r = results[(load, "qemu-nbd")], results[(load, "rha")]
        report[key] = {"qemu_nbd": round(q, unit_round or None), "rha": round(r, unit_round or None),
                       "ratio": round(r / q, 3)}
        ok = ok and r >= 0.7 * q
    report.update({"replica_caught_up_after_s": round(catch_up, 1),
                   "replica_equals_master": same, "rha": args.rha})
    if args.appliance_data:
        report["appliance_data"] = args.appliance_data
    report["journal_fsync"] = args.fsync
    if args.memory_mb is not None:
        report["journal_memory_mb"] = args.memory_mb
    print(json.dumps(report, indent=2))
    if set(loads) != {"seq", "random"}:
        print("target: not judged (run both loads for the verdict)")
        return 0 if same else 1
    print("target (rha >= 70% of qemu-nbd, replica equal):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
