"""Logging for `switchyard serve`: a request pays only for queuing its log line.

Formatting a record and writing it to stderr costs an image request about 50 us on the event
loop, most of it the write. Here records are queued as they come and a thread of their own
formats and writes them a batch at a time, a few times a second; nothing is lost at exit.

uvicorn is started with `log_config=None`: its own logging setup (dictConfig) would close every
handler of the process, ours included, and leave it attached. A closed handler still writes
(synchronously), and the queue is bounded, so a handler closed by someone else's setup can
neither go silent nor grow without end.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
from urllib.parse import unquote_plus

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLUSH_INTERVAL_S = 0.05
# Records waiting for the writer thread; past this the oldest are dropped (and counted), which
# only a stalled stderr can cause.
MAX_QUEUED = 100_000


class BatchingHandler(logging.Handler):
    """Queues records; its thread hands them to `target` every `interval_s` (and on flush)."""

    def __init__(self, target: logging.Handler, interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self.target = target
        self.interval_s = interval_s
        self._queue: collections.deque[logging.LogRecord] = collections.deque(maxlen=MAX_QUEUED)
        self.dropped = 0
        self._stopped = threading.Event()
        self._drain_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="switchyard-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # The message is fixed now, as logging.handlers.QueueHandler does: its arguments may
        # change before the thread formats it. A message its arguments do not fit is reported
        # as any handler reports it, never raised into the request that logged it.
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:
            record.args = None  # the report prints them, and they may hold a secret
            self.handleError(record)
            return
        if self._stopped.is_set():
            self.flush()  # what was queued before goes first
            self.target.handle(record)
            return
        if len(self._queue) == MAX_QUEUED:
            self.dropped += 1
        self._queue.append(record)

    def flush(self) -> None:
        with self._drain_lock:
            records = []
            while self._queue:
                records.append(self._queue.popleft())
            if records:
                self._write(records)
            self.target.flush()

    def _write(self, records: list[logging.LogRecord]) -> None:
        """A stream's batch goes in one write: written record by record, each line was a
        system call of this thread (stderr is line-buffered), and each let the event loop's
        thread hand this thread the GIL and wait to get it back. Other handlers take each
        record as usual."""
        target = self.target
        if type(target) is not logging.StreamHandler:
            for record in records:
                target.handle(record)
            return
        lines = []
        for record in records:
            if target.filter(record):
                try:
                    lines.append(target.format(record) + target.terminator)
                except Exception:  # RecursionError too: raised here, it would end this thread
                    target.handleError(record)
        if not lines:
            return
        target.acquire()
        try:
            target.stream.write("".join(lines))
        except Exception:
            target.handleError(records[-1])
        finally:
            target.release()

    def write_through(self) -> None:
        """From now on each record is written as it comes: at shutdown, when the process may
        end (uvicorn re-raises the signal that stopped it) before the thread's next turn."""
        self.acquire()  # emit() runs holding it: no record is queued after the flush below
        try:
            self._stopped.set()
        finally:
            self.release()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()

    def close(self) -> None:
        self.write_through()
        self.target.close()
        super().close()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            if self._queue:
                self.flush()


def configure(level: int = logging.INFO) -> BatchingHandler:
    """The root logger writes through a BatchingHandler to stderr, in the usual format; so do
    uvicorn's loggers (started with `log_config=None`, they propagate to the root).

    Records skip what the format never shows (the caller's file and line, thread and process
    names): the logging HOWTO's own advice for a hot path."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    handler = BatchingHandler(stream)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    quiet_libraries()
    hide_keys()
    return handler


# A query parameter in a logged request line: its separator, name and value.
_QUERY_PARAM = re.compile(r'([?&])([^=&\s"?#]+)=([^&\s"#]*)')


class HideKeys(logging.Filter):
    """Blanks the value of any `key` query parameter in a record: a Gemini client may send
    its tenant key as `?key=`, and uvicorn's access log prints the path with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message:
            record.msg, record.args = _QUERY_PARAM.sub(_hidden, message), None
        return True


def _hidden(param: re.Match[str]) -> str:
    separator, name, _ = param.groups()
    return f"{separator}{name}=***" if unquote_plus(name) == "key" else param.group(0)


def hide_keys() -> None:
    """uvicorn's access log never prints a `?key=` (idempotent)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, HideKeys) for f in access.filters):
        access.addFilter(HideKeys())


def quiet_libraries() -> None:
    """The PostgreSQL pool logs every checkout (INFO) and every reconnect attempt (WARNING);
    proxy.billing.postgres logs an outage and its end once each instead. For `serve` and for
    the other commands (whose logging is Python's default)."""
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def write_through() -> None:
    """Every BatchingHandler of the root logger writes synchronously from now on (called as
    the app shuts down, so its last lines are not lost with the process)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BatchingHandler):
            handler.write_through()
