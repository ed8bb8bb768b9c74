"""rha.sync on real images: statistics, methods, errors, GIL release, Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import rha
from conftest import MIB, python_child, make_ext4, make_sparse, same_data, write_at


def test_block_sync_creates_the_replica_then_sends_only_changes(tmp_path: Path) -> None:
    src, dst = tmp_path / "system.img", tmp_path / "replica.img"
    make_ext4(src, 8, tmp_path / "files")
    first = rha.sync(src, dst)
    assert isinstance(first, rha.SyncStats)
    assert first.method == "block" and first.consistent and first.passes >= 1
    assert first.volume_bytes == 8 * MIB and first.bytes_scanned == 8 * MIB
    assert first.blocks_changed > 0 and first.changed_bytes >= first.blocks_changed * 4096 // 2
    assert first.seconds > 0 and first.bytes_sent >= first.changed_bytes
    assert same_data(src, dst)
    again = rha.sync(str(src), str(dst), method="block")
    assert again.blocks_changed == 0 and again.changed_bytes == 0
    write_at(src, 5 * MIB, os.urandom(4096))
    third = rha.sync(src, dst)
    assert third.blocks_changed == 1 and third.changed_bytes == 4096
    assert same_data(src, dst)
    d = third.to_dict()
    assert d["blocks_changed"] == 1 and d["method"] == "block" and d["volume_bytes"] == 8 * MIB
    assert "blocks_changed=1" in repr(third)


def test_volume_sync_and_force_full(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.img", tmp_path / "b.img"
    make_sparse(src, 4)
    stats = rha.sync(src, dst, method="volume")
    assert stats.method == "volume" and stats.blocks_changed > 0 and same_data(src, dst)
    full = rha.sync(src, dst, method="block", force_full=True)
    assert full.blocks_changed == 0 and full.bytes_scanned == 4 * MIB


def test_sync_errors_map_to_classes(tmp_path: Path) -> None:
    src = tmp_path / "a.img"
    make_sparse(src, 2)
    with pytest.raises(rha.ValidationError, match="rsync"):
        rha.sync(src, tmp_path / "b.img", method="rsync")
    with pytest.raises(rha.SyncError, match="missing.img"):
        rha.sync(tmp_path / "missing.img", tmp_path / "b.img")
    small = tmp_path / "small.img"
    make_sparse(small, 1)
    with pytest.raises(rha.SyncError, match="at least as large"):
        rha.sync(src, small)
    assert issubclass(rha.SyncError, rha.RhaError)


def test_sync_releases_the_gil(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.img", tmp_path / "b.img"
    make_sparse(src, 256, every=4)
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    started = time.monotonic()
    rha.sync(src, dst, method="block")
    elapsed = time.monotonic() - started
    done.set()
    t.join()
    # Python code kept running meanwhile (a held GIL would allow about none).
    assert ticks > min(20, elapsed * 200), (ticks, elapsed)


CTRL_C = """
import os, sys, time, rha
src, dst = sys.argv[1], sys.argv[2]
print("ready", flush=True)
started = time.monotonic()
try:
    rha.sync(src, dst, method="block", force_full=True)
    print("finished", flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f}", flush=True)
"""


def test_ctrl_c_interrupts_a_long_sync(tmp_path: Path) -> None:
    src, dst = tmp_path / "big.img", tmp_path / "big-replica.img"
    with open(src, "wb") as f:
        f.truncate(64 << 30)  # sparse: hashing 2 x 64 GiB of holes takes far longer than 0.5 s
    p = python_child("-c", CTRL_C, str(src), str(dst))
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=30)
    assert out.startswith("interrupted"), out
    assert time.monotonic() - sent < 5.0
