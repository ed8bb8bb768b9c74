"""Cloud accounts: the secret never shows; the store; errors; logging never prints secrets."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import rha

SUB = "00000000-0000-4000-8000-000000000001"
TENANT = "00000000-0000-4000-8000-000000000002"
APP = "00000000-0000-4000-8000-000000000003"
SECRET = "s3cr3t-value-that-must-never-show"


def account(name: str = "prod", **kw: str) -> rha.CloudAccount:
    return rha.CloudAccount(name, SUB, TENANT, APP, SECRET, **kw)


def test_the_secret_never_shows() -> None:
    a = account()
    for text in (repr(a), str(a), str(a.info()), repr(a.info())):
        assert SECRET not in text
    assert "secret=****" in repr(a)
    assert (a.name, a.subscription_id, a.tenant_id, a.client_id) == ("prod", SUB, TENANT, APP)
    assert a.authority_host.startswith("https://login.") and a.arm_endpoint.startswith("https://management.")
    assert "secret" not in a.info()
    assert a.reveal_secret() == SECRET


def test_invalid_accounts_are_cloud_errors() -> None:
    with pytest.raises(rha.CloudError, match="subscription"):
        rha.CloudAccount("prod", "not-a-guid", TENANT, APP, SECRET)
    with pytest.raises(rha.CloudError, match="secret is empty"):
        rha.CloudAccount("prod", SUB, TENANT, APP, "")
    with pytest.raises(rha.CloudError, match="authority-host"):
        account(authority_host="ftp://x")


def test_account_store_add_list_get_remove(tmp_path: Path) -> None:
    store = rha.AccountStore(tmp_path / "rha" / "accounts.json")
    assert store.path == tmp_path / "rha" / "accounts.json" and "accounts.json" in repr(store)
    assert store.list() == []
    store.add(account())
    store.add(account("dr", arm_endpoint="https://management.example.invalid"))
    assert [i["name"] for i in store.list()] == ["prod", "dr"]
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    got = store.get("dr")
    assert got.arm_endpoint == "https://management.example.invalid" and got.reveal_secret() == SECRET
    with pytest.raises(rha.CloudError, match="exists already"):
        store.add(account())
    store.add(account(), replace=True)
    with pytest.raises(rha.CloudError, match="no cloud account named `nope`"):
        store.get("nope")
    assert store.remove("prod")["name"] == "prod"
    assert [i["name"] for i in store.list()] == ["dr"]
    os.chmod(store.path, 0o644)
    with pytest.raises(rha.CloudError, match="chmod"):
        store.list()


def test_store_location_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RHA_ACCOUNTS", str(tmp_path / "env.json"))
    assert rha.AccountStore().path == tmp_path / "env.json"


LOG_AND_TEST = """
import rha, sys
rha.enable_logging("trace")
try:
    rha.enable_logging("info")
except rha.RhaError as e:
    print("second:", type(e).__name__)
a = rha.CloudAccount("prod", *sys.argv[1:5], authority_host="http://127.0.0.1:9")
try:
    a.test(timeout=60)
except rha.CloudError as e:
    print("refused:", type(e).__name__)
"""


def test_account_test_fails_cleanly_and_logs_no_secret() -> None:
    p = subprocess.run(
        [sys.executable, "-c", LOG_AND_TEST, SUB, TENANT, APP, SECRET],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "second: RhaError" in p.stdout, p.stdout + p.stderr
    assert "refused: CloudError" in p.stdout, p.stdout + p.stderr
    assert SECRET not in p.stdout + p.stderr


def test_bad_log_level_is_a_validation_error() -> None:
    with pytest.raises(rha.ValidationError):
        rha.enable_logging("no=such=level")
