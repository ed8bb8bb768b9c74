"""The package: public names, docstrings, stubs, the example script and mypy --strict."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import rha

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "replicate_local.py"


def test_every_public_name_has_a_docstring() -> None:
    for name in rha.__all__:
        obj = getattr(rha, name)
        assert obj.__doc__, name
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and callable(member) or isinstance(member, property):
                    assert getattr(member, "__doc__", None), f"{name}.{attr}"


def test_exception_hierarchy() -> None:
    for cls in (rha.ValidationError, rha.SyncError, rha.TransportError, rha.EngineError, rha.CloudError):
        assert issubclass(cls, rha.RhaError) and cls.__module__ == "rha"
    assert issubclass(rha.CertificateError, rha.TransportError)
    assert issubclass(rha.StateError, rha.EngineError)


def test_typing_files_ship_with_the_package() -> None:
    pkg = Path(rha.__file__).parent
    assert (pkg / "py.typed").exists() and (pkg / "_rha.pyi").exists()


def test_the_example_replicates_and_switches_over(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workdir", str(tmp_path / "work"), "--system-mib", "16", "--data-mib", "4"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "all changes made during synchronisation have been replicated" in p.stdout
    assert "switched over: VM" in p.stdout
    assert p.stdout.count("equals master") == 2, p.stdout


@pytest.mark.skipif(shutil.which("mypy") is None and not Path(sys.executable).with_name("mypy").exists(),
                    reason="mypy is not installed (scripts/test.sh installs it)")
def test_mypy_strict_accepts_the_example_against_the_stubs(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(EXAMPLE)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout + p.stderr
