"""pyproject.toml, requirements.txt and the lock name the same packages at agreeing versions; `actsearch` works."""
import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pipeline.study.cli import main
from pipeline.study.config import SCHEMA_FILE, TABLE_FILE

tomllib = pytest.importorskip("tomllib")
ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(file: str) -> dict[str, str]:
    """`name==version` lines of a requirements file, by canonical name."""
    found = {}
    for line in (ROOT / file).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s#]+)", line)
        if match:
            found[canonicalize_name(match.group(1).split("[")[0])] = match.group(2)
    return found


def declared() -> list[Requirement]:
    extras = [item for items in PROJECT["optional-dependencies"].values() for item in items]
    return [Requirement(item) for item in PROJECT["dependencies"] + extras]


def test_pyproject_builds_with_setuptools_and_declares_the_extras():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["build-system"]["build-backend"] == "setuptools.build_meta"
    assert "ray" in {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["cluster"]}
    assert {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["dev"]} == {
        "pytest", "pytest-xdist", "mutmut"}
    assert "ray" not in {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert PROJECT["scripts"]["actsearch"] == "pipeline.study.cli:main"


def test_every_declared_package_is_pinned_at_a_version_its_specifier_allows():
    pinned = pins("requirements.txt") | pins("requirements-dev.txt")
    for requirement in declared():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is declared in pyproject.toml but pinned in no requirements file"
        assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} breaks {requirement}"


def test_requirements_txt_pins_nothing_pyproject_does_not_declare():
    names = {canonicalize_name(requirement.name) for requirement in declared()}
    assert set(pins("requirements.txt")) <= names


def test_the_lock_pins_the_direct_dependencies_at_the_same_versions():
    lock = pins("requirements-lock.txt")
    for name, version in pins("requirements.txt").items():
        assert lock.get(name) == version, f"{name}: requirements.txt {version}, requirements-lock.txt {lock.get(name)}"


def test_actsearch_check_names_a_valid_file_and_reports_a_wrong_one_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "presets/ci.yaml"]) == 0
    assert capsys.readouterr().out.startswith("presets/ci.yaml is valid: ")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((ROOT / "params.yaml").read_text().replace("  epochs:", "  epochz:", 1))
    assert main(["check", str(wrong)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {wrong}: unknown key") and "\n" not in error


def test_actsearch_schema_writes_the_committed_schema_and_table(tmp_path, capsys):
    assert main(["schema", "--schema", str(tmp_path / "s.json"), "--table", str(tmp_path / "t.md")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((ROOT / SCHEMA_FILE).read_text())
    assert (tmp_path / "t.md").read_text() == (ROOT / TABLE_FILE).read_text()


def test_every_pin_of_the_lock_carries_hashes():
    entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements-lock.txt").read_text().split("\n", 2)[2])
    unhashed = [entry.split()[0] for entry in entries if "==" in entry and "--hash=sha256:" not in entry]
    assert not unhashed and len(entries) > 100


def test_ci_installs_the_lock_in_hash_checking_mode():
    install = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line
               and " -r " in line]
    assert install == [".venv/bin/python -m pip install --quiet --require-hashes -r requirements-lock.txt"]
