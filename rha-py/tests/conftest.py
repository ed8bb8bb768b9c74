"""Fixtures of the rha Python tests: real image files, certificates, engines on loopback."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import rha

MIB = 1 << 20


def python_child(*args: str) -> "subprocess.Popen[str]":
    """Starts `python -c ...` with its stdout piped and SIGINT at its
    default, so that the child turns Ctrl-C into KeyboardInterrupt even
    when the tests run as a background job (which inherit SIGINT ignored)."""
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def make_ext4(path: Path, mib: int, files: Path) -> None:
    """An image holding an ext4 filesystem made from ``files`` (random data without mkfs.ext4)."""
    files.mkdir(parents=True, exist_ok=True)
    (files / "hello.txt").write_text("hello from the master\n")
    (files / "blob.bin").write_bytes(os.urandom(MIB))
    if shutil.which("mkfs.ext4"):
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(files), str(path), f"{mib}M"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    else:
        make_sparse(path, mib, every=16)


def make_sparse(path: Path, mib: int, every: int = 32) -> None:
    """A sparse raw image with a random 4 KiB block every ``every`` blocks."""
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        for block in range(0, mib * MIB // 4096, every):
            f.seek(block * 4096)
            f.write(os.urandom(4096))


def write_at(path: Path, offset: int, data: bytes) -> None:
    """Writes ``data`` at ``offset`` of an image, durably."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at(path: Path, offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset`` of a file."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def _example() -> Any:
    """examples/replicate_local.py as a module: the tests share its helpers."""
    path = Path(__file__).resolve().parents[2] / "examples" / "replicate_local.py"
    spec = importlib.util.spec_from_file_location("replicate_local", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EXAMPLE = _example()
same_data: Callable[[Path, Path], bool] = EXAMPLE.same_data
"""Whether a replica (raw, or a fixed VHD: data then footer) holds its master's bytes."""


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, engine certificates ``master`` and ``appliance`` for 127.0.0.1, an operator."""
    d = tmp_path_factory.mktemp("certs")
    rha.cert_ca(d, "rha pytest CA", days=2)
    for name in ("master", "appliance"):
        rha.cert_engine(d, name, ["127.0.0.1"], days=2)
    rha.cert_operator(d, "operator", days=2)
    return d


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[Tuple[rha.Engine, rha.Engine]]:
    """Two engines in this process over mutual TLS: (master, appliance)."""
    d = tmp_path_factory.mktemp("engines")
    with rha.Engine("master", d / "master", certs=certs) as master, rha.Engine(
        "appliance", d / "appliance", certs=certs
    ) as appliance:
        yield master, appliance


def scenario_dict(
    name: str, images: List[Path], master: rha.Engine, appliance: rha.Engine, replica_dir: Path
) -> dict:  # type: ignore[type-arg]
    """A local scenario replicating ``images`` from ``master`` to fixed VHDs in ``replica_dir``."""
    return {
        "name": name,
        "product": "ha",
        "master": {"host": "127.0.0.1", "port": master.port, "os": "linux"},
        "replica": {"local": {"appliance": "127.0.0.1", "port": appliance.port, "data_dir": str(replica_dir)}},
        "volumes": [
            {"id": f"/v{i}", "system": i == 0, "path": str(p)} for i, p in enumerate(images)
        ],
        "sync": {"method": "block"},
        "journal": {"directory": "journal", "max_size_mb": 256, "fsync": "interval", "fsync_interval_ms": 50},
        "capture": {"method": "rescan", "rescan_interval_ms": 100},
        "is_alive": {"interval_secs": 1, "timeout_secs": 10},
        "switchover": {"mode": "manual", "wait_for_journal": True},
        "vm": {"name": f"{name}-vm", "cpus": 1, "memory_mb": 512},
    }
