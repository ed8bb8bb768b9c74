#!/usr/bin/env python3
"""Replicates two local disk images to a replica and switches over, with rha's Python API.

    pip install ./rha-py
    python3 examples/replicate_local.py [--workdir DIR] [--system-mib 32] [--data-mib 8]

What it does, all on this machine, no cloud account:

1. makes certificates (a CA, engines ``master`` and ``appliance`` for
   127.0.0.1, an operator) and two master images: a system disk holding an
   ext4 filesystem (``mkfs.ext4 -d``, when installed) and a data disk;
2. starts two engines in this process, on loopback, over mutual TLS;
3. builds and validates the scenario, runs it on the appliance through the
   control API as an operator would, and follows its events until "all
   changes made during synchronisation have been replicated";
4. writes to the master's data disk, waits until the replica has the write,
   switches over, and checks that each replica disk equals its master.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import rha

MIB = 1 << 20


def make_images(master_dir: Path, system_mib: int, data_mib: int) -> List[Path]:
    """The master's disks: an ext4 system image (random data without mkfs.ext4) and a data image."""
    master_dir.mkdir(parents=True, exist_ok=True)
    system = master_dir / "system.img"
    files = master_dir / "files"
    (files / "etc").mkdir(parents=True, exist_ok=True)
    (files / "etc" / "hostname").write_text("rha-python-master\n")
    (files / "blob.bin").write_bytes(os.urandom(2 * MIB))
    if shutil.which("mkfs.ext4"):
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(files), str(system), f"{system_mib}M"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        with open(system, "wb") as f:
            f.truncate(system_mib * MIB)
            f.write(os.urandom(2 * MIB))
    data = master_dir / "data.img"
    with open(data, "wb") as f:
        f.truncate(data_mib * MIB)
        for block in range(0, data_mib * MIB, 64 * 4096):
            f.seek(block)
            f.write(os.urandom(4096))
    return [system, data]


def scenario_for(images: List[Path], master_port: int, appliance_port: int, replica_dir: Path) -> rha.Scenario:
    """The scenario: both images, replicated to fixed VHDs in ``replica_dir``, manual switchover."""
    return rha.Scenario.from_dict(
        {
            "name": "python-demo",
            "product": "ha",
            "master": {"host": "127.0.0.1", "port": master_port, "os": "linux"},
            "replica": {
                "local": {"appliance": "127.0.0.1", "port": appliance_port, "data_dir": str(replica_dir)}
            },
            "volumes": [
                {"id": "/", "system": True, "path": str(images[0])},
                {"id": "/data", "system": False, "path": str(images[1])},
            ],
            "sync": {"method": "block"},
            "journal": {"directory": "journal", "max_size_mb": 256, "fsync": "interval", "fsync_interval_ms": 50},
            "capture": {"method": "rescan", "rescan_interval_ms": 200},
            "is_alive": {"interval_secs": 1, "timeout_secs": 10},
            "switchover": {"mode": "manual", "wait_for_journal": True},
            "vm": {"name": "python-demo-vm", "cpus": 1, "memory_mb": 512},
        }
    )


def same_data(master: Path, replica: Path) -> bool:
    """Whether the replica (a fixed VHD: the data, then a footer) holds the master's bytes."""
    size = master.stat().st_size
    with open(master, "rb") as a, open(replica, "rb") as b:
        while size > 0:
            n = min(size, 4 * MIB)
            if a.read(n) != b.read(n):
                return False
            size -= n
    return True


def wait_for(what: str, check: Any, timeout: float = 60.0) -> None:
    """Polls ``check()`` until it is true; raises TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to put everything (default: a new temporary directory)")
    parser.add_argument("--system-mib", type=int, default=32)
    parser.add_argument("--data-mib", type=int, default=8)
    args = parser.parse_args(argv)
    work: Path = args.workdir or Path(tempfile.mkdtemp(prefix="rha-py-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"rha {rha.__version__}: replicating in {work}")

    certs = work / "certs"
    rha.cert_ca(certs, "rha python example CA", days=2, force=True)
    for engine in ("master", "appliance"):
        rha.cert_engine(certs, engine, ["127.0.0.1"], days=2, force=True)
    rha.cert_operator(certs, "operator", days=2, force=True)
    images = make_images(work / "master", args.system_mib, args.data_mib)

    with rha.Engine("master", work / "master-engine", certs=certs) as master, rha.Engine(
        "appliance", work / "appliance-engine", certs=certs
    ) as appliance:
        assert master.port is not None and appliance.port is not None and appliance.address is not None
        scenario = scenario_for(images, master.port, appliance.port, work / "replica")
        for finding in scenario.check().findings:
            print(f"  {finding}")
        # Subscribe before running: the stream follows both sides of the scenario.
        events = appliance.events(scenario.name, master)
        with rha.Client(appliance.address, certs=certs) as operator:
            operator.run(scenario)
            print(f"scenario {scenario.name} running on {operator.engine_name}")
            for event in events:
                if event.kind != "sync_progress":
                    print(f"  [{event.side}] {event.message}")
                if event.kind == "error":
                    raise rha.RhaError(event.message)
                if event.kind == "all_sync_changes_replicated":
                    break

            status: Dict[str, Any] = operator.scenario_status(scenario.name)
            disks = [Path(p) for p in status["disks"]]
            change = os.urandom(8192)
            fd = os.open(images[1], os.O_WRONLY)
            try:
                os.pwrite(fd, change, 3 * MIB)
                os.fsync(fd)
            finally:
                os.close(fd)

            def replicated() -> bool:
                with open(disks[1], "rb") as f:
                    f.seek(3 * MIB)
                    return f.read(len(change)) == change

            wait_for("the live write reaching the replica", replicated)
            print("a live write to the data disk reached the replica")

            report: Dict[str, Any] = operator.switchover(scenario.name)["switchover"]
            print(
                f"switched over: VM {report['vm_id']} from recovery point {report['recovery_point_seq']} "
                f"(consistent: {report['consistent']})"
            )
            while (later := events.next(timeout=1.0)) is not None:
                if later.kind.startswith("switchover"):
                    print(f"  [{later.side}] {later.message}")
            events.close()

    for m, r in zip(images, disks):
        if not same_data(m, r):
            print(f"error: replica {r} differs from master {m}", file=sys.stderr)
            return 1
        print(f"replica {r} equals master {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
