"""clipnormals: a quota-safe, credit-aware client for the Clipdrop Portrait Surface Normals API.

Example:
    >>> import clipnormals
    >>> async def main() -> None:
    ...     async with clipnormals.AsyncClient() as client:  # key from CLIPDROP_API_KEY
    ...         nm = await client.surface_normals("portrait.jpg")
    ...         nm.normals  # float32 (H, W, 3) unit vectors, +X right, +Y up, +Z to the viewer
    ...         nm.mask  # bool (H, W), True on the person

The client is asyncio-only; ``Client`` is the blocking facade for scripts and notebooks.
``clipnormals.emulator`` is a local stand-in for the API and ``clipnormals.testing`` has pytest
fixtures built on it.
"""

from ._batch import run_batch
from ._batch_types import BatchConfig, BatchControl, BatchReporter, BatchSummary, ExitCode
from ._client import AsyncClient, Endpoint
from ._credits import CreditLedger, CreditPolicy
from ._dryrun import DryRunReport, dry_run
from ._exceptions import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
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
from ._limiter import Limiter, LocalLimiter, RateLimit
from ._manifest import ManifestLockedError, ManifestRecord, RecordStatus, read_manifest
from ._map import MapIterator
from ._normalmap import NormalMap
from ._pictures import contact_sheet
from ._prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image, sniff_format
from ._relight import DirectionalLight, SHLighting
from ._results import ClientStats, MapItem
from ._retry import RetryPolicy
from ._sync import Client
from ._vectors import NormalConvention
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchConfig",
    "BatchControl",
    "BatchReporter",
    "BatchSummary",
    "Client",
    "ClientClosedError",
    "ClientStats",
    "ClipnormalsError",
    "CreditBudgetError",
    "CreditLedger",
    "CreditPolicy",
    "DirectionalLight",
    "DryRunReport",
    "Endpoint",
    "ExitCode",
    "ImageSource",
    "InsufficientCreditsError",
    "InvalidImageError",
    "Limiter",
    "LocalLimiter",
    "ManifestLockedError",
    "ManifestRecord",
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
    "RecordStatus",
    "RetryPolicy",
    "SHLighting",
    "ServerError",
    "UnexpectedResponseError",
    "__version__",
    "contact_sheet",
    "dry_run",
    "prepare_image",
    "read_manifest",
    "run_batch",
    "sniff_format",
]
