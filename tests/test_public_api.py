"""The public surface: sorted __all__, every name real and documented."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import clipnormals


def test_all_is_sorted_and_complete() -> None:
    assert clipnormals.__all__ == sorted(clipnormals.__all__)
    for name in clipnormals.__all__:
        assert hasattr(clipnormals, name), name
    public = {n for n in dir(clipnormals) if not n.startswith("_")}
    # every public attribute that is ours is exported on purpose
    ours = {
        n
        for n in public
        if getattr(getattr(clipnormals, n), "__module__", "").startswith("clipnormals")
    }
    assert ours <= set(clipnormals.__all__)


@pytest.mark.parametrize("name", [n for n in clipnormals.__all__ if n != "__version__"])
def test_every_public_name_has_a_docstring(name: str) -> None:
    obj = getattr(clipnormals, name)
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return  # type aliases carry no docstring of their own
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_") or not (
                inspect.isfunction(value) or isinstance(value, property)
            ):
                continue
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_error_tree() -> None:
    assert issubclass(clipnormals.APITimeoutError, clipnormals.APIConnectionError)
    assert issubclass(clipnormals.InvalidImageError, ValueError)
    for cls in (
        clipnormals.BadRequestError,
        clipnormals.AuthenticationError,
        clipnormals.InsufficientCreditsError,
        clipnormals.PermissionDeniedError,
        clipnormals.NotAcceptableError,
        clipnormals.RateLimitError,
        clipnormals.ServerError,
    ):
        assert issubclass(cls, clipnormals.APIStatusError)
        assert issubclass(cls, clipnormals.ClipnormalsError)


def test_import_loads_neither_numpy_nor_pillow_nor_the_client() -> None:
    import subprocess
    import sys

    probe = (
        "import sys, clipnormals\n"
        "heavy = ('numpy', 'PIL', 'httpx', 'anyio', 'clipnormals._core.client')\n"
        "print([m for m in heavy if m in sys.modules])\n"
        "clipnormals.AsyncClient\n"
        "print('clipnormals._core.client' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["[]", "True"]


def test_dir_lists_every_public_name_before_first_use() -> None:
    assert set(clipnormals.__all__) <= set(dir(clipnormals))


def test_every_docstring_example_runs() -> None:
    """No example in the package is skipped: ``--doctest-modules`` runs every one of them."""
    package = Path(clipnormals.__file__).parent
    skipped = [
        f"{path.relative_to(package)}:{number}"
        for path in sorted(package.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "doctest: +SKIP" in line
    ]
    assert skipped == []
