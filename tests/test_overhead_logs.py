"""`switchyard serve`'s log handler (proxy.logs): the request only queues its line; the lines
come out in order, as they read when logged, and none is left behind at close."""

from __future__ import annotations

import io
import logging
import time

import pytest

from proxy import logs


def handler_into(out: io.StringIO, interval_s: float = 0.02) -> logs.BatchingHandler:
    target = logging.StreamHandler(out)
    target.setFormatter(logging.Formatter("%(name)s %(message)s"))
    return logs.BatchingHandler(target, interval_s)


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    log = logging.getLogger(name)
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    return log


def test_lines_come_out_in_order_and_as_they_were_logged() -> None:
    out = io.StringIO()
    handler = handler_into(out)
    log = logger_with(handler, "test.logs.order")
    mutable = ["before"]
    try:
        for i in range(50):
            log.info("line %d %s", i, mutable)
        mutable[0] = "after"  # the queued lines keep what they said when logged
        deadline = time.monotonic() + 5
        while out.getvalue().count("\n") < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        lines = out.getvalue().splitlines()
        assert lines == [f"test.logs.order line {i} ['before']" for i in range(50)]
    finally:
        log.removeHandler(handler)
        handler.close()


def test_the_caller_does_not_write() -> None:
    out = io.StringIO()
    handler = handler_into(out, interval_s=60)  # the thread would not flush for a minute
    log = logger_with(handler, "test.logs.caller")
    try:
        log.info("queued")
        assert out.getvalue() == ""
        handler.flush()
        assert out.getvalue() == "test.logs.caller queued\n"
    finally:
        log.removeHandler(handler)
        handler.close()


class CountedWrites(io.StringIO):
    """A stream that counts the writes it is given."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_a_batch_goes_to_the_stream_in_one_write() -> None:
    """Line by line, each record was a system call of the log thread (stderr is
    line-buffered) and a hand-off of the GIL to the event loop and back."""
    out = CountedWrites()
    handler = handler_into(out, interval_s=60)
    handler.target.addFilter(lambda record: "secret" not in record.getMessage())
    log = logger_with(handler, "test.logs.batch")
    try:
        for i in range(100):
            log.info("line %d", i)
        log.info("a secret line")  # the stream's own filters still apply
        handler.flush()
        assert out.writes == 1
        assert out.getvalue().splitlines() == [f"test.logs.batch line {i}" for i in range(100)]
    finally:
        log.removeHandler(handler)
        handler.close()


def test_a_message_its_arguments_do_not_fit_is_not_raised_into_the_caller(
        capsys: pytest.CaptureFixture[str]) -> None:
    """As StreamHandler does: the error is reported on stderr and the caller goes on."""
    out = io.StringIO()
    handler = handler_into(out, interval_s=60)
    log = logger_with(handler, "test.logs.misfit")
    try:
        secret = "-".join(("sk", "hidden"))  # the call stack shows this line, not the value
        log.warning("%d items", secret)  # raised a TypeError into the caller
        log.info("next")
        handler.flush()
        assert out.getvalue() == "test.logs.misfit next\n"
        reported = capsys.readouterr().err
        assert "Logging error" in reported and secret not in reported
    finally:
        log.removeHandler(handler)
        handler.close()


def test_close_writes_what_is_still_queued() -> None:
    out = io.StringIO()
    handler = handler_into(out, interval_s=60)
    log = logger_with(handler, "test.logs.close")
    log.info("last words")
    log.removeHandler(handler)
    handler.close()
    assert out.getvalue() == "test.logs.close last words\n"


def test_a_handler_closed_by_someone_else_still_writes_and_queues_nothing() -> None:
    """uvicorn's logging setup closes every handler and leaves them attached: the records must
    still come out, and none may pile up in the queue."""
    out = io.StringIO()
    handler = handler_into(out, interval_s=60)
    log = logger_with(handler, "test.logs.closed")
    try:
        handler.close()
        log.info("after close")
        assert out.getvalue() == "test.logs.closed after close\n"
        assert not handler._queue
    finally:
        log.removeHandler(handler)


def test_the_queue_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "MAX_QUEUED", 10)
    out = io.StringIO()
    handler = handler_into(out, interval_s=60)
    log = logger_with(handler, "test.logs.bounded")
    try:
        for i in range(25):
            log.info("line %d", i)
        assert len(handler._queue) == 10
        assert handler.dropped == 15
        handler.flush()
        assert out.getvalue().splitlines()[0] == "test.logs.bounded line 15"
    finally:
        log.removeHandler(handler)
        handler.close()
