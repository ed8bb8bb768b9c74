"""rha: continuous block-level full-system replication, from Python.

A thin layer over the Rust library (the native module ``rha._rha``):

- :class:`Scenario` — load, build (``from_dict``) and validate scenarios;
  ``validate()`` returns :class:`Validation` with :class:`Finding` objects
  (``severity``, ``path``, ``message``).
- :func:`sync` — offline synchronisation of two images, returning
  :class:`SyncStats`.
- :class:`Engine` — an engine in this process (``rha engine``);
  :class:`Client` — an operator's TLS connection to a remote engine. Both
  run, stop and query scenarios and switch over through the control API.
- :class:`Events` — a scenario's events, as a blocking iterator and as an
  asyncio async iterator.
- :class:`CloudAccount` and :class:`AccountStore` — cloud accounts (the
  secret never shows in a ``repr``).
- :class:`BlobStore`, :class:`PageBlobReplica` — Azure replicas of page
  blobs: bookmarks and :class:`RecoveryPoint`\ s (:func:`recovery_points`).
- :func:`cert_ca`, :func:`cert_engine`, :func:`cert_operator` — the
  certificates engines and operators use (``rha cert``).

Every call that does I/O releases the GIL, and Ctrl-C interrupts it.
Errors are :class:`RhaError` subclasses carrying the Rust messages.
"""

from __future__ import annotations

import asyncio
import json
import os
from types import TracebackType
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Sequence, Type, TypeVar, Union

from . import _rha
from ._rha import (
    AccountStore,
    BlobStore,
    CertificateError,
    CloudAccount,
    CloudError,
    EngineError,
    Event,
    EventStream,
    Finding,
    PageBlobReplica,
    RecoveryPoint,
    RhaError,
    Scenario,
    StateError,
    SyncError,
    SyncStats,
    TransportError,
    Validation,
    ValidationError,
    cert_ca,
    cert_engine,
    cert_operator,
    enable_logging,
    recovery_points,
    sync,
)

__version__: str = _rha.__version__

__all__ = [
    "AccountStore",
    "BlobStore",
    "CertificateError",
    "Client",
    "CloudAccount",
    "CloudError",
    "Engine",
    "EngineError",
    "Event",
    "EventStream",
    "Events",
    "Finding",
    "PageBlobReplica",
    "RecoveryPoint",
    "RhaError",
    "Scenario",
    "StateError",
    "SyncError",
    "SyncStats",
    "TransportError",
    "Validation",
    "ValidationError",
    "cert_ca",
    "cert_engine",
    "cert_operator",
    "enable_logging",
    "recovery_points",
    "sync",
]

PathLike = Union[str, "os.PathLike[str]"]
"""A file system path: ``str`` or ``pathlib.Path``."""

JSON = Dict[str, Any]
"""A reply of the control API, as a dict (the same JSON as ``rha ... --json``)."""


class Events:
    """The events of one scenario, from its latest milestones on.

    Iterate with ``for event in events`` (blocking; Ctrl-C interrupts) or
    ``async for event in events`` (asyncio; waits in a worker thread, so the
    event loop keeps running). ``next(timeout)`` waits at most ``timeout``
    seconds and returns None when nothing came. Iteration ends when the
    stream is closed or every scenario side it follows is gone.
    """

    #: How long one wait of the async iterator lasts before it checks for
    #: cancellation and closing (seconds).
    ASYNC_POLL = 0.1

    def __init__(self, stream: EventStream) -> None:
        """Wraps a native :class:`EventStream`."""
        self._stream = stream

    @property
    def scenario(self) -> str:
        """The scenario whose events these are."""
        return self._stream.scenario

    @property
    def closed(self) -> bool:
        """Whether the stream has ended."""
        return self._stream.closed

    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, waiting at most ``timeout`` seconds (None: as long as it takes)."""
        return self._stream.next(timeout)

    def close(self) -> None:
        """Ends the stream."""
        self._stream.close()

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self._stream.next(None)
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        loop = asyncio.get_running_loop()
        while True:
            event = await loop.run_in_executor(None, self._stream.next, self.ASYNC_POLL)
            if event is not None:
                return event
            if self._stream.closed:
                raise StopAsyncIteration

    def __enter__(self) -> "Events":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Events(scenario={self.scenario!r}, closed={self.closed})"


_Self = TypeVar("_Self", bound="_Control")


def _toml(scenario: Union[Scenario, str]) -> str:
    return scenario.to_toml() if isinstance(scenario, Scenario) else scenario


class _Control:
    """The control API (``rha scenario ...``), shared by :class:`Engine` and :class:`Client`.

    Each method sends one request of the engine's control protocol and
    returns its reply as a dict; a refusal raises :class:`ValidationError`
    (``bad_request``), :class:`StateError` (``no_such_scenario``,
    ``wrong_state``) or :class:`EngineError`, with the engine's ``code``.
    """

    def _call(self, request: JSON, timeout: Optional[float]) -> JSON:
        raise NotImplementedError

    def close(self) -> None:
        """Ends this handle (an engine shuts down, a client disconnects)."""
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    def request(self, request: JSON, timeout: Optional[float] = None) -> JSON:
        """Sends a request in the control protocol's JSON form (``{"command": "ping"}``)."""
        return self._call(request, timeout)

    def ping(self) -> JSON:
        """The engine's name, software, protocol and the scenarios it holds."""
        return self._call({"command": "ping"}, None)

    def run(self, scenario: Union[Scenario, str]) -> JSON:
        """Runs a scenario (a :class:`Scenario` or TOML text) on this engine, its appliance."""
        return self._call({"command": "run", "scenario": _toml(scenario)}, None)

    def stop(self, name: str) -> JSON:
        """Stops a scenario: replication stops, its state stays for a fast resync."""
        return self._call({"command": "stop", "name": name}, None)

    def status(self, name: Optional[str] = None) -> JSON:
        """Statistics and state of scenario ``name``, or of all (``{"scenarios": [...]}``)."""
        return self._call({"command": "status", "name": name}, None)

    def scenario_status(self, name: str) -> JSON:
        """The status of scenario ``name`` on this engine (its first side listed)."""
        scenarios: List[JSON] = self.status(name)["scenarios"]
        return scenarios[0]

    def switchover(
        self,
        name: str,
        *,
        skip_journal: bool = False,
        force: bool = False,
        timeout: Optional[float] = None,
    ) -> JSON:
        """Switches scenario ``name`` over to its replica and starts the VM; returns the report.

        ``skip_journal`` starts without applying the changes still on their
        way; ``force`` starts even from a replica that is not consistent.
        """
        request = {"command": "switchover", "name": name, "skip_journal": skip_journal, "force": force}
        return self._call(request, timeout)

    def vm_start(self, name: str, *, point: str = "latest", force: bool = False) -> JSON:
        """Starts the replica VM of a stopped scenario from recovery point ``point``."""
        return self._call({"command": "vm_start", "name": name, "point": point, "force": force}, None)

    def discover(self, scenario: Union[Scenario, str, None] = None) -> JSON:
        """The engine's volumes, and those of ``scenario`` as found there."""
        text = None if scenario is None else _toml(scenario)
        return self._call({"command": "discover", "scenario": text}, None)

    def verify(self, scenario: Union[Scenario, str]) -> JSON:
        """Engine verification (on the appliance): validates, checks free space, contacts the master."""
        return self._call({"command": "verify", "scenario": _toml(scenario)}, None)


