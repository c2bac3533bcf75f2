"""The batch runner: a folder of portraits in, a folder of normal maps out, one credit per image.

What ``clipnormals batch`` runs, for Python programs: find the images, skip what an earlier run
finished (by content hash and an intact output), upload each distinct image once through an
:class:`~clipnormals.AsyncClient`, write every output atomically and record it in a JSONL
manifest. See the ``batch`` page of the documentation for the guarantees.

Example:
    >>> from pathlib import Path
    >>> import clipnormals
    >>> from clipnormals.batch import BatchConfig, run_batch
    >>> async def main() -> None:
    ...     config = BatchConfig(inputs=["portraits"], output_dir=Path("normals"), npz=True)
    ...     async with clipnormals.AsyncClient(max_concurrency=8) as client:
    ...         summary = await run_batch(config, client=client)
    ...     print(summary.done, summary.skipped, summary.failed, summary.credits_consumed)
"""

from ._batch.config import BatchConfig
from ._batch.control import BatchControl
from ._batch.dryrun import DryRunReport, dry_run
from ._batch.errors import (
    BatchInputError,
    ManifestPathError,
    OutputFolderError,
    SendingStoppedError,
)
from ._batch.events import (
    Aborting,
    Adopted,
    BatchReporter,
    Hashed,
    NullReporter,
    Phase,
    Scanning,
    SheetsWritten,
    Stopping,
)
from ._batch.manifest import (
    Geometry,
    ManifestLockedError,
    ManifestRecord,
    ManifestWriteError,
    RecordStatus,
    read_manifest,
)
from ._batch.outcomes import ExitCode, StopReason
from ._batch.progress import BatchProgress, BatchSummary
from ._batch.runner import run_batch

__all__ = [
    "Aborting",
    "Adopted",
    "BatchConfig",
    "BatchControl",
    "BatchInputError",
    "BatchProgress",
    "BatchReporter",
    "BatchSummary",
    "DryRunReport",
    "ExitCode",
    "Geometry",
    "Hashed",
    "ManifestLockedError",
    "ManifestPathError",
    "ManifestRecord",
    "ManifestWriteError",
    "NullReporter",
    "OutputFolderError",
    "Phase",
    "RecordStatus",
    "Scanning",
    "SendingStoppedError",
    "SheetsWritten",
    "StopReason",
    "Stopping",
    "dry_run",
    "read_manifest",
    "run_batch",
]
