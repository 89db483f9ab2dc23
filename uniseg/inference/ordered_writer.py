"""Handing finished bands to the output sinks from one background thread, in order.

Encoding PNG/TIFF strips or polygonising a band takes time the model could use; a writer thread
takes those calls off the model's thread. The sinks are called exactly as before, one call after
another in submission order, only from a different thread (none of them is tied to the thread
that opened it). The queue holds at most ``max_pending`` calls, so memory stays bounded to a
couple of bands; the runner waits when it is full.

A sink's exception stops the writer: nothing after it is written, and the same exception is
raised in the runner's thread at its next :meth:`OrderedWriter.submit` or at :meth:`~OrderedWriter.close`,
so the run fails and the caller's atomic outputs are discarded as before. Leaving the ``with``
block on an exception stops the thread without running what was still queued.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional

__all__ = ["OrderedWriter"]

_POLL_S = 0.05
_STOP = object()


class OrderedWriter:
    """Run submitted calls in order: in a background thread (``background=True``) or at once."""

    def __init__(self, background: bool = True, max_pending: int = 2):
        self.background = background
        self.seconds = 0.0        # time spent in the submitted calls
        self.wait_seconds = 0.0   # time submit() waited for room in the queue
        self._error: Optional[BaseException] = None
        self._abort = threading.Event()
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, int(max_pending)))
        self._thread: Optional[threading.Thread] = None
        if background:
            self._thread = threading.Thread(target=self._run, name="uniseg-writer", daemon=True)
            self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not self.background:
            start = time.perf_counter()
            fn(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.wait_seconds += time.perf_counter() - start  # the model's thread did the writing
            return
        self._raise_if_failed()
        start = time.perf_counter()
        while True:
            try:
                self._queue.put((fn, args, kwargs), timeout=_POLL_S)
                break
            except queue.Full:
                self._raise_if_failed()  # a failed writer takes nothing more: do not wait for it forever
                if not self._thread.is_alive():
                    raise RuntimeError("the output writer thread stopped")
        self.wait_seconds += time.perf_counter() - start

    def close(self) -> None:
        """Wait until every submitted call has run; raise the first sink error, if any."""
        if self._thread is not None:
            while self._thread.is_alive():
                try:
                    self._queue.put(_STOP, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            self._thread.join()
            self._thread = None
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop the thread now; calls still queued are dropped."""
        self._abort.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "OrderedWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            fn, args, kwargs = item
            start = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # handed to the runner's thread, which raises it
                self._error = exc
                return
            finally:
                self.seconds += time.perf_counter() - start
