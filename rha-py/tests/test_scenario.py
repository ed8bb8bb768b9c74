"""Scenarios: load, build, validate; findings and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import rha


def test_templates_validate_clean_and_round_trip() -> None:
    for kind in ("local", "azure"):
        s = rha.Scenario.template(kind)
        v = s.validate()
        assert v.ok and v.clean and v.findings == [] and v.errors == [] and v.warnings == []
        assert str(v) == "no problems found"
        assert rha.Scenario.from_toml(s.to_toml()) == s
        assert rha.Scenario.from_dict(s.to_dict()) == s
    assert rha.Scenario.template().name == "web01-ha"
    assert "web01-ha" in repr(rha.Scenario.template())


def test_unknown_template_is_a_validation_error() -> None:
    with pytest.raises(rha.ValidationError, match="gcp"):
        rha.Scenario.template("gcp")


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(rha.Scenario.template("local").to_toml())
    assert rha.Scenario.load(good).name == "web01-ha"
    assert rha.Scenario.load(str(good)).name == "web01-ha"
    with pytest.raises(rha.ValidationError, match="missing.toml"):
        rha.Scenario.load(tmp_path / "missing.toml")
    typo = tmp_path / "typo.toml"
    typo.write_text(rha.Scenario.template("local").to_toml().replace("interval_secs", "intervl_secs", 1))
    with pytest.raises(rha.ValidationError) as e:
        rha.Scenario.load(typo)
    assert "typo.toml" in str(e.value) and "did you mean `interval_secs`" in str(e.value)
    assert isinstance(e.value, rha.RhaError)


def test_secrets_in_a_scenario_are_refused() -> None:
    d = rha.Scenario.template("azure").to_dict()
    d["replica"]["azure"]["client_secret"] = "hunter2"
    with pytest.raises(rha.ValidationError, match="looks like a secret") as e:
        rha.Scenario.from_dict(d)
    assert "hunter2" not in str(e.value)


def test_from_dict_builds_and_refuses_what_toml_cannot_hold() -> None:
    d = rha.Scenario.template("local").to_dict()
    d["name"] = "built"
    d["volumes"] = [{"id": "/", "system": True}]
    s = rha.Scenario.from_dict(d)
    assert s.name == "built" and s.to_dict()["volumes"][0]["id"] == "/"
    d["vm"]["size"] = None
    with pytest.raises(rha.ValidationError, match="no None"):
        rha.Scenario.from_dict(d)
    with pytest.raises(rha.ValidationError, match="expected a string"):
        rha.Scenario.from_toml('name = 1\n')


def test_validation_reports_findings_with_paths_and_severities() -> None:
    d = rha.Scenario.template("local").to_dict()
    d["volumes"][0]["exclude"] = True
    d["journal"]["max_size_mb"] = 64
    s = rha.Scenario.from_dict(d)
    v = s.validate()
    assert not v.ok and not v.clean
    f = v.find("volumes[0].exclude")
    assert f is not None and f.severity == "error" and "can never be excluded" in f.message
    assert v.errors[0].path == "volumes[0].exclude"
    assert all(w.severity == "warning" for w in v.warnings)
    assert v.findings[0].severity == "error"  # errors first
    assert str(f).startswith("error: volumes[0].exclude: ")
    assert "volumes[0].exclude" in repr(f) and "ok=False" in repr(v)
    assert v.find("no.such.path") is None
    with pytest.raises(rha.ValidationError) as e:
        s.check()
    assert [x.path for x in e.value.findings] == [x.path for x in v.findings]
    assert rha.Scenario.template("local").check().ok
