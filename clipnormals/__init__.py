"""clipnormals: a quota-safe, credit-aware client for the Clipdrop Portrait Surface Normals API.

Example:
    >>> import clipnormals
    >>> async def main() -> None:
    ...     async with clipnormals.AsyncClient() as client:  # key from CLIPDROP_API_KEY
    ...         nm = await client.surface_normals("portrait.jpg")
    ...         nm.normals  # float32 (H, W, 3) unit vectors, +X right, +Y up, +Z to the viewer
    ...         nm.mask  # bool (H, W), True on the person

The batch runner behind ``clipnormals batch`` is in :mod:`clipnormals.batch`.

The client is asyncio-only (its rate limiter is built on aiolimiter); ``Client`` is the blocking
facade for scripts and notebooks. ``clipnormals.emulator`` is a local stand-in for the API and
``clipnormals.testing`` has pytest fixtures built on it.
"""

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
    ServerError,
    UnexpectedResponseError,
)
from ._images.prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image, sniff_format
from ._normals.normalmap import NormalMap
from ._normals.relight import DirectionalLight, SHLighting
from ._normals.sheets import contact_sheet
from ._normals.vectors import NormalConvention
from ._version import __version__

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
    "ServerError",
    "UnexpectedResponseError",
    "__version__",
    "contact_sheet",
    "prepare_image",
    "sniff_format",
]

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
