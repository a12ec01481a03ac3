"""Jobs for a tracking server, run in order on a background thread: training never waits for
the server, a failed job is retried with backoff, the first failure is warned about once."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]
RETRIES = 3  # attempts per job while the server answers; one once it has stopped answering
BACKOFF_SECONDS = 0.5  # before the 2nd attempt; doubled before each next one
CLOSE_SECONDS = 30.0  # at the end, how long the jobs still queued get to finish


class Outbox:
    """A daemon thread running `put` jobs in order. A job that still fails after its retries
    is recorded by its description (`failed`), and the outbox goes on with the next one: a
    server that is down costs each later job one attempt, not the whole backoff, until one
    gets through again."""

    def __init__(self, name: str, warn: Callable[[str], None], retries: int = RETRIES,
                 backoff: float = BACKOFF_SECONDS) -> None:
        self.name, self.warn, self.retries, self.backoff = name, warn, retries, backoff
        self.failed: list[str] = []
        self.down = False
        self.warned = False
        self.current: str | None = None  # the job running now
        self._jobs: queue.Queue[tuple[str, Job] | None] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name=f"trainer-{name}", daemon=True)
        self._thread.start()

    def put(self, what: str, job: Job) -> None:
        """Queue `job` (described by `what`: "epoch 3's metrics"); returns at once."""
        self._jobs.put((what, job))

    def close(self, timeout: float = CLOSE_SECONDS) -> list[str]:
        """Let the queued jobs run for at most `timeout` seconds; returns what was not done
        (failed, or still queued when the time ran out)."""
        self._jobs.put(None)
        self._thread.join(min(timeout, 1.0))
        if self._thread.is_alive() and timeout > 1.0:  # a slow server: say why nothing moves
            calls = self._jobs.qsize()  # the queued ones and the end mark: with the running one
            self.warn(f"{self.name}: waiting up to {timeout - 1:.0f} s more for the server to "
                      f"take the last {calls} calls")
            self._thread.join(timeout - 1.0)
        if self._thread.is_alive():
            self._closing.set()  # the job running now ends with its attempt; the rest are left
            left = [item[0] for item in _drain(self._jobs) if item is not None]
            if self.current is not None:
                left.insert(0, self.current)
            return self.failed + [f"{w} (still waiting when training ended)" for w in left]
        return list(self.failed)

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            what, job = item
            if self._closing.is_set():
                self.failed.append(what)
                continue
            self.current = what
            self._attempt(what, job)
            self.current = None

    def _attempt(self, what: str, job: Job) -> None:
        tries = 1 if self.down else self.retries
        for attempt in range(tries):
            try:
                job()
                self.down = False
                return
            except Exception as e:  # any failure of the server, the network or the client
                error = e
            if attempt < tries - 1 and not self._closing.wait(self.backoff * 2 ** attempt):
                continue
            break
        self.down = True
        self.failed.append(what)
        if not self.warned:
            self.warned = True
            self.warn(f"{self.name}: could not log {what} ({_one_line(error)}); training goes "
                      f"on, and what could not be logged is listed at the end")


def _drain(jobs: queue.Queue) -> list:
    items = []
    while True:
        try:
            items.append(jobs.get_nowait())
        except queue.Empty:
            return items


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
