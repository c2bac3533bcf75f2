"""What an outcome means for a run, in one table: record status, stop reason, exit code, words.

Every error an image can end with is looked up in :data:`RULES` (first match wins): it gives the
image's :class:`RecordStatus` and, for errors that make every later image fail the same way,
the :class:`StopReason` that stops the run. Each stop reason has one row in :data:`STOPS`: its
exit code, the sentence the summary prints, the reason recorded on the images it left unsent,
and the one line of advice the command ends with. :class:`ExitCode` describes every code the
command can end with; the command's help text and the README's table are made from it (a test
holds the README to it).

The codes above 4 are the BSD ``sysexits.h`` values for the same situations, so shell scripts
and supervisors that know them need no table of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from .._core.credits import Ledger
from .._errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    CircuitOpenError,
    ClientClosedError,
    ClientHaltedError,
    ClipnormalsError,
    CreditBudgetError,
    InsufficientCreditsError,
    InvalidImageError,
    PermissionDeniedError,
    SharedStateError,
)
from .errors import BatchInputError, OutputFolderError, SendingStoppedError
from .manifest import ManifestLockedError, ManifestWriteError, RecordStatus

__all__ = [
    "RULES",
    "STOPS",
    "ExitCode",
    "RunContext",
    "SendingStoppedError",
    "Stop",
    "StopReason",
    "Verdict",
    "classify",
    "exit_code_for",
    "exit_code_help",
    "exit_code_table",
]


class ExitCode(IntEnum):
    """The process exit codes of ``clipnormals batch`` (and ``normals``), for scripts to act on.

    When several apply, the most urgent wins, in this order: 130, 70, 4, 69, 73, 3, 1.
    :attr:`meaning` says what each one means.

    Example:
        >>> ExitCode.UNAVAILABLE.value, ExitCode.UNAVAILABLE.meaning[:28]
        (69, 'the server, or the Redis ser')
    """

    OK = 0
    FAILED = 1
    USAGE = 2
    CREDITS = 3
    AUTH = 4
    UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
    SOFTWARE = 70  # sysexits EX_SOFTWARE
    CANTCREAT = 73  # sysexits EX_CANTCREAT
    INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C

    @property
    def meaning(self) -> str:
        """One sentence: when the command ends with this code."""
        return _MEANINGS[self]


_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "every image done, or already done by an earlier run",
    ExitCode.FAILED: "some images failed or were rejected before upload; the others are done",
    ExitCode.USAGE: (
        "bad usage: an option, a missing or unreadable input, no API key, or an output "
        "folder another run is using; nothing was sent"
    ),
    ExitCode.CREDITS: (
        "stopped for credits (the account ran out, --max-credits or --reserve was reached); "
        "the images left are recorded not_sent"
    ),
    ExitCode.AUTH: "the server refused the API key (401/403); nothing more was sent",
    ExitCode.UNAVAILABLE: (
        "the server, or the Redis server of --redis-url, cannot be reached (sysexits "
        "EX_UNAVAILABLE); the images left are recorded not_sent"
    ),
    ExitCode.SOFTWARE: (
        "an internal error (sysexits EX_SOFTWARE); the message says where the full "
        "traceback was written"
    ),
    ExitCode.CANTCREAT: (
        "the output folder or the manifest cannot be written (sysexits EX_CANTCREAT): found "
        "before the first request, nothing was sent; during a run, sending stops"
    ),
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); the images left are recorded not_sent",
}

# Most urgent first: the code a run ends with when several apply.
_PRECEDENCE = (
    ExitCode.INTERRUPTED,
    ExitCode.SOFTWARE,
    ExitCode.AUTH,
    ExitCode.UNAVAILABLE,
    ExitCode.CANTCREAT,
    ExitCode.CREDITS,
    ExitCode.FAILED,
    ExitCode.OK,
)


def most_urgent(codes: set[ExitCode]) -> ExitCode:
    """The code that wins when several apply.

    Example:
        >>> most_urgent({ExitCode.FAILED, ExitCode.CREDITS})
        <ExitCode.CREDITS: 3>
    """
    return next((c for c in _PRECEDENCE if c in codes), ExitCode.OK)


class StopReason(StrEnum):
    """Why a run stopped sending before the end (:attr:`BatchSummary.stopped`)."""

    CREDITS = "credits"  # the account ran out (a 402, or the reported balance reached 0)
    BUDGET = "budget"  # the client's CreditPolicy(budget=...) (--max-credits) was reached
    RESERVE = "reserve"  # the client's CreditPolicy(reserve=...) (--reserve) was reached
    AUTH = "auth"  # the server refused the key (401, 403)
    UNREACHABLE = "unreachable"  # the server could not be reached
    CANNOT_WRITE = "cannot_write"  # an output could not be written (a full disk...)
    INTERRUPTED = "interrupted"  # BatchControl.stop() or abort(): Ctrl-C, SIGTERM
    SHARED_STATE = "shared_state"  # the Redis server sharing the key could not be reached


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop:
    """One stop reason's row: its exit code and its words.

    Attributes:
        exit_code: what the command ends with.
        summary: why sending stopped, for the summary (``{detail}`` is the stopping error's
            own detail, e.g. the host that could not be reached).
        not_sent: the ``error`` recorded on the images it left unsent.
        error_type: the ``error_type`` recorded on them.
        advice: the one line the command ends with, or ``""``.
    """

    exit_code: ExitCode
    summary: str
    not_sent: str
    error_type: str
    advice: str


STOPS: dict[StopReason, Stop] = {
    StopReason.CREDITS: Stop(
        exit_code=ExitCode.CREDITS,
        summary="the account is out of credits",
        not_sent="not sent: the account ran out of credits",
        error_type="CreditBudgetError",
        advice="top up the account, then run the same command again to send the rest",
    ),
    StopReason.BUDGET: Stop(
        exit_code=ExitCode.CREDITS,
        summary="the credit budget (--max-credits) was reached",
        not_sent="not sent: the credit budget of this run was reached",
        error_type="CreditBudgetError",
        advice="run the same command again (with a higher --max-credits) to send the rest",
    ),
    StopReason.RESERVE: Stop(
        exit_code=ExitCode.CREDITS,
        summary="the credit reserve (--reserve) was reached",
        not_sent="not sent: the credits left are the reserve",
        error_type="CreditBudgetError",
        advice="top up the account or lower --reserve, then run the same command again",
    ),
    StopReason.AUTH: Stop(
        exit_code=ExitCode.AUTH,
        summary="the server refused the API key",
        not_sent="not sent: the server refused the API key",
        error_type="ClientHaltedError",
        advice="check the API key (CLIPDROP_API_KEY, or the variable --api-key-env names)",
    ),
    StopReason.UNREACHABLE: Stop(
        exit_code=ExitCode.UNAVAILABLE,
        summary="cannot reach the server ({detail})",
        not_sent="not sent: cannot reach the server ({detail})",
        error_type="CircuitOpenError",
        advice="check --base-url and the network, then run the same command again",
    ),
    StopReason.CANNOT_WRITE: Stop(
        exit_code=ExitCode.CANTCREAT,
        summary="cannot write the outputs: {detail}",
        not_sent="not sent: the outputs could not be written",
        error_type="OSError",
        advice="make room or fix the output folder's permissions, then run the same command again",
    ),
    StopReason.SHARED_STATE: Stop(
        exit_code=ExitCode.UNAVAILABLE,
        summary="cannot reach the Redis server that shares the key ({detail})",
        not_sent="not sent: cannot reach the Redis server that shares the key",
        error_type="SharedStateError",
        advice="check --redis-url and the Redis server, then run the same command again",
    ),
    StopReason.INTERRUPTED: Stop(
        exit_code=ExitCode.INTERRUPTED,
        summary="interrupted",
        not_sent="not sent: the run was interrupted",
        error_type="Interrupted",
        advice="run the same command again to send the rest (nothing is paid twice)",
    ),
}


@dataclass(frozen=True, slots=True)
class RunContext:
    """What the rules may look at besides the error: the client's state when it was raised.

    Attributes:
        ledger: the client's credit ledger (its policy tells a budget from a reserve).
        responses: HTTP responses the client has received so far (0: it never reached the
            server).
    """

    ledger: Ledger | None = None
    responses: int = 1


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of an image that ended with an error, and whether the run stops."""

    status: RecordStatus
    stop: StopReason | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One row of :data:`RULES`: errors of ``error`` (and, if given, ``when``) -> outcome."""

    error: type[ClipnormalsError]
    status: RecordStatus
    stop: StopReason | Callable[[ClipnormalsError, RunContext], StopReason] | None
    when: Callable[[ClipnormalsError, RunContext], bool] | None = None
    what: str = ""


def _credit_stop(_error: ClipnormalsError, context: RunContext) -> StopReason:
    ledger = context.ledger
    if ledger is None:
        return StopReason.CREDITS
    policy = ledger.policy
    # The ledger's own rule: unanswered attempts count against the budget for good.
    spent = ledger.consumed + ledger.uncertain + ledger.reserved
    if policy.budget is not None and spent + ledger.unit > policy.budget:
        return StopReason.BUDGET
    if policy.reserve > 0:
        return StopReason.RESERVE
    return StopReason.CREDITS


def _halt_stop(error: ClipnormalsError, _context: RunContext) -> StopReason:
    if isinstance(error, ClientHaltedError) and isinstance(error.cause, InsufficientCreditsError):
        return StopReason.CREDITS
    return StopReason.AUTH


def _never_connected(error: ClipnormalsError, context: RunContext) -> bool:
    return context.responses == 0 and not isinstance(error, APITimeoutError)


#: Error class -> record status and stop reason. Ordered: subclasses before their bases.
RULES: tuple[Rule, ...] = (
    Rule(InvalidImageError, RecordStatus.INVALID, None, what="rejected before upload"),
    Rule(
        CreditBudgetError,
        RecordStatus.NOT_SENT,
        _credit_stop,
        what="the client refused to spend more (reserve, budget, or no balance left)",
    ),
    Rule(
        ClientHaltedError,
        RecordStatus.NOT_SENT,
        _halt_stop,
        what="an earlier 402 or 403 halted the client",
    ),
    Rule(
        SendingStoppedError,
        RecordStatus.NOT_SENT,
        StopReason.INTERRUPTED,
        what="the run stopped before the request could start",
    ),
    Rule(
        ClientClosedError,
        RecordStatus.NOT_SENT,
        StopReason.INTERRUPTED,
        what="the client was closed under the run",
    ),
    Rule(
        CircuitOpenError,
        RecordStatus.NOT_SENT,
        StopReason.UNREACHABLE,
        what="the client stopped trying to connect",
    ),
    Rule(
        SharedStateError,
        RecordStatus.NOT_SENT,
        StopReason.SHARED_STATE,
        what="the Redis server sharing the key failed before the request was sent",
    ),
    Rule(
        APIConnectionError,
        RecordStatus.FAILED,
        StopReason.UNREACHABLE,
        when=_never_connected,
        what="no connection ever succeeded",
    ),
    Rule(
        InsufficientCreditsError,
        RecordStatus.FAILED,
        StopReason.CREDITS,
        what="402: the account is out of credits",
    ),
    Rule(
        AuthenticationError,
        RecordStatus.FAILED,
        StopReason.AUTH,
        what="401: the key was not accepted",
    ),
    Rule(
        PermissionDeniedError,
        RecordStatus.FAILED,
        StopReason.AUTH,
        what="403: the key is invalid or revoked",
    ),
    Rule(ClipnormalsError, RecordStatus.FAILED, None, what="failed; the next run retries it"),
)


def classify(error: ClipnormalsError, context: RunContext | None = None) -> Verdict:
    """The manifest status of an image that ended with ``error``, and the reason to stop
    sending anything else (``None``: go on).

    Example:
        >>> classify(InvalidImageError("not an image"))
        Verdict(status=<RecordStatus.INVALID: 'invalid'>, stop=None, detail='not an image')
        >>> classify(CircuitOpenError("circuit open", host="api.example")).stop
        <StopReason.UNREACHABLE: 'unreachable'>
    """
    context = context or RunContext()
    for rule in RULES:
        if not isinstance(error, rule.error):
            continue
        if rule.when is not None and not rule.when(error, context):
            continue
        stop = rule.stop(error, context) if callable(rule.stop) else rule.stop
        return Verdict(rule.status, stop, _detail(error))
    raise AssertionError("unreachable: the last rule matches every ClipnormalsError")


def _detail(error: ClipnormalsError) -> str:
    host = getattr(error, "host", None)
    if isinstance(error, CircuitOpenError) and host:
        return str(host)
    return error.message


#: Errors that end a run before (or instead of) any record: error class -> exit code.
RUN_ERRORS: tuple[tuple[type[ClipnormalsError], ExitCode], ...] = (
    (BatchInputError, ExitCode.USAGE),
    (ManifestLockedError, ExitCode.USAGE),
    (OutputFolderError, ExitCode.CANTCREAT),
    (ManifestWriteError, ExitCode.CANTCREAT),
    (SharedStateError, ExitCode.UNAVAILABLE),
)


def exit_code_for(error: ClipnormalsError) -> ExitCode | None:
    """The exit code for an error that ended a run without a summary, ``None`` when the
    error is not one a run ends with (then it is an internal error).

    Example:
        >>> exit_code_for(OutputFolderError("out is read-only"))
        <ExitCode.CANTCREAT: 73>
    """
    return next((code for cls, code in RUN_ERRORS if isinstance(error, cls)), None)


def exit_code_help() -> str:
    """The exit codes as one paragraph, for the command's help text.

    Example:
        >>> exit_code_help().startswith("Exit codes: 0 every image done")
        True
    """
    parts = [f"{code.value} {code.meaning}" for code in ExitCode]
    return "Exit codes: " + "; ".join(parts) + "."


def exit_code_table() -> str:
    """The exit codes as a Markdown table (the README's copy is checked against this)."""
    rows = ["| code | meaning |", "|---|---|"]
    rows.extend(f"| {code.value} | {code.meaning} |" for code in ExitCode)
    order = ", ".join(str(c.value) for c in _PRECEDENCE if c is not ExitCode.OK)
    rows.append("")
    rows.append(f"When several apply, the first of {order} wins.")
    return "\n".join(rows)
