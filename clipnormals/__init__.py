"""clipnormals: a quota-safe, credit-aware client for the Clipdrop Portrait Surface Normals API.

Example:
    >>> import clipnormals
    >>> async def main() -> None:
    ...     async with clipnormals.AsyncClient() as client:  # key from CLIPDROP_API_KEY
    ...         nm = await client.surface_normals("portrait.jpg")
    ...         nm.normals  # float32 (H, W, 3) unit vectors, +X right, +Y up, +Z to the viewer
    ...         nm.mask  # bool (H, W), True on the person

The batch runner behind ``clipnormals batch`` is in :mod:`clipnormals.batch`.

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
    from ._core.credits import CreditLedger, CreditPolicy
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
        UnexpectedResponseError,
    )
    from ._images.prepare import (
        ImageSource,
        PreparedImage,
        PrepareOptions,
        prepare_image,
        sniff_format,
    )
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
    "CreditLedger",
    "CreditPolicy",
    "DirectionalLight",
    "ImageSource",
    "InsufficientCreditsError",
    "InvalidImageError",
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
    "UnexpectedResponseError",
    "__version__",
    "contact_sheet",
    "prepare_image",
    "sniff_format",
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
    "CreditLedger": "._core.credits",
    "CreditPolicy": "._core.credits",
    "DirectionalLight": "._normals.relight",
    "ImageSource": "._images.prepare",
    "InsufficientCreditsError": "._errors",
    "InvalidImageError": "._errors",
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
    "UnexpectedResponseError": "._errors",
    "contact_sheet": "._normals.sheets",
    "prepare_image": "._images.prepare",
    "sniff_format": "._images.prepare",
}

# Names that lived here before the batch runner got its own module. They still work, with a
# DeprecationWarning, and are not in __all__.
_MOVED_TO_BATCH = frozenset(
    {
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
    }
)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MOVED_TO_BATCH:
        import warnings

        from . import batch

        warnings.warn(
            f"clipnormals.{name} moved to clipnormals.batch.{name}; the old name will be "
            "removed in a future release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
