"""The pytest plugin costs nothing until used: loading it imports nothing of clipnormals.

pytest imports every installed plugin at start-up, in projects that never use clipnormals too.
These tests run pytest in a fresh interpreter on a one-test project and look at ``sys.modules``
afterwards, which is deterministic (``benchmarks/plugin.py`` measures the time).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What a run that uses no fixture must not import (the package itself is checked separately).
HEAVY = ("numpy", "PIL", "httpx", "aiolimiter", "tenacity", "starlette", "uvicorn", "redis")

ONE_TEST = """
import pytest


@pytest.mark.clipnormals_emulator(credits=1)  # --strict-markers: the plugin registered it
@pytest.mark.clipnormals_client(max_concurrency=1)
def test_unrelated(request):
    assert request.config.pluginmanager.has_plugin({plugin!r})
    assert 1 + 1 == 2
"""

# Runs pytest in process, then prints the top-level names of every module imported.
RUNNER = """
import json, sys
import pytest
code = pytest.main(sys.argv[1:])
print(json.dumps({"code": int(code), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def plugin_module() -> str:
    """The module the ``pytest11`` entry point names in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module: str = project["project"]["entry-points"]["pytest11"]["clipnormals"]
    return module


def run_pytest(project: Path, *options: str) -> set[str]:
    """Run pytest on ``project`` in a fresh interpreter; the top-level modules it imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    # The source tree first, so that the plugin under test is this one even when not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, "-q", "-p", "no:cacheprovider", *options, str(project)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 0, done.stdout + done.stderr
    return set(result["modules"])


@pytest.fixture
def unrelated_project(tmp_path: Path) -> Path:
    project = tmp_path / "uses-markers"
    project.mkdir()
    # pytest.ini makes the folder its own rootdir: the repository's settings stay out of it.
    (project / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (project / "test_unrelated.py").write_text(
        textwrap.dedent(ONE_TEST.format(plugin=plugin_module()))
    )
    return project


def test_loading_the_plugin_imports_nothing_of_clipnormals(
    unrelated_project: Path, tmp_path: Path
) -> None:
    module = plugin_module()
    # Loaded by module name, as the entry point does, installed or not.
    loaded = run_pytest(unrelated_project, "-p", "no:clipnormals", "-p", module)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "pytest.ini").write_text("[pytest]\n")
    (plain / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    # What pytest and the other installed plugins import by themselves.
    baseline = run_pytest(plain, "-p", "no:clipnormals")
    assert sorted(loaded & set(HEAVY) - baseline) == []
    assert "clipnormals" not in loaded
    plugin_root = module.split(".")[0]
    assert plugin_root in loaded
    assert plugin_root not in baseline


def test_the_installed_entry_point_is_the_lazy_module() -> None:
    try:
        dist = importlib.metadata.distribution("clipnormals")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("clipnormals is not installed (pip install -e .): no entry point to check")
    plugins = {ep.name: ep.value for ep in dist.entry_points if ep.group == "pytest11"}
    assert plugins == {"clipnormals": plugin_module()}, "reinstall: the entry point is stale"
    assert "." not in plugin_module(), "a module inside the package imports the package first"


def test_the_fixtures_load_clipnormals_when_first_used(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (tmp_path / "test_uses_it.py").write_text(
        textwrap.dedent(
            """
            import sys


            def test_config(clipnormals_emulator_config):
                assert dict(clipnormals_emulator_config.keys) == {"test-key": 100}
                assert "clipnormals.emulator" in sys.modules
            """
        )
    )
    assert "clipnormals" in run_pytest(tmp_path, "-p", "no:clipnormals", "-p", plugin_module())
