"""What a company checks before adopting the package: the wheel and sdist as built for PyPI.

Both are built from this tree with ``python -m build`` (hatchling in an isolated environment,
fetched from the package index as pip does), then opened: the licence, the metadata, the pytest
plugin's entry point, and in the sdist everything its own test suite reads.
"""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def the_one(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


def wheel_files(dist: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(the_one(dist, "*.whl")) as wheel:
        return {name: wheel.read(name) for name in wheel.namelist()}


def sdist_files(dist: Path) -> dict[str, bytes]:
    with tarfile.open(the_one(dist, "*.tar.gz")) as sdist:
        files = {}
        for member in sdist.getmembers():
            extracted = sdist.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files[member.name.split("/", 1)[1]] = extracted.read()
    return files


def wheel_metadata(dist: Path) -> Message:
    files = wheel_files(dist)
    (name,) = [n for n in files if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(files[name])


def test_the_licence_is_mit_and_in_the_repository() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^Copyright \(c\) \d{4} clipnormals developers$", text, re.MULTILINE)
    assert PROJECT["license"] == "MIT"


def test_the_wheel_carries_the_licence_and_the_plugin(dist: Path) -> None:
    files = wheel_files(dist)
    licences = [n for n in files if n.endswith(".dist-info/licenses/LICENSE")]
    assert len(licences) == 1
    assert files[licences[0]] == (ROOT / "LICENSE").read_bytes()
    assert "_clipnormals_pytest.py" in files
    assert "clipnormals/py.typed" in files
    (entry_points,) = [n for n in files if n.endswith(".dist-info/entry_points.txt")]
    assert "[pytest11]\nclipnormals = _clipnormals_pytest\n" in files[entry_points].decode()
    # Only the package and the plugin: no tests, docs or stray top-level modules.
    tops = {name.split("/", 1)[0] for name in files if ".dist-info/" not in name}
    assert tops == {"clipnormals", "_clipnormals_pytest.py"}


def test_the_wheel_metadata_says_licence_urls_and_pythons(dist: Path) -> None:
    meta = wheel_metadata(dist)
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Repository", "Issues", "Changelog"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert meta["Requires-Python"] == ">=3.11"
    pythons = sorted(
        c.rsplit(" :: ", 1)[1]
        for c in meta.get_all("Classifier") or []
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    )
    assert pythons[0] == "3.11"  # the lowest declared is the lowest allowed


def test_the_sdist_holds_what_its_tests_read(dist: Path) -> None:
    files = sdist_files(dist)
    assert files["LICENSE"] == (ROOT / "LICENSE").read_bytes()
    for name in ("CHANGELOG.md", "README.md", "pyproject.toml", "mkdocs.yml"):
        assert name in files, name
    assert "_clipnormals_pytest.py" in files
    # Every file of the folders the suite reads that git tracks (generated files aside):
    # tests/test_benchmarks.py loads the benchmark scripts.
    folders = ("benchmarks", "clipnormals", "docs", "examples", "scripts", "tests")
    tracked = subprocess.run(
        ["git", "ls-files", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if tracked.returncode != 0:  # an unpacked sdist: no git; compare with the folders instead
        expected = {
            p.relative_to(ROOT).as_posix()
            for folder in folders
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    else:
        expected = set(tracked.stdout.split())
    missing = sorted(expected - set(files))
    assert missing == []
    assert not [n for n in files if n.startswith((".ci/", ".venv"))]


def test_the_classifiers_list_the_pythons_ci_tests() -> None:
    ci = ROOT / ".ci" / "run"
    if not ci.exists():
        pytest.skip("an unpacked sdist has no CI script")
    found = re.search(r"^OTHER_PYTHONS=\"([\d. ]+)\"", ci.read_text(), re.MULTILINE)
    assert found is not None, "OTHER_PYTHONS is no longer set in .ci/run"
    # .ci/run runs the suite with the machine's python3, then the sdist's on OTHER_PYTHONS.
    main = subprocess.run(
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tested = {main, *found.group(1).split()}
    declared = {
        c.rsplit(" :: ", 1)[1]
        for c in PROJECT["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert declared == tested, f"declared {sorted(declared)}, CI tests {sorted(tested)}"
