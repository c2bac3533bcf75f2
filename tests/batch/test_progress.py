"""What the user sees: plain lines, the progress bar's fields, the summary, exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from clipnormals import RateLimit
from clipnormals._batch.manifest import ManifestRecord, RecordStatus
from clipnormals._cli.progress import PlainReporter, RateMeter, RichReporter, summary_lines
from clipnormals.batch import BatchProgress, BatchSummary, ExitCode, StopReason


def record(source: str, status: RecordStatus, **kw: object) -> ManifestRecord:
    return ManifestRecord(source=source, path=f"/in/{source}", sha256="00", status=status, **kw)  # type: ignore[arg-type]


QUOTA = RateLimit(requests=60, per=60.0)


def progress(**kw: object) -> BatchProgress:
    values: dict[str, object] = {"total": 12, "to_send": 10, "rate_limit": QUOTA}
    values.update(kw)
    return BatchProgress(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("summary", "code"),
    [
        (BatchSummary(total=2, done=1, skipped=1), ExitCode.OK),
        (BatchSummary(total=2, done=1, invalid=1), ExitCode.FAILED),
        (BatchSummary(total=2, done=1, failed=1), ExitCode.FAILED),
        (BatchSummary(total=2, done=1, not_sent=1, stopped=StopReason.CREDITS), ExitCode.CREDITS),
        (BatchSummary(total=2, failed=1, not_sent=1, stopped=StopReason.AUTH), ExitCode.AUTH),
        (BatchSummary(total=2, not_sent=2, stopped=StopReason.INTERRUPTED), ExitCode.INTERRUPTED),
        (BatchSummary(total=2, aborted=True, stopped=StopReason.INTERRUPTED), ExitCode.INTERRUPTED),
    ],
)
def test_exit_codes(summary: BatchSummary, code: ExitCode) -> None:
    assert summary.exit_code is code


def test_eta_comes_from_the_quota_not_from_the_clock() -> None:
    p = progress(to_send=61, uploads_settled=1)
    # 60 uploads left, the first starts at once, then one every per/(requests - 1.1) seconds.
    assert p.eta == pytest.approx(59 * 60 / 58.9)
    assert progress(rate_limit=None).eta is None
    assert progress(to_send=3, uploads_settled=3).eta == 0


def test_rate_meter_uses_the_last_window_only() -> None:
    meter = RateMeter(window=60.0)
    for t in range(0, 61, 10):
        meter.add(float(t), t * 2)  # 120/min for the first minute
    for t in range(70, 181, 10):
        meter.add(float(t), 120 + (t - 60) // 2)  # then 30/min
    assert meter.per_minute == pytest.approx(30.0, rel=0.05)


def test_plain_reporter_prints_one_line_per_image() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.start(progress())
    reporter.item(
        record("c.png", RecordStatus.DONE, output="c.png.normals.jpg"), progress(skipped=2, done=1)
    )
    reporter.item(
        record("d.png", RecordStatus.INVALID, error_type="InvalidImageError", error="not an image"),
        progress(skipped=2, done=1, invalid=1),
    )
    reporter.finish(BatchSummary(total=4, done=1, uploaded=1, skipped=2, invalid=1))
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "12 images, 10 to upload at 60/min (at least 9s: the quota's time, before the server's)"
    )
    assert lines[1] == "[ 3/12] done     c.png -> c.png.normals.jpg"
    assert lines[2] == "[ 4/12] invalid  d.png: InvalidImageError: not an image"
    assert lines[3].startswith("done         1")


def test_plain_reporter_status_line_every_half_minute() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out)
    reporter.tick(progress(elapsed=10.0, attempts=5))
    assert out.getvalue() == ""
    reporter.tick(progress(elapsed=31.0, attempts=20, credits_remaining=80, rate_limited=1))
    line = out.getvalue().strip()
    assert "of 60/min" in line
    assert "credits left 80" in line
    assert "429s 1" in line


def test_rich_reporter_shows_failures_and_summary() -> None:
    err, out = io.StringIO(), io.StringIO()
    reporter = RichReporter(
        Console(file=err, width=200), summary_console=Console(file=out, width=200)
    )
    reporter.start(progress())
    reporter.item(
        record("ok.png", RecordStatus.DONE, output="ok.png.normals.jpg"), progress(done=1)
    )
    reporter.item(
        record("bad.png", RecordStatus.FAILED, error_type="ServerError", error="500 boom"),
        progress(done=1, failed=1),
    )
    reporter.tick(progress(done=1, failed=1, elapsed=1.0, attempts=2))
    reporter.finish(
        BatchSummary(total=2, done=1, uploaded=1, failed=1, failures={"ServerError": 1})
    )
    assert "bad.png: ServerError: 500 boom" in err.getvalue()
    assert "ok.png" not in err.getvalue()  # successes are not listed unless verbose
    assert "failed       1  (ServerError: 1)" in out.getvalue()


def test_summary_mentions_resume_when_something_is_left() -> None:
    lines = summary_lines(
        BatchSummary(
            total=3, done=1, uploaded=1, not_sent=2, stopped=StopReason.CREDITS,
            credits_consumed=1, credits_remaining=0, attempts=1, requests_per_minute=None,
            manifest=Path("out/manifest.jsonl"),
        )
    )  # fmt: skip
    text = "\n".join(lines)
    assert "not sent     2  (the account is out of credits)" in text
    assert "credits      1  consumed, 0 left" in text
    assert "manifest out/manifest.jsonl" in text
    assert lines[-1] == "top up the account, then run the same command again to send the rest"


def test_summary_says_what_the_limiter_learned() -> None:
    learned = RateLimit(requests=570, per=60.0, strict=True)
    text = "\n".join(summary_lines(BatchSummary(total=1, done=1, learned_rate_limit=learned)))
    assert "pass --rate '570/60 strict' next time" in text
    assert RateLimit.parse("570/60 strict") == learned
    assert "learned" not in "\n".join(summary_lines(BatchSummary(total=1, done=1)))
