"""Azure page-blob replicas on the Azurite emulator: bookmarks and recovery points."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

import pytest

import rha

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def azurite_blob() -> Optional[str]:
    """azurite-blob as scripts/test.sh installs it (target/azurite), or from RHA_AZURITE_BLOB or PATH."""
    candidates = [os.environ.get("RHA_AZURITE_BLOB", "")]
    for target in (os.environ.get("CARGO_TARGET_DIR", ""), str(ROOT / "target")):
        if target:
            candidates.append(os.path.join(target, "azurite", "node_modules", ".bin", "azurite-blob"))
    candidates.append(shutil.which("azurite-blob") or "")
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = azurite_blob()
    if binary is None:
        pytest.skip("azurite-blob is not installed (scripts/test.sh installs it into target/azurite)")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    run = tmp_path_factory.mktemp("azurite")
    p = subprocess.Popen(
        [binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"],
        cwd=run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert p.poll() is None, "azurite exited"
                assert time.monotonic() < deadline, "azurite did not start within 60 s"
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        p.terminate()
        p.wait(timeout=10)


def test_bookmarks_become_recovery_points(azurite: str) -> None:
    store = rha.BlobStore("pytest", emulator=azurite)
    assert store.url.endswith("/pytest") and "pytest" in repr(store)
    with rha.PageBlobReplica.create(store, "web01-ha", "appliance", [4 * MIB, 2 * MIB]) as replica:
        assert len(replica.disk_urls) == 2
        now = replica.bookmark("before-upgrade", 0)  # the replica has applied exactly 0: taken now
        assert now is not None and now.name == "before-upgrade" and now.seq == 0
        assert replica.bookmark("later", 10) is None  # still ahead: taken when a batch reaches it
        taken = replica.create_recovery_point("manual")
        points = replica.recovery_points()
        assert [p.name for p in points] == ["before-upgrade", "manual"]
        assert replica.resolve_point("before-upgrade") == now
        assert replica.resolve_point(taken.id) == taken
        assert replica.resolve_point("seq:0").seq == 0
        d = now.to_dict()
        assert d["name"] == "before-upgrade" and len(d["disks"]) == 2 and "snapshot=" in d["disks"][0]["url"]
        assert now.created_ms > 0 and isinstance(now.consistent, bool) and "before-upgrade" in repr(now)
        with pytest.raises(rha.CloudError, match="nope"):
            replica.resolve_point("nope")
        replica.delete_recovery_point(taken)
        assert [p.name for p in rha.recovery_points(store, "web01-ha")] == ["before-upgrade"]
    with pytest.raises(rha.StateError, match="closed"):
        replica.recovery_points()
    with pytest.raises(rha.CloudError):
        rha.PageBlobReplica.create(store, "web01-ha", "appliance", [MIB])  # exists already
    with rha.PageBlobReplica.open(store, "web01-ha", "appliance") as again:
        assert [p.name for p in again.recovery_points()] == ["before-upgrade"]


def test_blob_store_arguments_are_checked() -> None:
    with pytest.raises(rha.ValidationError, match="emulator"):
        rha.BlobStore("c")
    with pytest.raises(rha.ValidationError, match="host:port"):
        rha.BlobStore("c", emulator="nowhere")
