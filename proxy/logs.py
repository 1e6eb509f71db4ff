"""Logging for `switchyard serve`: a request pays only for queuing its log line.

Formatting a record and writing it to stderr costs an image request about 50 us on the event
loop, most of it the write. Here records are queued as they come and a thread of their own
formats and writes them a batch at a time, a few times a second; nothing is lost at exit.
"""

from __future__ import annotations

import collections
import logging
import sys
import threading

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FLUSH_INTERVAL_S = 0.05


class BatchingHandler(logging.Handler):
    """Queues records; its thread hands them to `target` every `interval_s` (and on flush)."""

    def __init__(self, target: logging.Handler, interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        self.target = target
        self.interval_s = interval_s
        self._queue: collections.deque[logging.LogRecord] = collections.deque()
        self._closed = threading.Event()
        self._drain_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="switchyard-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # The message is fixed now, as logging.handlers.QueueHandler does: its arguments may
        # change before the thread formats it.
        record.msg, record.args = record.getMessage(), None
        self._queue.append(record)

    def flush(self) -> None:
        with self._drain_lock:
            while self._queue:
                self.target.handle(self._queue.popleft())
            self.target.flush()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        self.target.close()
        super().close()

    def _run(self) -> None:
        while not self._closed.wait(self.interval_s):
            if self._queue:
                self.flush()


def configure(level: int = logging.INFO) -> BatchingHandler:
    """The root logger writes through a BatchingHandler to stderr, in the usual format.

    Records skip what the format never shows (the caller's file and line, thread and process
    names): the logging HOWTO's own advice for a hot path."""
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(FORMAT))
    handler = BatchingHandler(stream)
    logging.basicConfig(level=level, handlers=[handler])
    return handler
