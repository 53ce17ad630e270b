"""Live frames, host-free: the newest request wins, prompts are encoded once, every stage is timed.

ComfyUI's DMD2 Live panel (`nodes/live.py`) and the command line's `live` mode (`sampler/app/live.py`) share these:
one worker thread that renders only the newest request (typing makes many), a conditioning cache per prompt, and
per-stage timings that wait for the GPU so asynchronous kernels are charged to their stage. Torch only.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, InvalidStateError
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch


class PromptCache:
    """Conditioning of the most recently used prompts; the text encoders run once per distinct prompt."""

    def __init__(self, encode: Callable[[str], dict[str, Any]], size: int = 32):
        self.encode, self.size = encode, size
        self.entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, prompt: str) -> dict[str, Any]:
        if prompt in self.entries:
            self.hits += 1
            self.entries.move_to_end(prompt)
            return self.entries[prompt]
        self.misses += 1
        cond = self.entries[prompt] = self.encode(prompt)
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return cond


@dataclass
class FrameTimings:
    """Seconds spent in each stage of one frame."""

    stages: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def __str__(self) -> str:
        parts = "  ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in self.stages.items())
        return f"{parts}  | {self.total * 1000:.1f} ms, {1 / self.total:.1f} fps"


@contextmanager
def timed(timings: FrameTimings, stage: str, device: torch.device) -> Iterator[None]:
    """Record the wall time of a stage; waits for the GPU so asynchronous kernels are charged to their stage."""
    start = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings.stages[stage] = time.perf_counter() - start


class Superseded(Exception):
    """A newer request replaced this one before it finished."""


class LatestWins:
    """One worker thread that renders only the newest request: typing produces many requests, only the last counts.

    `submit(payload)` returns a Future. A request still waiting when a newer one arrives is dropped (its Future raises
    Superseded); the one being rendered sees its `cancelled()` turn true and stops at its next check (between stages
    or sampler steps) by raising Superseded. `withdraw(future)` does the same for a request nobody waits for any more
    (the client went away). `gate(cancelled)` is entered around each render: a context manager that may wait (e.g.
    for an idle host queue, see `idle_gate`) and may raise Superseded while waiting.

    Whatever happens to a request (cancelled Future, failing render or gate, a client gone), the worker thread
    carries on with the next one: no request can wedge it.
    """

    def __init__(self, render: Callable[[Any, Callable[[], bool]], Any],
                 gate: Callable[[Callable[[], bool]], Any] | None = None, name: str = "dmd2-live"):
        self.render, self.gate, self.name = render, gate, name
        self._cond = threading.Condition()
        self._pending: tuple[int, Any, Future] | None = None
        self._running: Future | None = None
        self._generation = 0
        self._thread: threading.Thread | None = None

    def submit(self, payload: Any) -> Future:
        future: Future = Future()
        with self._cond:
            self._generation += 1
            dropped, self._pending = self._pending, (self._generation, payload, future)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()
        if dropped is not None:
            _settle(dropped[2], exception=Superseded("a newer request replaced it before it started"))
        return future

    def withdraw(self, future: Future) -> None:
        """Give up a request: dropped if still waiting, stopped at its next check if rendering."""
        with self._cond:
            if self._pending is not None and self._pending[2] is future:
                self._pending = None
            elif self._running is future:
                self._generation += 1  # its cancelled() turns true
        future.cancel()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    self._cond.wait()
                generation, payload, future = self._pending
                self._pending = None
                if not future.set_running_or_notify_cancel():  # cancelled while it waited
                    continue
                self._running = future

            def cancelled(generation: int = generation) -> bool:
                return self._generation != generation

            try:
                with (self.gate(cancelled) if self.gate else nullcontext()):
                    check_cancelled(cancelled)
                    result = self.render(payload, cancelled)
            except BaseException as e:  # noqa: BLE001 - the caller gets every failure through its Future
                _settle(future, exception=e)
            else:
                _settle(future, result=result)
            finally:
                with self._cond:
                    self._running = None


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Set a Future's outcome unless it already has one (a client may have cancelled it meanwhile)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def check_cancelled(cancelled: Callable[[], bool]) -> None:
    """Raise Superseded if a newer request has arrived (call between stages and sampler steps)."""
    if cancelled():
        raise Superseded("a newer request arrived while this one was rendering")


@contextmanager
def idle_gate(lock: threading.Lock, busy: Callable[[], bool], cancelled: Callable[[], bool],
              poll: float = 0.05) -> Iterator[None]:
    """Hold `lock` for one frame, taken only while `busy()` is false; wait (polling) while it is true.

    The host's own worker takes the same lock (briefly) before it starts a job, and its job counts as busy from the
    moment it is taken off the host queue, so host jobs and frames never overlap and a job waits at most one frame.
    """
    while True:
        lock.acquire()
        if not busy():
            break
        lock.release()
        check_cancelled(cancelled)
        time.sleep(poll)
    try:
        yield
    finally:
        lock.release()
