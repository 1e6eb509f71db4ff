"""`serve --workers N`: N server processes, each listening on its own socket bound to the one
port with SO_REUSEPORT, so the kernel spreads new connections over them by hash.

uvicorn's own workers accept from one shared socket: whichever process wakes first accepts a
whole burst, and with keep-alive clients one worker could hold every connection while the
other idled (`switchyard bench overhead --workers 2` measured 1.0x one worker at 1.4 MB x 8).
The parent binds the port first without listening (it holds the address and fails early when
it is taken; a socket that does not listen gets no connections), starts the workers, restarts
any that dies, and stops them all on SIGINT or SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

import uvicorn

from proxy import heap

log = logging.getLogger("switchyard.workers")
_CHECK_S = 0.5  # how often the parent looks for a worker that died
# A stopping worker finishes what it serves (an image may take request_timeout_s); past
# that and this much more, it is killed.
STOP_MARGIN_S = 10.0


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT, not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(config: uvicorn.Config) -> None:
    """One worker: its own socket on the port (uvicorn listens on it), its own app."""
    heap.tune()
    sock = reuse_port_socket(config.host, config.port)
    uvicorn.Server(config).run(sockets=[sock])


def run(config: uvicorn.Config, workers: int, request_timeout_s: float) -> None:
    """Serve with `workers` processes until SIGINT or SIGTERM; `config.app` must be an import
    string (each worker builds its own app). On a stop, each worker may take as long as a
    request may (as one process does): killed 10 s after it, a worker cut its answers off."""
    holder = reuse_port_socket(config.host, config.port)
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(config,), daemon=False)
        process.start()
        return process

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    try:
        while not stop.wait(_CHECK_S):
            for i, process in enumerate(processes):
                if not process.is_alive():
                    log.warning("worker %s exited (code %s); starting another", process.pid,
                                process.exitcode)
                    processes[i] = start()
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: uvicorn finishes what it serves, then exits
        until = time.monotonic() + request_timeout_s + STOP_MARGIN_S
        for process in processes:
            process.join(max(0.0, until - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        holder.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
