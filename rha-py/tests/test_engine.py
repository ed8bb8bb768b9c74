"""Engines in process, the control API over TLS, events (blocking and asyncio), switchover."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

import rha
from conftest import MIB, python_child, make_ext4, make_sparse, read_at, same_data, scenario_dict, write_at

Engines = Tuple[rha.Engine, rha.Engine]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def kinds_until(events: rha.Events, last: str, timeout: float = 90.0) -> List[rha.Event]:
    """Events up to and including the first of kind ``last``."""
    seen: List[rha.Event] = []
    deadline = time.monotonic() + timeout
    while True:
        ev = events.next(timeout=max(0.1, deadline - time.monotonic()))
        assert ev is not None, f"no {last} within {timeout} s; saw {[e.kind for e in seen]}"
        seen.append(ev)
        assert ev.kind != "error", ev.message
        if ev.kind == last:
            return seen


def test_engines_answer_ping_in_process_and_over_tls(engines: Engines, certs: Path) -> None:
    master, appliance = engines
    assert master.name == "master" and appliance.name == "appliance"
    assert master.address is not None and master.address.startswith("127.0.0.1:")
    assert master.port == int(master.address.split(":")[1])
    assert master.ping()["name"] == "master"
    assert appliance.request({"command": "ping"})["ok"] is True
    assert appliance.address is not None
    with rha.Client(appliance.address, certs=certs) as client:
        assert client.engine_name == "appliance" and client.address == appliance.address
        assert client.ping()["name"] == "appliance"
        assert "appliance" in repr(client)
        d = client.discover()
        assert d["name"] == "appliance" and "free_bytes" in d
    assert "master" in repr(master)


def test_replicate_follow_events_and_switch_over(engines: Engines, certs: Path, tmp_path: Path) -> None:
    master, appliance = engines
    images = [tmp_path / "system.img", tmp_path / "data.img"]
    make_ext4(images[0], 16, tmp_path / "files")
    make_sparse(images[1], 4)
    scenario = rha.Scenario.from_dict(scenario_dict("py-sync", images, master, appliance, tmp_path / "replica"))
    assert scenario.check().ok
    assert appliance.address is not None
    events = appliance.events(scenario.name, master)
    assert events.scenario == "py-sync" and not events.closed and "py-sync" in repr(events)
    with rha.Client(appliance.address, certs=certs) as operator:
        verified = operator.verify(scenario)
        assert verified["ok"] is True
        found = master.discover(scenario)
        assert len(found["volumes"]) == 2
        assert operator.run(scenario)["state"] == "running"
        seen = kinds_until(events, "all_sync_changes_replicated")
        kinds = [e.kind for e in seen]
        assert kinds.index("sync_started") < kinds.index("sync_completed") < len(kinds) - 1, kinds
        started = seen[kinds.index("sync_started")]
        assert started.side == "master" and started.engine == "master"
        assert started.fields["method"] == "block" and started.fields["volumes"] == 2
        assert started.fields["bytes_total"] == 20 * MIB
        assert "synchronisation started" in started.message and str(started) == started.message
        assert started.time > 0 and "sync_started" in repr(started)
        assert "sync_progress" in kinds
        assert "have been replicated" in seen[-1].message

        status: Dict[str, Any] = operator.scenario_status(scenario.name)
        assert status["role"] == "replica" and status["replica"]["consistent"] is True
        disks = [Path(p) for p in status["disks"]]
        assert len(disks) == 2
        assert master.scenario_status(scenario.name)["role"] == "master"
        assert {s["name"] for s in appliance.status()["scenarios"]} >= {"py-sync"}

        change = os.urandom(16384)
        write_at(images[1], 2 * MIB, change)
        wait_for("the live write on the replica", lambda: read_at(disks[1], 2 * MIB, len(change)) == change)

        with pytest.raises(rha.StateError) as e:
            operator.run(scenario)
        assert e.value.code == "wrong_state"

        report = operator.switchover(scenario.name)["switchover"]
        assert report["consistent"] is True and report["vm_id"]
        later = kinds_until(events, "switchover_completed", timeout=30)
        assert "switchover_started" in [e.kind for e in later]
        assert operator.scenario_status(scenario.name)["state"] == "switched_over"
    events.close()
    assert events.closed and events.next(timeout=0.1) is None
    for m, r in zip(images, disks):
        assert same_data(m, r), r


def test_asyncio_iterator_follows_a_synchronisation(engines: Engines, tmp_path: Path) -> None:
    master, appliance = engines
    images = [tmp_path / "one.img"]
    make_sparse(images[0], 8)
    scenario = rha.Scenario.from_dict(scenario_dict("py-async", images, master, appliance, tmp_path / "replica"))

    async def follow() -> List[str]:
        kinds: List[str] = []
        with appliance.events(scenario.name, master) as events:
            appliance.run(scenario)
            async for ev in events:
                kinds.append(ev.kind)
                assert ev.kind != "error", ev.message
                if ev.kind == "all_sync_changes_replicated":
                    break
        return kinds

    async def main() -> Tuple[List[str], int]:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        kinds = await asyncio.wait_for(follow(), timeout=90)
        ticker.cancel()
        return kinds, ticks

    kinds, ticks = asyncio.run(main())
    assert kinds[0] == "sync_started" and kinds[-1] == "all_sync_changes_replicated", kinds
    assert ticks > 0  # the event loop kept running while the iterator waited
    stopped = appliance.stop(scenario.name)
    assert stopped["state"] == "stopped"
    vm = appliance.vm_start(scenario.name)["vm"]
    assert vm["vm_id"] and vm["consistent"] is True


def test_control_errors_map_to_classes(engines: Engines, certs: Path, tmp_path: Path) -> None:
    master, appliance = engines
    with pytest.raises(rha.StateError, match="no scenario `nope`") as e:
        appliance.status("nope")
    assert e.value.code == "no_such_scenario" and isinstance(e.value, rha.EngineError)
    with pytest.raises(rha.StateError):
        appliance.switchover("nope")
    with pytest.raises(rha.ValidationError, match="not a control request"):
        appliance.request({"command": "fly"})
    bad = rha.Scenario.template("local").to_dict()
    bad["volumes"][0]["exclude"] = True
    with pytest.raises(rha.ValidationError, match="not valid") as e2:
        appliance.run(rha.Scenario.from_dict(bad).to_toml())
    assert e2.value.code == "bad_request"

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(rha.TransportError, match="cannot connect"):
        rha.Client(f"127.0.0.1:{port}", certs=certs)
    with pytest.raises(rha.CertificateError):
        rha.Client(master.address or "", certs=certs, name="nobody")
    with pytest.raises(rha.ValidationError, match="no certificates"):
        rha.Engine("x", tmp_path / "x")
    with pytest.raises(rha.EngineError, match="cannot listen"):
        rha.Engine("master", tmp_path / "y", listen=master.address, certs=certs)
    with pytest.raises(rha.CertificateError, match="exists"):
        rha.cert_ca(certs)
    with pytest.raises(rha.CertificateError):
        rha.cert_engine(tmp_path / "no-ca", "e1")


def test_plaintext_engine_and_client(tmp_path: Path) -> None:
    with rha.Engine("plain", tmp_path / "plain", insecure_plaintext=True) as engine:
        assert engine.address is not None
        with rha.Client(engine.address, insecure_plaintext=True) as client:
            assert client.ping()["name"] == "plain"


def test_engine_without_listener(tmp_path: Path, certs: Path) -> None:
    engine = rha.Engine("master", tmp_path / "nat", listen=None, certs=certs)
    assert engine.address is None and engine.port is None
    engine.shutdown()


WAIT_FOR_EVENTS = """
import sys, time, rha
engine = rha.Engine("plain", sys.argv[1], insecure_plaintext=True)
events = engine.events("nothing-happens-here")
print("ready", flush=True)
started = time.monotonic()
try:
    for ev in events:
        print("event", ev, flush=True)
except KeyboardInterrupt:
    print(f"interrupted after {time.monotonic() - started:.2f}", flush=True)
engine.shutdown()
"""


def test_ctrl_c_interrupts_a_blocking_event_wait(tmp_path: Path) -> None:
    p = python_child("-c", WAIT_FOR_EVENTS, str(tmp_path / "e"))
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=20)
    assert out.startswith("interrupted"), out
