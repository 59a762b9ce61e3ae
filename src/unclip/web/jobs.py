"""The bounded job queue in front of the model: one job computes at a time, a few wait, more are refused.

A job is a function ``run(progress) -> [(PIL image, params), ...]`` executed on one worker thread. Each
job keeps the ordered list of its events, which the server streams (server-sent events) and which a
client may replay from any point: ``queued`` {position} (again whenever it moves up), ``started``,
``progress`` {stage, step, total}, then one of ``done`` {job}, ``error`` {message} or ``cancelled``.
Cancelling a waiting job removes it at once; a running job stops at its next sampling step.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from unclip.web.store import ImageStore, StoredImage

log = logging.getLogger("unclip.web")

ProgressFn = Callable[[str, int, int], None]
RunFn = Callable[[ProgressFn], list[tuple[Image.Image, dict[str, Any]]]]
TERMINAL = ("done", "error", "cancelled")


class QueueFull(Exception):
    """Raised by :meth:`JobManager.submit` when every waiting place is taken; ``retry_after`` in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised inside a running job (from its progress callback) when it was cancelled."""


@dataclass
class Job:
    """One request's work and everything a client may ask about it."""

    id: str
    kind: str
    params: dict[str, Any]
    run: RunFn
    status: str = "queued"
    position: int | None = None
    progress: tuple[str, int, int] | None = None
    images: list[StoredImage] = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    finished_event: threading.Event = field(default_factory=threading.Event)
    changed: asyncio.Event | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class JobManager:
    """Queue, worker thread and job records.

    Args:
        store: where results go.
        max_waiting: jobs that may wait behind the running one (0: only one job at all).
        keep_jobs: finished jobs remembered for ``GET /jobs/{id}``.
        describe: job -> the JSON object sent with its ``done`` event.
    """

    def __init__(
        self,
        store: ImageStore,
        max_waiting: int = 4,
        keep_jobs: int = 256,
        describe: Callable[[Job], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.max_waiting = max_waiting
        self.keep_jobs = keep_jobs
        self.describe = describe or (lambda job: {"id": job.id, "status": job.status})
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.mean_seconds = 5.0  # running estimate of one job's duration (Retry-After)
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ------------------------------------------------------------------ life cycle

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker; ``loop`` (the server's event loop) is woken when a job changes."""
        self._loop = loop
        self._stopping = False
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="unclip-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job and stop the worker (waits up to ``timeout`` s for the running step)."""
        with self._cond:
            self._stopping = True
            for job in list(self.waiting):
                self._finish(job, "cancelled")
            self.waiting.clear()
            if self.running is not None:
                self.running.cancel_requested.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ requests

    def submit(self, kind: str, params: dict[str, Any], run: RunFn) -> Job:
        """Queue a job; raises :class:`QueueFull` when ``max_waiting`` jobs already wait."""
        with self._cond:
            if self._stopping:
                raise QueueFull(self.retry_after())
            busy = self.running is not None or bool(self.waiting)
            if busy and len(self.waiting) >= self.max_waiting:
                raise QueueFull(self.retry_after())
            job = Job(secrets.token_hex(8), kind, params, run)
            self.jobs[job.id] = job
            self.waiting.append(job)
            job.position = len(self.waiting)
            self._emit(job, "queued", {"position": job.position})
            self._forget_old()
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self.jobs.get(job_id)

    def cancel(self, job: Job) -> None:
        """Cancel a waiting job now, or ask a running one to stop at its next step."""
        with self._cond:
            if job.status == "queued" and job in self.waiting:
                self.waiting.remove(job)
                self._finish(job, "cancelled")
                self._update_positions()
            elif job.status == "running":
                job.cancel_requested.set()

    def retry_after(self) -> int:
        """Seconds until a waiting place is likely free (at least 1)."""
        return max(1, min(3600, math.ceil(self.mean_seconds)))

    def stats(self) -> dict[str, int]:
        with self._cond:
            running = int(self.running is not None)
            return {"running": running, "waiting": len(self.waiting), "max_waiting": self.max_waiting}

    async def wait_for_change(self, job: Job, seen: int, timeout: float) -> None:
        """Return when ``job`` has more than ``seen`` events, is finished, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while len(job.events) <= seen and not job.terminal:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if job.changed is None:
                job.changed = asyncio.Event()
            changed = job.changed
            if len(job.events) > seen or job.terminal:
                return
            try:
                # the short cap also covers a server without a loop attached (no wake-ups)
                await asyncio.wait_for(changed.wait(), min(left, 0.5 if self._loop is None else left))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ worker side

    def _emit(self, job: Job, name: str, data: dict[str, Any]) -> None:
        job.events.append((name, data))
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._wake, job)
            except RuntimeError:  # loop closed meanwhile
                pass

    @staticmethod
    def _wake(job: Job) -> None:
        changed, job.changed = job.changed, None
        if changed is not None:
            changed.set()

    def _update_positions(self) -> None:
        for i, job in enumerate(self.waiting, start=1):
            if job.position != i:
                job.position = i
                self._emit(job, "queued", {"position": i})

    def _finish(self, job: Job, status: str, error: str | None = None) -> None:
        job.status, job.error, job.position = status, error, None
        job.finished = time.time()
        if status == "done":
            self._emit(job, "done", self.describe(job))
        elif status == "error":
            self._emit(job, "error", {"message": error or "failed"})
        else:
            self._emit(job, "cancelled", {})
        job.finished_event.set()

    def _forget_old(self) -> None:
        if len(self.jobs) <= self.keep_jobs:
            return
        for job_id in [j.id for j in self.jobs.values() if j.terminal][: len(self.jobs) - self.keep_jobs]:
            del self.jobs[job_id]

    def _progress(self, job: Job) -> ProgressFn:
        def progress(stage: str, step: int, total: int) -> None:
            if job.cancel_requested.is_set():
                raise JobCancelled
            job.progress = (stage, step, total)
            self._emit(job, "progress", {"stage": stage, "step": step, "total": total})

        return progress

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self.waiting.popleft()
                self.running = job
                job.status, job.position, job.started = "running", None, time.time()
                self._emit(job, "started", {})
                self._update_positions()
            status, error = "done", None
            t0 = time.monotonic()
            try:
                if job.cancel_requested.is_set():
                    raise JobCancelled
                results = job.run(self._progress(job))
                job.images = [
                    self.store.add(image, job.kind, params, index=i) for i, (image, params) in enumerate(results)
                ]
            except JobCancelled:
                status = "cancelled"
            except (ValueError, TypeError, FileNotFoundError) as err:
                status, error = "error", str(err)
            except Exception as err:  # never let one job take the server down
                log.exception("job %s failed", job.id)
                status, error = "error", f"internal error: {type(err).__name__}: {err}"
            elapsed = time.monotonic() - t0
            with self._cond:
                if status == "done":
                    self.mean_seconds = 0.7 * self.mean_seconds + 0.3 * elapsed
                self.running = None
                self._finish(job, status, error)
                self._forget_old()
