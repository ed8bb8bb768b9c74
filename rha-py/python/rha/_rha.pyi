"""Type stubs of the native module ``rha._rha`` (rha-py/src, PyO3)."""

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

_Path = Union[str, "os.PathLike[str]"]

__version__: str

class RhaError(Exception):
    """Base class of every error rha raises."""

class ValidationError(RhaError):
    """A scenario, an argument or a request is not valid."""

    findings: List["Finding"]
    code: str

class SyncError(RhaError):
    """A synchronisation failed: a master or replica disk could not be read or written."""

class TransportError(RhaError):
    """An engine could not be reached, the link failed, or the peer refused our certificate."""

class CertificateError(TransportError):
    """Making or loading certificates failed."""

class EngineError(RhaError):
    """An engine could not start, or failed a request; ``code`` is the engine's error code."""

    code: str

class StateError(EngineError):
    """The scenario does not exist, or is not in a state that allows the request."""

class CloudError(RhaError):
    """A cloud account is invalid, missing, or refused by the cloud."""

class Finding:
    """One problem found in a scenario."""

    @property
    def severity(self) -> str:
        """``"error"`` or ``"warning"``."""
    @property
    def path(self) -> str:
        """The key path of the setting concerned, such as ``volumes[1].exclude``."""
    @property
    def message(self) -> str:
        """What is wrong and what to do about it."""

class Validation:
    """The result of ``Scenario.validate()``: every finding, errors first."""

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
    @property
    def clean(self) -> bool:
        """No findings at all."""
    @property
    def findings(self) -> List[Finding]:
        """Every finding, errors first."""
    @property
    def errors(self) -> List[Finding]:
        """The errors only."""
    @property
    def warnings(self) -> List[Finding]:
        """The warnings only."""
    def find(self, path: str) -> Optional[Finding]:
        """The finding about the setting at ``path``, if any."""

class Scenario:
    """A replication scenario (what to replicate, where to, how to switch over)."""

    @staticmethod
    def load(path: _Path) -> "Scenario":
        """Reads and parses a scenario file; ``ValidationError`` names the file, line, column and key."""
    @staticmethod
    def from_toml(text: str) -> "Scenario":
        """Parses a scenario from TOML text."""
    @staticmethod
    def template(kind: str = "local") -> "Scenario":
        """A complete scenario to start from: ``"local"`` or ``"azure"``."""
    @staticmethod
    def from_dict(data: Dict[str, Any]) -> "Scenario":
        """Builds a scenario from a dict shaped like the TOML file."""
    def to_toml(self) -> str:
        """The scenario as TOML text."""
    def to_dict(self) -> Dict[str, Any]:
        """The scenario as a dict shaped like the TOML file."""
    def validate(self) -> Validation:
        """Checks the settings; returns every error and warning found."""
    def check(self) -> Validation:
        """Validates and raises ``ValidationError`` (with ``findings``) when there are errors."""
    @property
    def name(self) -> str:
        """The scenario's name."""

class SyncStats:
    """What ``rha.sync`` did."""

    method: str
    passes: int
    bytes_sent: int
    bytes_received: int
    blocks_changed: int
    changed_bytes: int
    bytes_scanned: int
    volume_bytes: int
    consistent: bool
    seconds: float
    def to_dict(self) -> Dict[str, Any]:
        """The statistics as a dict."""

def sync(
    src: _Path, dst: _Path, method: str = "block", force_full: bool = False
) -> SyncStats:
    """Synchronises image ``dst`` with image ``src`` (``rha sync``); Ctrl-C stops it."""

class Event:
    """Something that happened in a scenario."""

    @property
    def kind(self) -> str:
        """``sync_started``, ``sync_progress``, ``sync_completed``, ``all_sync_changes_replicated``, ..."""
    @property
    def message(self) -> str:
        """The event as a sentence."""
    @property
    def fields(self) -> Dict[str, Any]:
        """Its fields, as in the JSON form."""
    @property
    def side(self) -> str:
        """``"master"`` or ``"appliance"``."""
    @property
    def engine(self) -> str:
        """The name of the engine it happened on."""
    @property
    def time(self) -> float:
        """When it was received, in seconds since the Unix epoch."""

