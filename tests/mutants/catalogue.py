"""The mutants ``run.py`` applies: realistic slips, each with the tests that must notice it.

Each entry names its module (the score is kept per module; :data:`CRITICAL` are the modules the
final line scores), the file, one or more exact edits (``original`` must occur exactly once in
the file), the tests to run (files or node ids; a path under ``clipnormals/`` adds that module's
doctests), and what the slip is. Keep each mutant a mistake someone could make and a reviewer
could miss; a mutant that cannot change behaviour (an equivalent mutant) does not belong here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CRITICAL", "MUTANTS", "Mutant"]

CRITICAL = frozenset(
    {
        "limiter",
        "credits",
        "retry",
        "errors",
        "preparation",
        "atomic",
        "manifest",
        "plan",
        "redis-limiter",
    }
)


@dataclass(frozen=True)
class Mutant:
    id: str
    module: str
    file: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]
    description: str
    redis: bool = False
    timeout: float | None = None


MUTANTS: list[Mutant] = []


def mutant(
    id: str,
    module: str,
    file: str,
    original: str | tuple[tuple[str, str], ...],
    replacement: str | None = None,
    *,
    tests: tuple[str, ...],
    why: str,
    redis: bool = False,
    timeout: float | None = None,
) -> None:
    edits = original if isinstance(original, tuple) else ((original, replacement or ""),)
    MUTANTS.append(Mutant(id, module, file, edits, tests, why, redis, timeout))


# --- errors: clipnormals/_errors.py -----------------------------------------------------------

ERRORS = "clipnormals/_errors.py"
ERRORS_TESTS = (
    "tests/test_errors.py",
    "tests/test_secrets.py",
    "tests/test_client.py",
    ERRORS,
)

mutant(
    "errors-api-key-header-kept",
    "errors",
    ERRORS,
    '    {"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"}',
    '    {"authorization", "proxy-authorization", "cookie", "set-cookie"}',
    tests=ERRORS_TESTS,
    why="the x-api-key header is kept in an error's headers",
)
mutant(
    "errors-500-not-a-server-error",
    "errors",
    ERRORS,
    "if 500 <= status <= 599:",
    "if 500 < status <= 599:",
    tests=ERRORS_TESTS,
    why="off by one: a plain 500 is not a ServerError (so never retried)",
)
mutant(
    "errors-402-as-403",
    "errors",
    ERRORS,
    "    402: InsufficientCreditsError,\n    403: PermissionDeniedError,",
    "    402: PermissionDeniedError,\n    403: InsufficientCreditsError,",
    tests=ERRORS_TESTS,
    why="402 and 403 swapped in the status table",
)
mutant(
    "errors-406-unexpected",
    "errors",
    ERRORS,
    "    406: NotAcceptableError,\n",
    "",
    tests=ERRORS_TESTS,
    why="406 left out of the status table (an UnexpectedResponseError)",
)
mutant(
    "errors-no-percent-encoded-scrub",
    "errors",
    ERRORS,
    'forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}',
    "forms = {secret, json.dumps(secret)[1:-1]}",
    tests=ERRORS_TESTS,
    why="a percent-encoded echo of the key is not scrubbed",
)
mutant(
    "errors-no-json-escaped-scrub",
    "errors",
    ERRORS,
    'forms = {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe="")}',
    'forms = {secret, urllib.parse.quote(secret, safe="")}',
    tests=ERRORS_TESTS,
    why="a JSON-escaped echo of the key is not scrubbed",
)
mutant(
    "errors-body-not-scrubbed",
    "errors",
    ERRORS,
    "self.body = scrub_bytes(body, secret)[:_MAX_BODY_KEPT]",
    "self.body = body[:_MAX_BODY_KEPT]",
    tests=ERRORS_TESTS,
    why="the response body kept on an error is not scrubbed of the key",
)
mutant(
    "errors-error-text-not-scrubbed",
    "errors",
    ERRORS,
    "self.error = scrub(error, secret) if error is not None else None",
    "self.error = error",
    tests=ERRORS_TESTS,
    why="the server's error text kept on an error is not scrubbed of the key",
)
mutant(
    "errors-message-not-scrubbed",
    "errors",
    ERRORS,
    "        message = scrub(message, secret)\n        super().__init__(message)",
    "        super().__init__(message)",
    tests=ERRORS_TESTS,
    why="an error's message (built from the server's words) is not scrubbed of the key",
)
mutant(
    "errors-snippet-quoted-before-scrub",
    "errors",
    ERRORS,
    "_describe_body(scrub_bytes(body, secret), headers)",
    "_describe_body(body, headers)",
    tests=ERRORS_TESTS,
    why="a snippet of a non-JSON body is quoted (escaped) before the key is scrubbed from it",
)
mutant(
    "errors-retry-after-negative",
    "errors",
    ERRORS,
    "    return max(0.0, seconds)",
    "    return seconds",
    tests=ERRORS_TESTS,
    why="a Retry-After in the past gives a negative wait",
)
mutant(
    "errors-retry-after-date-sign",
    "errors",
    ERRORS,
    "seconds = when.timestamp() - (time.time() if now is None else now)",
    "seconds = (time.time() if now is None else now) - when.timestamp()",
    tests=ERRORS_TESTS,
    why="a Retry-After HTTP date is subtracted the wrong way round",
)
mutant(
    "errors-retry-after-inf",
    "errors",
    ERRORS,
    "    if math.isnan(seconds) or math.isinf(seconds):\n        return None\n",
    "",
    tests=ERRORS_TESTS,
    why="Retry-After: nan or inf is taken as a number",
)
mutant(
    "errors-error-field-only",
    "errors",
    ERRORS,
    'for key in ("error", "message", "detail"):',
    'for key in ("error",):',
    tests=ERRORS_TESTS,
    why="a gateway's {'message': ...} body is not read for the error text",
)

# --- retry: clipnormals/_core/retry.py --------------------------------------------------------

RETRY = "clipnormals/_core/retry.py"
RETRY_TESTS = (
    "tests/test_retries.py",
    "tests/test_client.py",
    "tests/test_circuit.py",
    RETRY,
)

mutant(
    "retry-429-backoff-on-top",
    "retry",
    RETRY,
    "            if isinstance(exc, RateLimitError):\n"
    "                return 0.0  # the limiter's shared cooldown is the wait\n",
    "",
    tests=RETRY_TESTS,
    why="a 429 retry waits its own backoff on top of the shared cooldown (and uses an attempt)",
)
mutant(
    "retry-429-uses-attempts",
    "retry",
    RETRY,
    (
        (
            "            exc = state.outcome.exception() if state.outcome else None\n"
            "            if isinstance(exc, RateLimitError):",
            "            exc = state.outcome.exception() if state.outcome else None\n"
            "            errors += 1\n"
            "            if isinstance(exc, RateLimitError):",
        ),
        (
            "  # until the probe may tell; not an attempt of its own\n            errors += 1\n",
            "  # until the probe may tell; not an attempt of its own\n",
        ),
    ),
    tests=RETRY_TESTS,
    why="429s waited out as asked still use up attempts",
)
mutant(
    "retry-retry-after-uncapped-on-5xx",
    "retry",
    RETRY,
    "return min(exc.retry_after, policy.max_retry_after)",
    "return exc.retry_after",
    tests=RETRY_TESTS,
    why="a 503's Retry-After is not capped at max_retry_after",
)
mutant(
    "retry-retry-after-ignored-on-5xx",
    "retry",
    RETRY,
    "            if isinstance(exc, APIStatusError) and exc.retry_after is not None:\n"
    "                return min(exc.retry_after, policy.max_retry_after)\n",
    "",
    tests=RETRY_TESTS,
    why="a 503's Retry-After is ignored (plain backoff instead)",
)
mutant(
    "retry-429-retry-after-uncapped",
    "retry",
    RETRY,
    "return min(max(retry_after, 0.0), self.max_retry_after)",
    "return max(retry_after, 0.0)",
    tests=RETRY_TESTS,
    why="a 429's Retry-After is not capped at max_retry_after (only max_cooldown applies)",
)
mutant(
    "retry-one-attempt-too-many",
    "retry",
    RETRY,
    "if errors >= policy.attempts:",
    "if errors > policy.attempts:",
    tests=RETRY_TESTS,
    why="off by one: one attempt more than the policy allows",
)
mutant(
    "retry-total-ignores-upcoming-sleep",
    "retry",
    RETRY,
    "return elapsed() + upcoming >= policy.total",
    "return elapsed() >= policy.total",
    tests=RETRY_TESTS,
    why="a wait that would end past the total is slept before giving up",
)
mutant(
    "retry-circuit-open-retried",
    "retry",
    RETRY,
    "            return self.retry_connection_errors and exc.retry_in is not None\n",
    "            return self.retry_connection_errors\n",
    tests=RETRY_TESTS,
    why="a final CircuitOpenError (the probe failed, or a server never reached) is retried",
)
mutant(
    "retry-connection-errors-always",
    "retry",
    RETRY,
    "            return self.retry_connection_errors\n        return False",
    "            return True\n        return False",
    tests=RETRY_TESTS,
    why="retry_connection_errors=False is ignored",
)
mutant(
    "retry-server-errors-flag",
    "retry",
    RETRY,
    "            return self.retry_server_errors",
    "            return self.retry_rate_limited",
    tests=RETRY_TESTS,
    why="5xx retries follow the 429 flag",
)
mutant(
    "retry-non-retryable-retried",
    "retry",
    RETRY,
    "            return self.retry_connection_errors\n        return False",
    "            return self.retry_connection_errors\n"
    "        return isinstance(exc, APIStatusError)",
    tests=RETRY_TESTS,
    why="400/401/402/403/406 are retried like 5xx",
)
mutant(
    "retry-backoff-uncapped",
    "retry",
    RETRY,
    "window = min(self.max_backoff, self.initial * 2.0 ** max(retry - 1, 0))\n        return (rng",
    "window = self.initial * 2.0 ** max(retry - 1, 0)\n        return (rng",
    tests=RETRY_TESTS,
    why="the backoff window is not capped at max_backoff",
)
mutant(
    "retry-backoff-first-window-doubled",
    "retry",
    RETRY,
    "window = min(self.max_backoff, self.initial * 2.0 ** max(retry - 1, 0))\n        return (rng",
    "window = min(self.max_backoff, self.initial * 2.0**retry)\n        return (rng",
    tests=RETRY_TESTS,
    why="off by one: the first retry's window is 2 * initial",
)
mutant(
    "retry-429-pause-can-be-zero",
    "retry",
    RETRY,
    "return random.uniform(window / 2, window)",
    "return random.uniform(0.0, window)",
    tests=RETRY_TESTS,
    why="the shared pause after a 429 without Retry-After may be ~0",
)
mutant(
    "retry-429-pause-ignores-streak",
    "retry",
    RETRY,
    "window = min(self.max_backoff, self.initial * 2.0 ** max(streak - 1, 0))",
    "window = min(self.max_backoff, self.initial)",
    tests=RETRY_TESTS,
    why="the 429 pause does not grow with consecutive 429s",
)
mutant(
    "retry-attempt-deadline-ignores-total",
    "retry",
    RETRY,
    "return max(0.0, min(self.attempt_timeout, self.total - (now - started)))",
    "return self.attempt_timeout",
    tests=RETRY_TESTS,
    why="an attempt may run past what is left of the total",
)
mutant(
    "retry-tenacity-error-leaks",
    "retry",
    RETRY,
    "            reraise=True,",
    "            reraise=False,",
    tests=RETRY_TESTS,
    why="users see tenacity.RetryError instead of the last error",
)
mutant(
    "retry-attempts-zero-allowed",
    "retry",
    RETRY,
    'require_int("RetryPolicy.attempts", self.attempts, minimum=1)',
    'require_int("RetryPolicy.attempts", self.attempts, minimum=0)',
    tests=RETRY_TESTS,
    why="RetryPolicy(attempts=0) is accepted",
)

# --- credits: clipnormals/_core/credits.py ----------------------------------------------------

CREDITS = "clipnormals/_core/credits.py"
CREDITS_TESTS = ("tests/test_ledger.py", "tests/test_credits.py", "tests/test_client.py", CREDITS)

mutant(
    "credits-budget-off-by-one",
    "credits",
    CREDITS,
    "self.consumed + self.uncertain + self.reserved + cost > budget",
    "self.consumed + self.uncertain + self.reserved + cost >= budget",
    tests=CREDITS_TESTS,
    why="off by one: a budget of n allows n - 1",
)
mutant(
    "credits-budget-ignores-uncertain",
    "credits",
    CREDITS,
    "self.consumed + self.uncertain + self.reserved + cost > budget",
    "self.consumed + self.reserved + cost > budget",
    tests=CREDITS_TESTS,
    why="unanswered (maybe charged) attempts do not count against the budget",
)
mutant(
    "credits-budget-ignores-reserved",
    "credits",
    CREDITS,
    "self.consumed + self.uncertain + self.reserved + cost > budget",
    "self.consumed + self.uncertain + cost > budget",
    tests=CREDITS_TESTS,
    why="attempts in flight do not count against the budget",
)
mutant(
    "credits-reserve-off-by-one",
    "credits",
    CREDITS,
    "if after < self.policy.reserve:",
    "if after <= self.policy.reserve:",
    tests=CREDITS_TESTS,
    why="off by one: one credit more than the reserve is kept back",
)
mutant(
    "credits-balance-ignores-reserved",
    "credits",
    CREDITS,
    "after = self.remaining - self.reserved - self._unreported - cost",
    "after = self.remaining - self._unreported - cost",
    tests=CREDITS_TESTS,
    why="the balance check forgets the attempts in flight (402s under concurrency)",
)
mutant(
    "credits-balance-ignores-unreported",
    "credits",
    CREDITS,
    "after = self.remaining - self.reserved - self._unreported - cost",
    "after = self.remaining - self.reserved - cost",
    tests=CREDITS_TESTS,
    why="the balance check forgets unanswered attempts no balance has covered yet",
)
mutant(
    "credits-release-lost",
    "credits",
    CREDITS,
    "    def _release(self, reservation: Reservation) -> None:\n"
    "        self.reserved -= reservation.amount\n",
    "    def _release(self, reservation: Reservation) -> None:\n",
    tests=CREDITS_TESTS,
    why="a reservation of a request that never left is not given back",
)
mutant(
    "credits-release-never-called",
    "credits",
    CREDITS,
    "        if self._reservation is not None:\n            self._reservation.release()",
    "        pass",
    tests=CREDITS_TESTS,
    why="an attempt that raises before settling keeps its reservation",
)
mutant(
    "credits-proxy-200-charged",
    "credits",
    CREDITS,
    "    if status == 200 and (\n"
    '        remaining is not None or headers.get("content-type", "").startswith("image/")\n'
    "    ):",
    "    if status == 200:",
    tests=CREDITS_TESTS,
    why="a 200 that is not the API's (a proxy's page) is counted as a charge",
)
mutant(
    "credits-answer-costs-one",
    "credits",
    CREDITS,
    "        return amount  # the API's answer, from a version that does not say the cost",
    "        return 1",
    tests=CREDITS_TESTS,
    why="an answer without x-credits-consumed costs 1, not the unit seen",
)
mutant(
    "credits-error-charged",
    "credits",
    CREDITS,
    "        return amount  # the API's answer, from a version that does not say the cost\n"
    "    return 0\n",
    "        return amount  # the API's answer, from a version that does not say the cost\n"
    "    return amount\n",
    tests=CREDITS_TESTS,
    why="answers that cost nothing (errors, a proxy's 200) are counted as charges",
)
mutant(
    "credits-unanswered-not-uncertain",
    "credits",
    CREDITS,
    "            self.uncertain += reservation.amount\n",
    "",
    tests=CREDITS_TESTS,
    why="an attempt that got no answer is not counted as possibly charged",
)
mutant(
    "credits-stale-balance-believed",
    "credits",
    CREDITS,
    "        if (\n"
    "            self.remaining is None\n"
    "            or reported <= self.remaining\n"
    "            or reported > self.remaining + stale_at_most\n"
    "        ):\n"
    "            self.remaining = reported",
    "        self.remaining = reported",
    tests=CREDITS_TESTS,
    why="every reported balance is believed, a stale one from a slow answer included",
)
mutant(
    "credits-topup-never-believed",
    "credits",
    CREDITS,
    "            or reported > self.remaining + stale_at_most\n",
    "",
    tests=CREDITS_TESTS,
    why="a balance that went up (a top-up) is never believed",
)
mutant(
    "credits-in-between-ignores-in-flight",
    "credits",
    CREDITS,
    "            - reservation.consumed_at_start\n            + self.reserved\n",
    "            - reservation.consumed_at_start\n",
    tests=CREDITS_TESTS,
    why="a stale balance is recognised without counting attempts still in flight",
)
mutant(
    "credits-no-probe",
    "credits",
    CREDITS,
    "                if not (probe and self._probing):",
    "                if True:",
    tests=CREDITS_TESTS,
    why="more than one attempt in flight before the balance is known",
)
mutant(
    "credits-gives-up-while-in-flight",
    "credits",
    CREDITS,
    "            elif self.reserved == 0:\n",
    "            else:\n",
    tests=CREDITS_TESTS,
    why="refuses at once when attempts in flight could still give credits back",
)
mutant(
    "credits-unit-not-learned",
    "credits",
    CREDITS,
    "            if consumed_header > self.unit:\n                self.unit = consumed_header\n",
    "",
    tests=CREDITS_TESTS,
    why="the cost of a call is never learned from x-credits-consumed",
)
mutant(
    "credits-negative-header",
    "credits",
    CREDITS,
    "    if value < 0 or value > _MAX_CREDITS.get(name.lower(), 10**12):",
    "    if value > _MAX_CREDITS.get(name.lower(), 10**12):",
    tests=CREDITS_TESTS,
    why="a negative credit header is taken at face value",
)
mutant(
    "credits-header-cap-not-applied",
    "credits",
    CREDITS,
    "    if value < 0 or value > _MAX_CREDITS.get(name.lower(), 10**12):",
    "    if value < 0:",
    tests=CREDITS_TESTS,
    why="a call 'costing' a million credits (a broken proxy) is believed: every later call refused",
)
mutant(
    "credits-assumed-charges-not-corrected",
    "credits",
    CREDITS,
    "            self.consumed += self._assumed * (cost - self.unit)"
    "  # earlier guesses, corrected\n",
    "",
    tests=CREDITS_TESTS,
    why="charges counted at the assumed cost are not corrected once the real cost is learned",
)
mutant(
    "credits-cost-from-equal-balances",
    "credits",
    CREDITS,
    "        if before is not None and remaining < before:",
    "        if before is not None and remaining <= before:",
    tests=CREDITS_TESTS,
    why="two equal balances (a top-up, a free call) are read as a call costing 0",
)
mutant(
    "credits-balance-not-decremented",
    "credits",
    CREDITS,
    "            if self.remaining is not None and spent:\n"
    "                self.remaining = max(0, self.remaining - spent)\n",
    "            if self.remaining is not None and spent:\n                pass\n",
    tests=CREDITS_TESTS,
    why="a charge whose answer carries no balance does not lower the known balance",
)
mutant(
    "credits-unreported-cleared-too-soon",
    "credits",
    CREDITS,
    "if remaining is not None and reservation.uncertain_epoch == self._uncertain_epoch:",
    "if remaining is not None:",
    tests=CREDITS_TESTS,
    why="a balance sent before an unanswered attempt ended is taken to include its charge",
)
mutant(
    "credits-halt-402-balance",
    "credits",
    CREDITS,
    "        if remaining is not None and (self.remaining is None or remaining < self.remaining):\n"
    "            self.remaining = remaining\n",
    "",
    tests=CREDITS_TESTS,
    why="a 402 does not set the known balance to 0",
)

# --- atomic writes: clipnormals/_atomic.py ----------------------------------------------------

ATOMIC = "clipnormals/_atomic.py"
ATOMIC_TESTS = (
    "tests/test_atomic.py",
    "tests/batch/test_seam.py",
    "tests/batch/test_manifest.py",
    ATOMIC,
)

mutant(
    "atomic-no-fsync",
    "atomic",
    ATOMIC,
    "            write_all(fd, data)\n            os.fsync(fd)\n",
    "            write_all(fd, data)\n",
    tests=ATOMIC_TESTS,
    why="the fsync is dropped from the atomic write",
)
mutant(
    "atomic-short-write-kept",
    "atomic",
    ATOMIC,
    "    while view:\n        view = view[os.write(fd, view) :]\n",
    "    os.write(fd, view)\n",
    tests=ATOMIC_TESTS,
    why="one os.write is taken to write everything: a short write leaves a truncated file",
)
mutant(
    "atomic-fsync-before-write",
    "atomic",
    ATOMIC,
    "            write_all(fd, data)\n            os.fsync(fd)\n",
    "            os.fsync(fd)\n            write_all(fd, data)\n",
    tests=ATOMIC_TESTS,
    why="the file is fsynced before its bytes are written (the fsync syncs nothing)",
)
mutant(
    "atomic-no-dir-fsync",
    "atomic",
    ATOMIC,
    "    for changed_folder in changed:\n        fsync_dir(changed_folder)\n",
    "",
    tests=ATOMIC_TESTS,
    why="the folder is not flushed after the rename",
)
mutant(
    "atomic-dir-fsync-noop",
    "atomic",
    ATOMIC,
    "        with contextlib.suppress(OSError):\n            os.fsync(fd)\n",
    "        pass\n",
    tests=ATOMIC_TESTS,
    why="fsync_dir opens the folder and never flushes it",
)
mutant(
    "atomic-write-in-place",
    "atomic",
    ATOMIC,
    "        os.replace(tmp, path)\n",
    "        path.write_bytes(tmp.read_bytes())\n        tmp.unlink()\n",
    tests=ATOMIC_TESTS,
    why="the target is written in place instead of renamed over",
)
mutant(
    "atomic-temporary-not-hidden",
    "atomic",
    ATOMIC,
    '    return f".{name}.{tag}{TEMP_SUFFIX}"',
    '    return f"{name}.{tag}{TEMP_SUFFIX}"',
    tests=ATOMIC_TESTS,
    why="the temporary name is not hidden, so a later run never clears it",
)
mutant(
    "atomic-temporary-left-on-error",
    "atomic",
    ATOMIC,
    "    except BaseException:\n"
    "        with contextlib.suppress(OSError):\n            os.unlink(tmp)\n        raise\n",
    "    except BaseException:\n        raise\n",
    tests=ATOMIC_TESTS,
    why="a failed write leaves its temporary file behind",
)
mutant(
    "atomic-new-folders-not-flushed",
    "atomic",
    ATOMIC,
    "    changed = [folder, *ensure_folder(folder, known)]\n",
    "    ensure_folder(folder, known)\n    changed = [folder]\n",
    tests=ATOMIC_TESTS,
    why="the parents of folders a write created are not flushed (a power cut loses the file)",
)
mutant(
    "atomic-group-commit-syncs-nothing",
    "atomic",
    ATOMIC,
    "    if not sync_folder:\n        return changed\n",
    "    if not sync_folder:\n        return []\n",
    tests=ATOMIC_TESTS,
    why="with sync_folder=False no folder is handed back to flush (group commits flush none)",
)
mutant(
    "atomic-stale-cleanup-too-wide",
    "atomic",
    ATOMIC,
    'if name.startswith(".") and name.endswith(TEMP_SUFFIX):',
    'if name.startswith(".") or name.endswith(TEMP_SUFFIX):',
    tests=ATOMIC_TESTS,
    why="the clean-up of temporaries deletes every hidden file",
)
mutant(
    "atomic-stale-cleanup-counts-wrong",
    "atomic",
    ATOMIC,
    "                    path.unlink()\n                    removed += 1",
    "                    with contextlib.suppress(OSError):\n"
    "                        path.unlink()\n"
    "                    removed += 1",
    tests=ATOMIC_TESTS,
    why="a temporary that could not be removed is counted as removed",
)

# --- manifest: clipnormals/_batch/manifest.py -------------------------------------------------

MANIFEST = "clipnormals/_batch/manifest.py"
MANIFEST_TESTS = (
    "tests/batch/test_manifest.py",
    "tests/batch/test_seam.py",
    "tests/batch/test_runner.py",
    MANIFEST,
)

mutant(
    "manifest-append-no-fsync",
    "manifest",
    MANIFEST,
    "                view = view[written or 0 :]\n            os.fsync(f.fileno())\n",
    "                view = view[written or 0 :]\n",
    tests=MANIFEST_TESTS,
    why="the fsync is dropped from the manifest append",
)
mutant(
    "manifest-append-no-flush",
    "manifest",
    MANIFEST,
    "                view = view[written or 0 :]\n",
    "                view = view[len(view) :]\n",
    tests=MANIFEST_TESTS,
    why="a short write of the manifest append is taken for a whole one",
)
mutant(
    "manifest-new-file-dir-not-synced",
    "manifest",
    MANIFEST,
    "                if created:\n                    fsync_dir(self.path.parent)\n",
    "",
    tests=MANIFEST_TESTS,
    why="a new manifest's folder entry is not flushed",
)
mutant(
    "manifest-cut-eats-newline",
    "manifest",
    MANIFEST,
    "os.truncate(self.path, size - block + cut + 1)",
    "os.truncate(self.path, size - block + cut)",
    tests=MANIFEST_TESTS,
    why="off by one: cutting a torn tail also cuts the previous record's newline",
)
mutant(
    "manifest-whole-last-record-glued",
    "manifest",
    MANIFEST,
    '        else:\n            f.write(b"\\n")\n\n    def _close_file',
    "\n    def _close_file",
    tests=MANIFEST_TESTS,
    why="a whole last record without its newline gets the next record glued to it",
)
mutant(
    "manifest-torn-tail-kept",
    "manifest",
    MANIFEST,
    '        if tail.endswith(b"\\n"):\n            return\n        cut = tail.rfind',
    "        if tail:\n            return\n        cut = tail.rfind",
    tests=MANIFEST_TESTS,
    why="a torn last line is left in place before appending",
)
mutant(
    "manifest-torn-counted-bad",
    "manifest",
    MANIFEST,
    "            if i == last:\n                torn = True",
    "            if False:\n                torn = True",
    tests=MANIFEST_TESTS,
    why="a torn last line is reported as a bad line in the middle",
)
mutant(
    "manifest-shared-lock",
    "manifest",
    MANIFEST,
    "mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX",
    "mode = fcntl.LOCK_SH",
    tests=MANIFEST_TESTS,
    why="the manifest lock is shared: two runs write the same manifest",
)
mutant(
    "manifest-unknown-field-refused",
    "manifest",
    MANIFEST,
    "values = {k: v for k, v in data.items() if k in known}",
    "values = dict(data)",
    tests=MANIFEST_TESTS,
    why="a record with a field from a newer version is unreadable",
)
mutant(
    "manifest-non-object-line-crashes",
    "manifest",
    MANIFEST,
    '        if not isinstance(data, dict):\n            raise ValueError("a manifest line must be',
    '        if False:\n            raise ValueError("a manifest line must be',
    tests=MANIFEST_TESTS,
    why="a line that is JSON but not an object crashes the reader",
)
mutant(
    "manifest-oldest-balance",
    "manifest",
    MANIFEST,
    "(best is None or when > best[1])",
    "(best is None or when < best[1])",
    tests=MANIFEST_TESTS,
    why="the oldest reported balance is taken as the last one",
)
mutant(
    "manifest-geometry-zero-size",
    "manifest",
    MANIFEST,
    "if min(w, h, dw, dh) < 1 or not 1 <= orientation <= 8:",
    "if min(w, h, dw, dh) < 0 or not 1 <= orientation <= 8:",
    tests=MANIFEST_TESTS,
    why="a geometry with a zero size is accepted (a division by zero later)",
)
mutant(
    "manifest-first-record-wins",
    "manifest",
    MANIFEST,
    "        records.pop(record.source, None)\n        records[record.source] = record",
    "        records.setdefault(record.source, record)",
    tests=MANIFEST_TESTS,
    why="the first record of a source wins instead of the latest",
)
mutant(
    "manifest-compaction-never",
    "manifest",
    MANIFEST,
    "return self.torn or self.bad_lines > 0 or self.lines > len(self.records)",
    "return self.torn or self.bad_lines > 0",
    tests=MANIFEST_TESTS,
    why="superseded records are never compacted away",
)

# --- plan: clipnormals/_batch/plan.py ---------------------------------------------------------

PLAN = "clipnormals/_batch/plan.py"
PLAN_TESTS = (
    "tests/batch/test_plan.py",
    "tests/batch/test_runner.py",
    "tests/batch/test_seam.py",
    "tests/batch/test_cli_trouble.py::test_outputs_whose_records_were_lost_are_adopted_not_bought_again",
    "tests/batch/test_cli_trouble.py::test_an_output_whose_receipt_names_other_content_is_not_adopted",
)

mutant(
    "plan-resume-size-only",
    "plan",
    PLAN,
    "        return hash_file(path) == record.output_sha256",
    "        return True",
    tests=PLAN_TESTS,
    why="a resume checks an output's size but not its hash",
)
mutant(
    "plan-resume-ignores-source-change",
    "plan",
    PLAN,
    "            and previous.sha256 == job.sha256\n",
    "",
    tests=PLAN_TESTS,
    why="a source whose content changed keeps its old output",
)
mutant(
    "plan-resume-ignores-output-name",
    "plan",
    PLAN,
    "            and previous.output == member.outputs.normals\n",
    "",
    tests=PLAN_TESTS,
    why="a record naming another output counts as complete",
)
mutant(
    "plan-copy-from-damaged-output",
    "plan",
    PLAN,
    "            if output_intact(output_dir, record):\n                job.reuse_record = record",
    "            if record.output is not None:\n                job.reuse_record = record",
    tests=PLAN_TESTS,
    why="an identical image is served by copying an output that is no longer intact",
)
mutant(
    "plan-hash-chunk-off-by-one",
    "plan",
    PLAN,
    "for i in range(start, min(start + _HASH_CHUNK_FILES, total)):",
    "for i in range(start, min(start + _HASH_CHUNK_FILES - 1, total)):",
    tests=PLAN_TESTS,
    why="off by one: the last file of each chunk of 32 is never hashed",
)
mutant(
    "plan-adopt-every-copy-paid",
    "plan",
    PLAN,
    "paid=not recorded and first is None",
    "paid=not recorded",
    tests=PLAN_TESTS,
    why="every adopted copy of one content is recorded as paid",
)
mutant(
    "plan-adopt-without-receipt-check",
    "plan",
    PLAN,
    "            if receipt is None:\n"
    "                keep.append(member)\n                continue\n",
    "            if receipt is None and member.key not in digests:\n"
    "                keep.append(member)\n"
    "                continue\n",
    tests=PLAN_TESTS,
    why="any output on the disk is adopted, receipt or not",
)
# --- preparation: clipnormals/_images/* -------------------------------------------------------

PREPARE = "clipnormals/_images/prepare.py"
IMAGE_PLAN = "clipnormals/_images/plan.py"
FORMATS = "clipnormals/_images/formats.py"
ORIENTATION = "clipnormals/_images/orientation.py"
INTEGRITY = "clipnormals/_images/integrity.py"
REENCODE = "clipnormals/_images/reencode.py"
SOURCES = "clipnormals/_images/sources.py"
CODESTREAMS = "clipnormals/_images/codestreams.py"
DECODE = "clipnormals/_images/decode.py"
PREP_TESTS = (
    "tests/test_limits.py",
    "tests/test_prepare.py",
    "tests/test_formats.py",
)
INTEGRITY_TESTS = (
    *(
        f"tests/test_integrity.py::{name}"
        for name in (
            "test_a_png_cut_at_a_chunk_boundary_before_iend_is_refused",
            "test_a_jpeg_whose_end_marker_comes_before_any_scan_is_refused",
            "test_a_zero_run_just_over_the_limit_inside_a_jpeg_scan_is_refused",
            "test_a_webp_a_few_bytes_shorter_than_its_riff_header_is_refused",
            "test_png_crc_is_checked_on_every_chunk",
            "test_zero_filled_tail_is_refused",
            "test_whole_files_with_long_zero_runs_pass",
        )
    ),
    INTEGRITY,
)

PLAIN_PNG = "clipnormals/_images/plainpng.py"
PLAIN_PNG_TESTS = ("tests/test_plain_png.py", PLAIN_PNG)
mutant(
    "plain-png-filter-types-unchecked",
    "preparation",
    PLAIN_PNG,
    "    return not starts or max(starts) <= 4",
    "    return True",
    tests=PLAIN_PNG_TESTS,
    why="a row with an invalid filter type passes the plain check, which Pillow refuses",
)
mutant(
    "plain-png-second-idat-run-joined",
    "preparation",
    PLAIN_PNG,
    "                return None  # a second run: a decoder stops at the first",
    "                pass",
    tests=PLAIN_PNG_TESTS,
    why="IDAT chunks split by another chunk are joined, where a decoder stops at the first run",
)
mutant(
    "plain-png-trailing-zlib-bytes-allowed",
    "preparation",
    PLAIN_PNG,
    "    return not pending and not inflater.unused_data and done == expected",
    "    return done == expected",
    tests=PLAIN_PNG_TESTS,
    why="bytes after the end of the zlib stream are not noticed",
)
mutant(
    "plain-png-limit-not-applied",
    "preparation",
    PLAIN_PNG,
    "                or width * height > max_pixels\n",
    "",
    tests=PLAIN_PNG_TESTS,
    why="a plain PNG above the pixel limit skips the full path: no downscale, no strict refusal",
)
mutant(
    "plain-png-bomb-limit-ignored",
    "preparation",
    PREPARE,
    "        bomb_limit(options.bomb_pixels, options.max_pixels),\n",
    "",
    tests=PLAIN_PNG_TESTS,
    why="a plain PNG above the decompression-bomb limit the application set is sent",
)

mutant(
    "prep-strict-refuses-exactly-25mp",
    "preparation",
    PREPARE,
    "if options.strict and size[0] * size[1] > options.max_pixels:",
    "if options.strict and size[0] * size[1] >= options.max_pixels:",
    tests=PREP_TESTS,
    why="off by one: exactly 25 MP is refused in strict mode",
)
mutant(
    "prep-mebi-megapixels",
    "preparation",
    IMAGE_PLAN,
    "    max_pixels: int = 25_000_000\n",
    "    max_pixels: int = 25 * 1024 * 1024\n",
    tests=PREP_TESTS,
    why="25 MP read as 25 * 2**20 pixels: 25 MP + 1 pixel is accepted",
)
mutant(
    "prep-mebibytes",
    "preparation",
    IMAGE_PLAN,
    "    max_bytes: int = 30_000_000\n",
    "    max_bytes: int = 30 * 1024 * 1024\n",
    tests=PREP_TESTS,
    why="30 MB read as 30 MiB: a file over the API's limit is uploaded",
)
mutant(
    "prep-fit-exactly-25mp-downscaled",
    "preparation",
    REENCODE,
    "    if width * height <= max_pixels:\n        return None",
    "    if width * height < max_pixels:\n        return None",
    tests=PREP_TESTS,
    why="off by one: exactly 25 MP is downscaled",
)
mutant(
    "prep-bytes-limit-exclusive",
    "preparation",
    PREPARE,
    "                if len(data) <= options.max_bytes:",
    "                if len(data) < options.max_bytes:",
    tests=PREP_TESTS,
    why="off by one: a file of exactly 30,000,000 bytes is re-encoded",
)
mutant(
    "prep-strict-reencodes-big-file",
    "preparation",
    PREPARE,
    "                if options.strict:\n                    raise InvalidImageError(\n"
    '                        f"{label}: the file is',
    "                if False:\n                    raise InvalidImageError(\n"
    '                        f"{label}: the file is',
    tests=PREP_TESTS,
    why="strict mode re-encodes a file over the byte limit instead of refusing it",
)
mutant(
    "prep-riff-is-webp",
    "preparation",
    FORMATS,
    '    if head[4:8] == b"ftyp":\n        return _bmff_format(head)',
    '    if head[:4] == b"RIFF":\n        return "WEBP"\n'
    '    if head[4:8] == b"ftyp":\n        return _bmff_format(head)',
    tests=(*PREP_TESTS, FORMATS),
    why="any RIFF file is sniffed as WEBP",
)
mutant(
    "prep-text-sniffed-as-ppm",
    "preparation",
    FORMATS,
    '            if fmt == "PPM" and not head[2:3].isspace():\n                continue\n',
    "",
    tests=(*PREP_TESTS, FORMATS),
    why="text starting with P1..P7 is sniffed as a PPM image",
)
mutant(
    "prep-avif-taken-for-heif",
    "preparation",
    FORMATS,
    (
        ('    if brands & _AVIF_BRANDS:\n        return "AVIF"\n', ""),
        (
            '        return "HEIF"\n    return None',
            '        return "HEIF"\n    if brands & _AVIF_BRANDS:\n        return "AVIF"\n'
            "    return None",
        ),
    ),
    tests=(*PREP_TESTS, "tests/test_heif.py", FORMATS),
    why="a generic mif1 file with the avif brand is taken for HEIF",
)
mutant(
    "prep-mpo-not-jpeg",
    "preparation",
    FORMATS,
    '    return "JPEG" if fmt == "MPO" else fmt',
    "    return fmt",
    tests=(*PREP_TESTS, FORMATS),
    why="a multi-picture JPEG (phones) is not uploaded as a JPEG",
)
mutant(
    "prep-rotated-uploaded-as-is",
    "preparation",
    PREPARE,
    "untouched = fmt in CONTENT_TYPES and orientation == 1 and not animated",
    "untouched = fmt in CONTENT_TYPES and not animated",
    tests=PREP_TESTS,
    why="an EXIF-rotated JPEG is uploaded as it is (normals not upright)",
)
mutant(
    "prep-animation-uploaded-as-is",
    "preparation",
    PREPARE,
    "untouched = fmt in CONTENT_TYPES and orientation == 1 and not animated",
    "untouched = fmt in CONTENT_TYPES and orientation == 1",
    tests=PREP_TESTS,
    why="an animated WEBP/PNG is uploaded whole instead of its first frame",
)
mutant(
    "prep-too-big-uploaded-as-is",
    "preparation",
    PREPARE,
    "            if untouched and target is None:\n",
    "            if untouched:\n",
    tests=PREP_TESTS,
    why="an image over the pixel limit is uploaded untouched",
)
mutant(
    "prep-integrity-not-checked",
    "preparation",
    PREPARE,
    "            check_whole(data, fmt, image, label)\n",
    "",
    tests=(*INTEGRITY_TESTS, *PREP_TESTS),
    why="the structure of the file is never checked (zero-filled downloads uploaded)",
)
mutant(
    "prep-orientation-6-8-swapped",
    "preparation",
    ORIENTATION,
    "    6: Image.Transpose.ROTATE_270,\n    7: Image.Transpose.TRANSVERSE,\n"
    "    8: Image.Transpose.ROTATE_90,",
    "    6: Image.Transpose.ROTATE_90,\n    7: Image.Transpose.TRANSVERSE,\n"
    "    8: Image.Transpose.ROTATE_270,",
    tests=(*PREP_TESTS, "tests/test_normalmap.py", ORIENTATION),
    why="EXIF orientations 6 and 8 turn the wrong way",
)
mutant(
    "prep-orientation-5-not-swapped",
    "preparation",
    ORIENTATION,
    "return (size[1], size[0]) if orientation >= 5 else size",
    "return (size[1], size[0]) if orientation > 5 else size",
    tests=(*PREP_TESTS, "tests/test_normalmap.py", ORIENTATION),
    why="EXIF orientation 5 (transpose) keeps width and height",
)
mutant(
    "prep-inverse-quarter-turn",
    "preparation",
    ORIENTATION,
    "    if transpose is Image.Transpose.ROTATE_90:\n        return Image.Transpose.ROTATE_270\n",
    "",
    tests=(*PREP_TESTS, "tests/test_normalmap.py", ORIENTATION),
    why="a quarter turn is undone by itself when mapping a normal map back",
)
mutant(
    "prep-bad-orientation-trusted",
    "preparation",
    ORIENTATION,
    "return value if isinstance(value, int) and 1 <= value <= 8 else 1",
    "return value if isinstance(value, int) else 1",
    tests=(*PREP_TESTS, "tests/test_normalmap.py", ORIENTATION),
    why="an EXIF orientation outside 1..8 is trusted",
)
mutant(
    "prep-strict-allows-lower-quality",
    "preparation",
    IMAGE_PLAN,
    "qualities = JPEG_QUALITIES[:1] if lossy_source else ()",
    "qualities = JPEG_QUALITIES if lossy_source else ()",
    tests=PREP_TESTS,
    why="strict mode lets a JPEG fall below quality 95",
)
mutant(
    "prep-strict-allows-lossy-png-source",
    "preparation",
    IMAGE_PLAN,
    "qualities = JPEG_QUALITIES[:1] if lossy_source else ()",
    "qualities = JPEG_QUALITIES[:1]",
    tests=PREP_TESTS,
    why="strict mode turns a lossless source into a JPEG",
)
mutant(
    "prep-jpeg-goes-png-when-too-big",
    "preparation",
    IMAGE_PLAN,
    'lossless_first = not lossy_source or (options.reencode_jpeg_as == "PNG" and not recompress)',
    'lossless_first = not lossy_source or options.reencode_jpeg_as == "PNG"',
    tests=PREP_TESTS,
    why="a JPEG that is only too big is tried as a (bigger) PNG first",
)
mutant(
    "prep-png-limit-exclusive",
    "preparation",
    REENCODE,
    '        if len(data) <= plan.max_bytes:\n            return data, "PNG", ()',
    '        if len(data) < plan.max_bytes:\n            return data, "PNG", ()',
    tests=PREP_TESTS,
    why="off by one: a PNG of exactly max_bytes is re-encoded",
)
mutant(
    "prep-exif-kept",
    "preparation",
    REENCODE,
    "    image.save(buffer, format=fmt, **params)",
    '    image.save(buffer, format=fmt, exif=image.info.get("exif", b""), **params)',
    tests=PREP_TESTS,
    why="the re-encoded upload keeps the source's EXIF (a server may rotate it twice)",
)
mutant(
    "prep-icc-of-cmyk-kept",
    "preparation",
    REENCODE,
    "        icc = None  # a CMYK or Lab profile does not describe RGB pixels",
    "        pass",
    tests=PREP_TESTS,
    why="a CMYK profile is attached to the converted RGB pixels",
)
mutant(
    "prep-bomb-limit-after-decode",
    "preparation",
    SOURCES,
    "    if width * height > bomb_limit:\n        image.close()",
    "    if False:\n        image.close()",
    tests=PREP_TESTS,
    why="the decompression-bomb limit is not checked before decoding",
)
mutant(
    "prep-truncation-ignored",
    "preparation",
    SOURCES,
    "    if source.ran_out and fmt in _EOF_CHECKED:",
    "    if False:",
    tests=PREP_TESTS,
    why="a file that ends early is decoded padded with grey when LOAD_TRUNCATED_IMAGES is on",
)
mutant(
    "prep-float-array-not-scaled",
    "preparation",
    SOURCES,
    "        array = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)",
    "        array = array.astype(np.uint8)",
    tests=PREP_TESTS,
    why="a float array in [0, 1] is truncated to 0/1 instead of scaled",
)
mutant(
    "prep-png-crc-unchecked",
    "preparation",
    INTEGRITY,
    "        if zlib.crc32(data[pos + 4 : end - 4]) != stored:",
    "        if False:",
    tests=INTEGRITY_TESTS,
    why="PNG chunk CRCs are not checked",
)
mutant(
    "prep-png-iend-optional",
    "preparation",
    INTEGRITY,
    '    raise Broken("no IEND chunk: the file ends early")',
    "    return",
    tests=INTEGRITY_TESTS,
    why="a PNG without its IEND chunk (cut at a chunk boundary) passes",
)
mutant(
    "prep-jpeg-zero-run-10x",
    "preparation",
    CODESTREAMS,
    "JPEG_ZERO_RUN: Final = 256",
    "JPEG_ZERO_RUN: Final = 2560",
    tests=INTEGRITY_TESTS,
    why="JPEG zero-run threshold 10x too lax",
)
mutant(
    "prep-jpeg-eoi-before-scan",
    "preparation",
    CODESTREAMS,
    '            if not scans:\n                raise Broken("an end-of-image',
    '            if False:\n                raise Broken("an end-of-image',
    tests=INTEGRITY_TESTS,
    why="a JPEG whose end marker comes before any scan passes",
)
mutant(
    "prep-webp-riff-size-slack",
    "preparation",
    INTEGRITY,
    "    if declared > len(data):\n",
    "    if declared > len(data) + 8:\n",
    tests=INTEGRITY_TESTS,
    why="a WEBP a few bytes shorter than its RIFF header says passes",
)
mutant(
    "prep-end-test-skipped",
    "preparation",
    DECODE,
    "    if shortened is None or not _decodes(shortened, fmt):\n        return\n",
    "    return\n",
    tests=(*INTEGRITY_TESTS, "tests/test_half_garbage.py"),
    why="a WEBP or AVIF whose end is garbage or zeros uploads: its picture decodes without it",
)
mutant(
    "prep-codec-errors-padded",
    "preparation",
    SOURCES,
    "    if uses_tile_loop(image, fmt):\n",
    "    if False:\n",
    tests=("tests/test_half_garbage.py",),
    why="with LOAD_TRUNCATED_IMAGES on, a codec's error (GIF's LZW) is padded over",
)
mutant(
    "prep-source-read-before-its-size",
    "preparation",
    SOURCES,
    "        if info.st_size > limit:\n",
    "        if False:\n",
    tests=("tests/test_sources.py",),
    why="a path's size is not asked first: a huge file is read before it is refused",
)
mutant(
    "prep-8-bit-values-in-wide-mode-divided",
    "preparation",
    REENCODE,
    "    if values.size and int(values.max()) > 255:\n",
    "    if values.size:\n",
    tests=PREP_TESTS,
    why="8-bit values in an I or I;16 image are divided by 257: the upload is near black",
)
mutant(
    "prep-empty-message",
    "preparation",
    PREPARE,
    '    if not data:\n        raise InvalidImageError(f"{label}: empty input (0 bytes)")\n',
    "",
    tests=PREP_TESTS,
    why="empty input is reported as an unrecognised format instead of as empty",
)

# --- session: the 429 path of clipnormals/_core/session.py (not a critical module) ------------

SESSION = "clipnormals/_core/session.py"
SESSION_TESTS = ("tests/test_retries.py", "tests/test_client.py", "tests/test_quota.py")

mutant(
    "session-429-streak-never-reset",
    "session",
    SESSION,
    "            counters.successes += 1\n            self.rate_limit_streak = 0\n",
    "            counters.successes += 1\n",
    tests=SESSION_TESTS,
    why="the 429 streak is never reset after a success (pauses keep growing)",
)
mutant(
    "session-429-no-cooldown",
    "session",
    SESSION,
    "            await self.limiter.rate_limited(\n"
    "                started=started, pause=pause, retry_after=error.retry_after\n"
    "            )\n",
    "",
    tests=SESSION_TESTS,
    why="a 429 is not reported to the limiter: no shared cooldown, nothing learned",
)
mutant(
    "session-402-balance-unknown",
    "session",
    SESSION,
    "            self.ledger.halt(error, remaining=0)",
    "            self.ledger.halt(error)",
    tests=(*SESSION_TESTS, "tests/test_credits.py"),
    why="a 402 does not tell the ledger the balance is 0",
)

# --- normals: clipnormals/_normals/* (not a critical module) -----------------------------------

NORMALMAP = "clipnormals/_normals/normalmap.py"
MASK = "clipnormals/_normals/mask.py"
NORMALS_TESTS = ("tests/test_normalmap.py", "tests/test_relight.py")

mutant(
    "normals-convention-flips-x-for-y",
    "normals",
    NORMALMAP,
    "                if other._flip_x != self._flip_x:\n                    field[..., 0] *= -1",
    "                if other._flip_x != self._flip_x or other._flip_y != self._flip_y:\n"
    "                    field[..., 0] *= -1",
    tests=NORMALS_TESTS,
    why="with_convention flips X when only Y changes, on the cached-normals path",
)
mutant(
    "normals-small-blob-100x",
    "normals",
    MASK,
    "min_blob = max(16, (height * width) // 10_000)",
    "min_blob = max(16, (height * width) // 100)",
    tests=NORMALS_TESTS,
    why="the mask's small-blob filter is 100x too large (small people dropped)",
)
mutant(
    "normals-bottom-edge-closed",
    "normals",
    MASK,
    "on_frame[labels[(runs.row == 0) | (runs.row == height - 1)]] = True",
    "on_frame[labels[runs.row == 0]] = True",
    tests=NORMALS_TESTS,
    why="gaps touching only the bottom edge are not treated as open to the frame",
)

# --- limiter: clipnormals/_core/limiter.py ----------------------------------------------------

LIMITER = "clipnormals/_core/limiter.py"
LIMITER_TESTS = ("tests/test_limiter.py", "tests/test_quota.py", LIMITER)

mutant(
    "limiter-no-token-held-back",
    "limiter",
    LIMITER,
    "        return (self.requests - self.burst - self.slack) / self.per",
    "        return (self.requests - self.slack) / self.per",
    tests=LIMITER_TESTS,
    why="the sustained rate holds no token back: requests + 1 starts fit in a window a hair "
    "over per, and arrival jitter puts them in one server window",
)
mutant(
    "limiter-capacity-ignores-burst",
    "limiter",
    LIMITER,
    "        return self.burst + self.slack",
    "        return 1 + self.slack",
    tests=LIMITER_TESTS,
    why="the bucket's capacity ignores burst: an idle client never gets its burst",
)
mutant(
    "limiter-capacity-off-by-one",
    "limiter",
    LIMITER,
    "        return self.burst + self.slack",
    "        return self.burst + 1 + self.slack",
    tests=LIMITER_TESTS,
    why="off by one: the bucket holds one token more than burst (a full window holds N + 1)",
)
mutant(
    "limiter-spacing-from-per",
    "limiter",
    LIMITER,
    "        self._spacing = rl.spacing\n",
    "        self._spacing = rl.per / rl.requests\n",
    tests=LIMITER_TESTS,
    why="the schedule's spacing is per / requests, not the sustained rate's: no token held back",
)
mutant(
    "limiter-window-without-margin",
    "limiter",
    LIMITER,
    "        self._window = rl.per + rl.spacing\n",
    "        self._window = rl.per\n",
    tests=LIMITER_TESTS,
    why="the start log's window is per, without the spacing of margin for arrival jitter",
)
mutant(
    "limiter-start-log-ignored",
    "limiter",
    LIMITER,
    "                    due = max(slot, self._earliest())\n",
    "                    due = slot\n",
    tests=LIMITER_TESTS,
    why="a waiter starts on its slot without asking the start log (late starts crowd a window)",
)
mutant(
    "limiter-cooldown-uncapped",
    "limiter",
    LIMITER,
    "        if self.rate_limit.max_cooldown is not None:\n"
    "            seconds = min(seconds, self.rate_limit.max_cooldown)\n",
    "",
    tests=LIMITER_TESTS,
    why="a cooldown is not capped at the (deprecated) max_cooldown when it is set",
)
mutant(
    "limiter-cooldown-shortened",
    "limiter",
    LIMITER,
    "        if now + seconds > self._cooldown_until:\n"
    "            self._cooldown_until = now + seconds\n"
    "            self._restart(now)\n",
    "        self._cooldown_until = now + seconds\n        self._restart(now)\n",
    tests=LIMITER_TESTS,
    why="a shorter cooldown replaces a longer one under way",
)
mutant(
    "limiter-cooldown-keeps-slots",
    "limiter",
    LIMITER,
    "            self._cooldown_until = now + seconds\n            self._restart(now)\n",
    "            self._cooldown_until = now + seconds\n",
    tests=LIMITER_TESTS,
    why="a cooldown does not void the slots handed out: their waiters start during the pause",
)
mutant(
    "limiter-cooldown-keeps-schedule",
    "limiter",
    LIMITER,
    "        self._tat = min(self._tat, now + self._tolerance + self._spacing)\n",
    "",
    tests=LIMITER_TESTS,
    why="a restart leaves the voided slots holding the schedule: sending resumes late",
)
mutant(
    "limiter-strict-late-start-not-pushed",
    "limiter",
    LIMITER,
    "        if rl.strict and starts:\n"
    "            earliest = max(earliest, starts[-1].time + self._spacing)\n",
    "",
    tests=LIMITER_TESTS,
    why="strict spacing ignored after a late start: the next one comes less than a spacing "
    "after it",
)
mutant(
    "limiter-give-back-steps-back-any-slot",
    "limiter",
    LIMITER,
    "        if self._last_reserved is not None and self._last_reserved[0] == slot:\n",
    "        if self._last_reserved is not None:\n",
    tests=LIMITER_TESTS,
    why="a slot given back steps the schedule back even when it was not the last one handed "
    "out: two waiters get the same slot",
)
mutant(
    "limiter-returned-slot-dropped",
    "limiter",
    LIMITER,
    "            heapq.heappush(self._returned, slot)\n",
    "            pass\n",
    tests=LIMITER_TESTS,
    why="a slot given back that is not the last one is dropped instead of handed on",
)
mutant(
    "limiter-slack-one-accepted",
    "limiter",
    LIMITER,
    "if not 0 <= self.slack < 1:",
    "if not 0 <= self.slack <= 1:",
    tests=LIMITER_TESTS,
    why="slack=1 (a whole spacing of lateness) is accepted",
)

SESSION_TOKEN = "clipnormals/_core/session.py"
mutant(
    "session-retry-takes-no-token",
    "session",
    SESSION_TOKEN,
    "            if not gate.extensions:  # not on the wire: the slot is taken before sending\n",
    "            if not gate.extensions and not attempts.count:\n",
    tests=("tests/test_quota.py", "tests/test_retries.py"),
    why="only the first attempt of an image waits for its slot before sending: retries go out "
    "at once (the slot is taken after the answer)",
)
mutant(
    "session-limiter-told-the-wait-not-the-start",
    "session",
    SESSION_TOKEN,
    "        started = gate.started if gate.started is not None else state.waiting_since\n",
    "        started = state.waiting_since\n",
    tests=("tests/test_quota.py", "tests/test_retries.py"),
    why="the limiter is told when the attempt began waiting, not when it started: it cannot "
    "find the start a 429 refused, and learns nothing",
)

GATE = "clipnormals/_core/gate.py"
mutant(
    "gate-wire-wait-ignores-the-stop",
    "session",
    GATE,
    "        self._stop.check()  # the stop ended the wait\n",
    "",
    tests=(
        "tests/test_integration.py::"
        "test_a_stop_while_a_request_waits_on_the_wire_for_its_slot_sends_nothing_more",
    ),
    why="a stop that ends a wait on the wire is swallowed: the request waits out the quota "
    "again and is sent after the stop",
    timeout=60.0,
)

# --- Redis limiter: clipnormals/_redis/limiter.py ---------------------------------------------

REDIS = "clipnormals/_redis/limiter.py"
REDIS_TESTS = ("tests/test_redis_limiter.py",)

mutant(
    "redis-client-clock",
    "redis-limiter",
    REDIS,
    (
        (
            "local clock = redis.call('TIME')\n"
            "local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])\n",
            "local now = tonumber(ARGV[#ARGV])\n",
        ),
        (
            "args: list[str | int] = [op, self._emission, self._tolerance, *operands]",
            "args: list[str | int] = [op, self._emission, self._tolerance, *operands, "
            "int(time.time() * 1e6)]",
        ),
        ("import logging\nimport math\n", "import logging\nimport math\nimport time\n"),
    ),
    tests=REDIS_TESTS,
    why="the script decides on the client's clock (sent along) instead of the server's TIME",
    redis=True,
)
mutant(
    "redis-late-slots-kept",
    "redis-limiter",
    REDIS,
    "  if now - slot > allowance then return {5, now - slot} end\n",
    "",
    tests=REDIS_TESTS,
    why="a slot claimed late is never forfeited: starts drift up to a spacing off the schedule",
    redis=True,
)
mutant(
    "redis-allowance-a-spacing",
    "redis-limiter",
    REDIS,
    "self._allowance = self._emission // 2",
    "self._allowance = self._emission",
    tests=REDIS_TESTS,
    why="a claim may come a whole spacing late (the margin for arrival jitter is spent)",
    redis=True,
)
mutant(
    "redis-early-claim-accepted",
    "redis-limiter",
    REDIS,
    "  if now < slot then return {4, slot - now} end\n",
    "",
    tests=REDIS_TESTS,
    why="a claim before its slot succeeds (a waiter that wakes early starts early)",
    redis=True,
)
mutant(
    "redis-cooldown-voids-nothing",
    "redis-limiter",
    REDIS,
    "  if num(KEYS[2]) > seen then return {3, 0} end\n",
    "",
    tests=REDIS_TESTS,
    why="a cooldown does not void the slots handed out before it",
    redis=True,
)
mutant(
    "redis-reserve-ignores-cooldown",
    "redis-limiter",
    REDIS,
    "  if cooldown > now then return {1, cooldown - now, 0, 0, cooldown} end\n",
    "",
    tests=REDIS_TESTS,
    why="slots are handed out during a cooldown",
    redis=True,
)
mutant(
    "redis-cooldown-keeps-schedule",
    "redis-limiter",
    REDIS,
    "  if num(KEYS[1]) > now + tau + T then store(KEYS[1], now + tau + T) end\n",
    "",
    tests=REDIS_TESTS,
    why="a cooldown leaves the voided slots holding the schedule: sending resumes late",
    redis=True,
)
mutant(
    "redis-cooldown-shortened",
    "redis-limiter",
    REDIS,
    "  if ends <= current then return {0, current - now} end\n",
    "",
    tests=REDIS_TESTS,
    why="a shorter cooldown replaces a longer one under way",
    redis=True,
)
mutant(
    "redis-cooldown-uncapped",
    "redis-limiter",
    REDIS,
    "        if self.rate_limit.max_cooldown is not None:\n"
    "            seconds = min(seconds, self.rate_limit.max_cooldown)\n",
    "",
    tests=REDIS_TESTS,
    why="a cooldown is not capped at the (deprecated) max_cooldown when it is set",
    redis=True,
)
mutant(
    "redis-returned-slot-dropped",
    "redis-limiter",
    REDIS,
    "  redis.call('ZADD', KEYS[3], int(slot), int(slot))\n",
    "",
    tests=REDIS_TESTS,
    why="a slot given back that is not the last one is dropped instead of handed on",
    redis=True,
)
mutant(
    "redis-no-horizon",
    "redis-limiter",
    REDIS,
    "  if slot - now > horizon then return {2, slot - now - horizon, 0, 0, cooldown} end\n",
    "",
    tests=REDIS_TESTS,
    why="slots are reserved without a horizon (a crash can lose more than one window)",
    redis=True,
)
mutant(
    "redis-tolerance-off-by-one",
    "redis-limiter",
    REDIS,
    "self._tolerance = math.floor((capacity - 1) * _US / rate_limit.rate)",
    "self._tolerance = math.floor(capacity * _US / rate_limit.rate)",
    tests=REDIS_TESTS,
    why="GCRA tolerance of capacity spacings instead of capacity - 1: one start too many",
    redis=True,
)
mutant(
    "redis-strict-with-tolerance",
    "redis-limiter",
    REDIS,
    "        capacity = 1.0 if rate_limit.strict else rate_limit.capacity\n",
    "        capacity = rate_limit.capacity\n",
    tests=REDIS_TESTS,
    why="strict spacing keeps the bucket's slack: slots may come closer than a spacing",
    redis=True,
)
mutant(
    "redis-give-back-steps-back-any-slot",
    "redis-limiter",
    REDIS,
    "  if tat_after > 0 and num(KEYS[1]) == tat_after then\n",
    "  if tat_after > 0 then\n",
    tests=REDIS_TESTS,
    why="a slot given back steps the schedule back even when it was not the last one handed "
    "out: the slot after it is handed out twice",
    redis=True,
)
mutant(
    "redis-cancelled-slot-kept",
    "redis-limiter",
    REDIS,
    "            except BaseException:\n"
    "                await self._give_back(slot, tat_after, seen)\n"
    "                raise",
    "            except BaseException:\n                raise",
    tests=REDIS_TESTS,
    why="a cancelled waiter's slot is never given back (lost reservation release)",
    redis=True,
)
mutant(
    "redis-step-back-wrong-key",
    "redis-limiter",
    REDIS,
    "    store(KEYS[1], tat_after - T)\n    return {1}",
    "    store(KEYS[2], tat_after - T)\n    return {1}",
    tests=REDIS_TESTS,
    why="giving back the last slot writes the cooldown key instead of the schedule",
    redis=True,
)
