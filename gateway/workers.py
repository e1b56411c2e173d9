"""`serve --redis URL --workers N`: N gateway processes on one listening socket.

In cluster mode a gateway holds no state of its own, so one machine can run one per core. The
parent binds the socket, forks the workers before any event loop or Redis connection exists, and
then only supervises: SIGTERM or SIGINT is passed on to every worker (each stops cleanly), and a
worker that dies (a crash, `kill -9`) is started again after `RESTART_DELAY`. A worker that
refuses its first start (exit 2 or 3: Redis unreachable, another library version) stops them all
with its code, since its siblings would refuse too; a restarted one that refuses (Redis went away
meanwhile) is tried again, so one crash during an outage does not take the box down. The kernel spreads connections over the workers,
which accept from the one shared socket.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger("flashguard")

RESTART_DELAY = 1.0
REFUSED = (2, 3)  # exit codes of a start that cannot succeed by trying again


def _fork(index: int, sock: socket.socket, run: Callable[[socket.socket, int], int]) -> int:
    pid = os.fork()
    if pid == 0:  # the worker: its own signal handling and event loop, then out without the parent's cleanup
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
        code = 1
        try:
            code = run(sock, index)
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def supervise(workers: int, sock: socket.socket, run: Callable[[socket.socket, int], int]) -> int:
    """Run `run(sock, index)` in `workers` processes until a signal stops them; returns the exit code."""
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(running):
            os.kill(pid, signal.SIGTERM)

    running: dict[int, int] = {}  # pid -> worker index
    restarted: set[int] = set()  # a refused restart (Redis down meanwhile) is tried again, not fatal
    def start(index: int) -> None:
        """Fork and register with the stop signals held back: one arriving between the two would
        miss the new worker, and the parent would wait for it for ever."""
        signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGTERM, signal.SIGINT))
        try:
            running[_fork(index, sock, run)] = index
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(workers):
        start(index)
    code = 0
    while running:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index = running.pop(pid)
        exit_code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        if exit_code in REFUSED and index not in restarted:
            log.error("worker %d could not start (exit %d); stopping the others", index, exit_code)
            code = exit_code
            stop(signal.SIGTERM, None)
            continue
        log.error("worker %d (pid %d) ended with %s; starting it again", index, pid, exit_code)
        time.sleep(RESTART_DELAY)
        if not stopping:  # a stop may have come during the delay
            start(index)
            restarted.add(index)
    sock.close()
    return code