class EventStream:
    """A scenario's events (native); ``rha.Events`` wraps it."""

    def __iter__(self) -> "EventStream": ...
    def __next__(self) -> Event: ...
    def next(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None when ``timeout`` ran out or the stream ended."""
    def close(self) -> None:
        """Ends the stream."""
    @property
    def closed(self) -> bool:
        """Whether the stream has ended."""
    @property
    def scenario(self) -> str:
        """The scenario whose events these are."""

class NativeEngine:
    """An engine in this process; ``rha.Engine`` wraps it."""

    def __init__(
        self,
        name: str,
        data_dir: _Path,
        listen: Optional[str] = "127.0.0.1:0",
        certs: Optional[_Path] = None,
        insecure_plaintext: bool = False,
        dial: List[str] = ...,
        start_vms: bool = False,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def address(self) -> Optional[str]: ...
    def control(self, request_json: str, timeout: Optional[float] = None) -> str: ...
    def events(self, scenario: str, others: List["NativeEngine"] = ...) -> EventStream: ...
    def shutdown(self) -> None: ...

class NativeClient:
    """An operator's connection to an engine; ``rha.Client`` wraps it."""

    def __init__(
        self,
        address: str,
        certs: Optional[_Path] = None,
        name: str = "operator",
        insecure_plaintext: bool = False,
        timeout: Optional[float] = 30.0,
    ) -> None: ...
    @property
    def engine_name(self) -> str: ...
    @property
    def address(self) -> str: ...
    def control(self, request_json: str, timeout: Optional[float] = 300.0) -> str: ...
    def close(self) -> None: ...

def cert_ca(
    dir: _Path, common_name: str = "rha CA", days: int = 365, force: bool = False
) -> Tuple[Path, Path]:
    """Makes a scenario CA in ``dir`` (``ca.pem``, ``ca.key``); returns both paths."""

def cert_engine(
    dir: _Path,
    name: str,
    sans: List[str] = ...,
    days: int = 365,
    force: bool = False,
    ca_dir: Optional[_Path] = None,
) -> Tuple[Path, Path]:
    """Makes engine certificate ``name`` for the addresses ``sans``; returns both paths."""

def cert_operator(
    dir: _Path,
    name: str = "operator",
    days: int = 365,
    force: bool = False,
    ca_dir: Optional[_Path] = None,
) -> Tuple[Path, Path]:
    """Makes operator certificate ``name``; returns both paths."""

class CloudAccount:
    """An Azure account: a subscription and the service principal rha acts as. The secret never shows."""

    def __init__(
        self,
        name: str,
        subscription_id: str,
        tenant_id: str,
        client_id: str,
        secret: str,
        authority_host: Optional[str] = None,
        arm_endpoint: Optional[str] = None,
        blob_endpoint: Optional[str] = None,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def subscription_id(self) -> str: ...
    @property
    def tenant_id(self) -> str: ...
    @property
    def client_id(self) -> str: ...
    @property
    def authority_host(self) -> str: ...
    @property
    def arm_endpoint(self) -> str: ...
    def reveal_secret(self) -> str:
        """The client secret itself (never printed by rha)."""
    def info(self) -> Dict[str, str]:
        """The account without its secret."""
    def test(self, timeout: Optional[float] = 60.0) -> Dict[str, Any]:
        """Proves the account by getting a Resource Manager token."""

class AccountStore:
    """Where accounts are kept: one JSON file of mode 0600, shared with ``rha cloud account``."""

    def __init__(self, path: Optional[_Path] = None) -> None: ...
    @property
    def path(self) -> Path: ...
    def add(self, account: CloudAccount, replace: bool = False) -> None: ...
    def get(self, name: str) -> CloudAccount: ...
    def list(self) -> List[Dict[str, str]]: ...
    def remove(self, name: str) -> Dict[str, str]: ...

def enable_logging(level: str = "info") -> None:
    """Logs to standard error at ``level``; the Azure SDK's debug events (tokens) are withheld."""

class BlobStore:
    """One container of a storage account (or of Azurite); keys never show in its ``repr``."""

    def __init__(
        self,
        container: str,
        *,
        emulator: Optional[str] = None,
        account: Optional[str] = None,
        key: Optional[str] = None,
        sas: Optional[str] = None,
    ) -> None: ...
    @property
    def url(self) -> str:
        """The container's URL."""

class RecoveryPoint:
    """A recovery point: every replica disk as it was at sequence ``seq``."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def created_ms(self) -> int: ...
    @property
    def consistent(self) -> bool: ...
    def to_dict(self) -> Dict[str, Any]:
        """The point as a dict, with its disk snapshots."""

class PageBlobReplica:
    """A replica whose disks are page blobs under a prefix of a container."""

    @staticmethod
    def create(store: BlobStore, prefix: str, owner: str, sizes: List[int]) -> "PageBlobReplica":
        """Creates a replica of empty disks of ``sizes`` bytes."""
    @staticmethod
    def open(store: BlobStore, prefix: str, owner: str, takeover: bool = False) -> "PageBlobReplica":
        """Opens the replica under ``prefix`` as ``owner``."""
    @property
    def disk_urls(self) -> List[str]:
        """The disks' blob URLs."""
    def bookmark(self, name: str, seq: int) -> Optional[RecoveryPoint]:
        """Bookmarks the journal at ``seq``: the point when taken now, None when ``seq`` is ahead."""
    def create_recovery_point(self, name: str) -> RecoveryPoint:
        """Takes a recovery point now."""
    def recovery_points(self) -> List[RecoveryPoint]:
        """Every complete recovery point, oldest first."""
    def resolve_point(self, selector: str) -> RecoveryPoint:
        """The point ``latest``, ``seq:N``, or an id or name selects."""
    def delete_recovery_point(self, point: RecoveryPoint) -> None:
        """Deletes the snapshots of ``point``."""
    def close(self) -> None:
        """Flushes, releases the lease and closes the replica."""
    def __enter__(self) -> "PageBlobReplica": ...
    def __exit__(self, *args: object) -> None: ...

def recovery_points(store: BlobStore, prefix: str) -> List[RecoveryPoint]:
    """Every complete recovery point under ``prefix``, without opening the replica."""
