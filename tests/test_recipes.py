"""The documentation's executable parts: the recipes run, and the API reference is complete.

Each recipe is started in a fresh interpreter (warnings are errors, as in the suite) from an
empty folder, with no Clipdrop key or URL in its environment, so a recipe that reached for the
network or the real API would fail here.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "docs" / "recipes"
KERNEL = ROOT / "tests" / "notebook_kernel.py"


def run_python(
    script: Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPDROP_")}
    # The source tree first: CI installs the package, a developer's checkout may not.
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    clean.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script), *args],
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{script.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc


def run_recipe(
    name: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_python(RECIPES / name, *args, cwd=cwd, env=env)


def run_notebook(
    notebook: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run a percent-format notebook cell by cell on one event loop, as a Jupyter kernel does
    (tests/notebook_kernel.py); its output and, per cell, the seconds and heartbeat ticks."""
    report = cwd / "kernel-report.json"
    proc = run_python(KERNEL, str(notebook), str(report), cwd=cwd, env=env)
    cells: list[dict[str, Any]] = json.loads(report.read_text())
    return proc, cells


def cell_running(cells: list[dict[str, Any]], code: str) -> dict[str, Any]:
    (cell,) = [c for c in cells if code in c["source"]]
    return cell


def test_asyncio_worker_survives_faults_and_writes_every_map(tmp_path: Path) -> None:
    proc = run_recipe("asyncio_worker.py", "--emulator", "out", cwd=tmp_path)
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("12 done, 0 failed, 0 not sent;"), summary
    assert "retries" in summary
    assert ", 12 credits spent, 88 left" in summary
    for name in ("astronaut", "camera"):
        with np.load(tmp_path / "out" / f"{name}.normals.npz") as data:
            assert data["normals"].shape == (512, 512, 3)
            assert data["mask"].dtype == np.bool_
            assert 0.1 < data["mask"].mean() < 0.9


@pytest.mark.loopback
def test_web_backend_answers_ok_bad_input_and_empty_account(tmp_path: Path) -> None:
    proc = run_recipe("fastapi_backend.py", "--emulator", cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert lines[0] == "a portrait: 200 image/jpeg"
    assert lines[1] == "a text file: 422 application/json"
    assert lines[2].startswith("out of credits: 503 ")
    assert "'halted': True" in lines[3]
    assert "402 Payment Required" in proc.stderr  # logged for operations, not shown to users
    # one span per image the client sent; the text file never reached it
    assert lines[4:] == [
        "span: clipnormals surface_normals status=200 attempts=1 error=None",
        "span: clipnormals surface_normals status=402 attempts=1 error=InsufficientCreditsError",
    ]


@pytest.mark.loopback
def test_notebook_runs_cell_by_cell_with_await_and_saves_its_pictures(tmp_path: Path) -> None:
    proc, cells = run_notebook(
        RECIPES / "notebook_async.py", cwd=tmp_path, env={"CLIPNORMALS_RECIPE_EMULATOR": "1"}
    )
    assert "astronaut.png ok" in proc.stdout
    assert "camera.png ok" in proc.stdout
    out = tmp_path / "notebook-out"
    for name in ("normals.png", "clay.png", "relit.png"):
        with Image.open(out / name) as picture:
            assert picture.size == (512, 512)
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.width > 4 * 256  # four columns of 256-pixel tiles
    # Awaited, the map leaves the kernel's loop free while it waits for the quota.
    mapping = cell_running(cells, "async for item in client.map(")
    assert mapping["seconds"] > 1.0  # two quota spacings at 60/min: the loop had time to tick
    assert mapping["ticks"] > 0


BLOCKING_NOTEBOOK = """
# %%
from pathlib import Path

import clipnormals
from clipnormals.emulator import EmulatorConfig, start_in_thread

samples = Path(clipnormals.__file__).parent / "samples"
portraits = [samples / "astronaut.png", samples / "camera.png", samples / "astronaut.png"]
server = start_in_thread(EmulatorConfig(keys={"notebook": 100}))
client = clipnormals.Client(api_key="notebook", base_url=server.url)

# %%
done = [item.ok for item in client.map(portraits)]

# %%
client.close()
server.stop()
print(done)
"""


@pytest.mark.loopback
def test_the_blocking_client_holds_the_kernels_loop_as_the_recipe_says(tmp_path: Path) -> None:
    notebook = tmp_path / "blocking.py"
    notebook.write_text(BLOCKING_NOTEBOOK)
    proc, cells = run_notebook(notebook, cwd=tmp_path)
    assert proc.stdout.strip() == "[True, True, True]"
    mapping = cell_running(cells, "client.map(portraits)")
    assert mapping["seconds"] > 1.0  # the same quota spacings as the awaited map
    assert mapping["ticks"] == 0  # not one tick of the kernel's other work meanwhile


def test_the_fault_injection_recipes_pass_as_a_downstream_suite() -> None:
    # Run as a separate pytest session, the way a project using clipnormals runs its tests:
    # its own conftest.py, the clipnormals plugin's fixtures.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(RECIPES / "test_fault_injection.py")],
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("CLIPDROP_")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "11 passed" in proc.stdout


@pytest.mark.parametrize(
    "module",
    [
        "clipnormals",
        "clipnormals.batch",
        "clipnormals.emulator",
        "clipnormals.testing",
        "clipnormals.redis",
    ],
)
def test_every_public_name_has_an_api_reference_entry(module: str) -> None:
    documented: set[str] = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        documented.update(re.findall(r"^::: ([\w.]+)", page.read_text(), re.MULTILINE))
    public = importlib.import_module(module).__all__
    missing = [
        name
        for name in public
        if not name.startswith("__") and f"{module}.{name}" not in documented
    ]
    assert missing == [], f"add to docs/reference/: {missing}"


def test_every_test_the_readme_names_as_proof_exists() -> None:
    """The README's guarantees name the tests that prove them; a renamed test must not leave a
    promise proved by nothing."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## What it guarantees") : text.index("## Documentation")]
    named = re.findall(r"`([\w/]+\.py)(?:::(\w+))?", section)
    assert len(named) >= 10
    for file, test in named:
        path = ROOT / "tests" / file
        assert path.is_file(), file
        if test:
            assert re.search(rf"^(async )?def {test}\(", path.read_text(), re.M), f"{file}::{test}"