class Engine(_Control):
    """An rha engine running in this process (what ``rha engine`` runs).

    It plays the master role for the scenarios whose master it is and the
    appliance role for those it replicates. ``listen`` defaults to a free
    port on loopback (see :attr:`address`); ``None`` listens nowhere (a
    NAT-mode master that ``dial``\\ s its appliances). TLS uses the
    certificate ``name`` in ``certs`` (made with :func:`cert_engine`).
    Use it as a context manager, or call :meth:`shutdown`.
    """

    def __init__(
        self,
        name: str,
        data_dir: PathLike,
        *,
        listen: Optional[str] = "127.0.0.1:0",
        certs: Optional[PathLike] = None,
        insecure_plaintext: bool = False,
        dial: Sequence[str] = (),
        start_vms: bool = False,
    ) -> None:
        """Starts the engine; raises :class:`EngineError` or :class:`CertificateError` when it cannot."""
        self._native = _rha.NativeEngine(
            name,
            os.fspath(data_dir),
            listen,
            None if certs is None else os.fspath(certs),
            insecure_plaintext,
            list(dial),
            start_vms,
        )

    @property
    def name(self) -> str:
        """The engine's name (as in its certificate)."""
        return self._native.name

    @property
    def address(self) -> Optional[str]:
        """The address it listens on, such as ``127.0.0.1:40123``; None when it listens nowhere."""
        return self._native.address

    @property
    def port(self) -> Optional[int]:
        """The port it listens on."""
        address = self.address
        return None if address is None else int(address.rsplit(":", 1)[1])

    def _call(self, request: JSON, timeout: Optional[float]) -> JSON:
        reply: JSON = json.loads(self._native.control(json.dumps(request), timeout))
        return reply

    def events(self, scenario: str, *others: "Engine") -> Events:
        """The events of ``scenario`` on this engine and on ``others``.

        Pass the master's engine too when both run in this process, to see
        the synchronisation (master side) and the consistency and switchover
        (appliance side) in one stream. May be called before :meth:`run`.
        """
        return Events(self._native.events(scenario, [o._native for o in others]))

    def shutdown(self) -> None:
        """Stops the engine: listener, sessions, capture."""
        self._native.shutdown()

    def close(self) -> None:
        """The same as :meth:`shutdown` (what leaving a ``with`` block calls)."""
        self.shutdown()

    def __repr__(self) -> str:
        return f"Engine(name={self.name!r}, address={self.address!r})"


class Client(_Control):
    """An operator's connection to an engine over mutual TLS (what ``rha scenario ...`` uses).

    ``certs`` holds the operator certificate ``name`` (made with
    :func:`cert_operator`) and the CA. Raises :class:`TransportError` when
    the engine cannot be reached or refuses the certificate.
    """

    def __init__(
        self,
        address: str,
        *,
        certs: Optional[PathLike] = None,
        name: str = "operator",
        insecure_plaintext: bool = False,
        timeout: Optional[float] = 30.0,
    ) -> None:
        """Connects to the engine at ``address`` (``host:port``)."""
        self._native = _rha.NativeClient(
            address,
            None if certs is None else os.fspath(certs),
            name,
            insecure_plaintext,
            timeout,
        )

    @property
    def engine_name(self) -> str:
        """The engine's name, from its certificate."""
        return self._native.engine_name

    @property
    def address(self) -> str:
        """The address the engine was reached at."""
        return self._native.address

    def _call(self, request: JSON, timeout: Optional[float]) -> JSON:
        wait = 300.0 if timeout is None else timeout
        reply: JSON = json.loads(self._native.control(json.dumps(request), wait))
        return reply

    def close(self) -> None:
        """Closes the connection."""
        self._native.close()

    def __repr__(self) -> str:
        return f"Client(address={self.address!r}, engine={self.engine_name!r})"
