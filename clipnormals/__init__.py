"""clipnormals: a quota-safe, credit-aware client for the Clipdrop Portrait Surface Normals API.

Example:
    >>> import clipnormals
    >>> async def main() -> None:
    ...     async with clipnormals.AsyncClient() as client:  # key from CLIPDROP_API_KEY
    ...         nm = await client.surface_normals("portrait.jpg")
    ...         nm.normals  # float32 (H, W, 3) unit vectors, +X right, +Y up, +Z to the viewer
    ...         nm.mask  # bool (H, W), True on the person

The batch runner behind ``clipnormals batch`` is in :mod:`clipnormals.batch`; preparing images
without a client (``prepare_image``, ``sniff_format``) in :mod:`clipnormals.images`.

The client is asyncio-only; ``Client`` is the blocking facade for scripts (in a notebook,
``await`` the ``AsyncClient``). ``clipnormals.emulator`` is a local stand-in for the API and
``clipnormals.testing`` has pytest fixtures built on it.

Names load on first use, so ``import clipnormals`` costs next to nothing until the client is
touched. The library logs to the ``clipnormals`` logger, silent (a ``NullHandler``) unless the
application configures logging or ``CLIPNORMALS_LOG`` is set.
"""

import logging
from typing import TYPE_CHECKING

from ._version import __version__

logging.getLogger("clipnormals").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from ._core.client import AsyncClient
    from ._core.credits import CreditHold, CreditLedger, CreditPolicy, Ledger
    from ._core.limiter import Limiter, LocalLimiter, RateLimit
    from ._core.map import MapIterator
    from ._core.results import ClientStats, MapItem
    from ._core.retry import RetryPolicy
    from ._core.sync import Client
    from ._errors import (
        APIConnectionError,
        APIStatusError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        CircuitOpenError,
        ClientClosedError,
        ClientHaltedError,
        ClipnormalsError,
        CreditBudgetError,
        InsufficientCreditsError,
        InvalidImageError,
        NotAcceptableError,
        PermissionDeniedError,
        RateLimitError,
        SendingStoppedError,
        ServerError,
        SharedStateError,
        UnexpectedResponseError,
    )
    from ._images.prepare import ImageSource, PreparedImage, PrepareOptions
    from ._normals.normalmap import NormalMap
    from ._normals.relight import DirectionalLight, SHLighting
    from ._normals.sheets import contact_sheet
    from ._normals.vectors import NormalConvention

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "CircuitOpenError",
    "Client",
    "ClientClosedError",
    "ClientHaltedError",
    "ClientStats",
    "ClipnormalsError",
    "CreditBudgetError",
    "CreditHold",
    "CreditLedger",
    "CreditPolicy",
    "DirectionalLight",
    "ImageSource",
    "InsufficientCreditsError",
    "InvalidImageError",
    "Ledger",
    "Limiter",
    "LocalLimiter",
    "MapItem",
    "MapIterator",
    "NormalConvention",
    "NormalMap",
    "NotAcceptableError",
    "PermissionDeniedError",
    "PrepareOptions",
    "PreparedImage",
    "RateLimit",
    "RateLimitError",
    "RetryPolicy",
    "SHLighting",
    "SendingStoppedError",
    "ServerError",
    "SharedStateError",
    "UnexpectedResponseError",
    "__version__",
    "contact_sheet",
]

# Public names are imported when first used (PEP 562): ``import clipnormals`` costs little, and
# numpy, Pillow and the client's machinery load with the first name that needs them.
_LAZY: dict[str, str] = {
    "APIConnectionError": "._errors",
    "APIStatusError": "._errors",
    "APITimeoutError": "._errors",
    "AsyncClient": "._core.client",
    "AuthenticationError": "._errors",
    "BadRequestError": "._errors",
    "CircuitOpenError": "._errors",
    "Client": "._core.sync",
    "ClientClosedError": "._errors",
    "ClientHaltedError": "._errors",
    "ClientStats": "._core.results",
    "ClipnormalsError": "._errors",
    "CreditBudgetError": "._errors",
    "CreditHold": "._core.credits",
    "CreditLedger": "._core.credits",
    "CreditPolicy": "._core.credits",
    "DirectionalLight": "._normals.relight",
    "ImageSource": "._images.prepare",
    "InsufficientCreditsError": "._errors",
    "InvalidImageError": "._errors",
    "Ledger": "._core.credits",
    "Limiter": "._core.limiter",
    "LocalLimiter": "._core.limiter",
    "MapItem": "._core.results",
    "MapIterator": "._core.map",
    "NormalConvention": "._normals.vectors",
    "NormalMap": "._normals.normalmap",
    "NotAcceptableError": "._errors",
    "PermissionDeniedError": "._errors",
    "PrepareOptions": "._images.prepare",
    "PreparedImage": "._images.prepare",
    "RateLimit": "._core.limiter",
    "RateLimitError": "._errors",
    "RetryPolicy": "._core.retry",
    "SHLighting": "._normals.relight",
    "SendingStoppedError": "._errors",
    "ServerError": "._errors",
    "SharedStateError": "._errors",
    "UnexpectedResponseError": "._errors",
    "contact_sheet": "._normals.sheets",
}

# Names that lived here before the batch runner and image preparation got modules of their own.
# They still work, with a DeprecationWarning, and are not in __all__.
_MOVED = {
    **dict.fromkeys(
        (
            "BatchConfig",
            "BatchControl",
            "BatchReporter",
            "BatchSummary",
            "DryRunReport",
            "ExitCode",
            "ManifestLockedError",
            "ManifestRecord",
            "RecordStatus",
            "dry_run",
            "read_manifest",
            "run_batch",
        ),
        "batch",
    ),
    "prepare_image": "images",
    "sniff_format": "images",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    home = _MOVED.get(name)
    if home is not None:
        import importlib
        import warnings

        warnings.warn(
            f"clipnormals.{name} moved to clipnormals.{home}.{name}; the old name will be "
            "removed in a future release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(f".{home}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
