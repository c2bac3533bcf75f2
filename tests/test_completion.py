"""Shell completion of the ``clipnormals`` command (typer's), as a user's shell runs it.

The installed command is run in a subprocess; without it (a source tree on ``PYTHONPATH``)
these tests are skipped, and fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("typer")

BIN = Path(sys.executable).parent


@pytest.fixture
def command() -> str:
    found = shutil.which("clipnormals", path=str(BIN))
    if found is None:
        missing = "the clipnormals command is not installed here (pip install -e '.[cli]')"
        if os.environ.get("CI"):  # CI installs it: a skip there would hide a failure
            pytest.fail(missing)
        pytest.skip(missing)
    return found


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_show_completion_prints_the_script_for_the_shell_it_runs_in(command: str) -> None:
    # typer detects the shell from the parent process (shellingham); "; true" keeps bash from
    # replacing itself with the command, so that bash stays the parent.
    done = run(
        ["bash", "--norc", "--noprofile", "-c", '"$CMD" --show-completion; true'],
        env={"CMD": command},
    )
    assert done.returncode == 0, done.stderr
    assert "complete -o default -F _clipnormals_completion clipnormals" in done.stdout
    assert "_CLIPNORMALS_COMPLETE=complete_bash" in done.stdout


def test_help_lists_the_completion_options(command: str) -> None:
    done = run([command, "--help"])
    assert done.returncode == 0, done.stderr
    assert "--install-completion" in done.stdout
    assert "--show-completion" in done.stdout


def completions(command: str, words: str) -> list[str]:
    """What the command answers to bash's completion request for ``words``."""
    done = run(
        [command],
        env={
            "_CLIPNORMALS_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        },
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_commands_and_options_complete(command: str) -> None:
    assert completions(command, "clipnormals ba") == ["batch"]
    assert completions(command, "clipnormals e") == ["emulator"]
    assert {"--max-credits", "--manifest"} <= set(completions(command, "clipnormals batch --ma"))


def test_the_bash_script_completes_in_a_real_bash(command: str) -> None:
    script = (
        'source <("$CMD" --show-completion)\n'
        "COMP_WORDS=(clipnormals de); COMP_CWORD=1\n"
        "_clipnormals_completion clipnormals\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = run(["bash", "--norc", "--noprofile", "-c", script], env={"CMD": command})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["demo"]
