"""One render thread per browser: the newest request wins, and a still camera gets full resolution.

A camera that moves sends many updates a second; rendering each in turn would build a queue that
lags ever further behind. A :class:`FrameWorker` keeps one pending request: a newer one replaces
it. Frames asked for while moving are rendered at reduced resolution; once no request has come for
``still_after`` seconds, the same view is rendered again at full resolution. An error in a render
goes to ``on_error`` and the worker keeps serving.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class FrameWorker:
    """Calls ``render(moving)`` on its own thread, for the newest request only.

    ``render`` reads the client's current state itself (camera, mode, prompt), so a request
    carries nothing but whether the camera is moving.
    """

    def __init__(
        self,
        render: Callable[[bool], None],
        on_error: Callable[[Exception], None],
        *,
        still_after: float = 0.25,
        name: str = "feature-splat frames",
    ) -> None:
        self._render, self._on_error, self._still_after = render, on_error, still_after
        self._wake = threading.Condition()
        self._pending: bool | None = None  # None: nothing asked; else whether moving
        self._still_due: float | None = None  # when to follow a moving frame with a still one
        self._closed = False
        self.frames = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def request(self, moving: bool = False) -> None:
        """Ask for a frame (replacing a pending request); ``moving`` frames are reduced."""
        with self._wake:
            self._pending = moving if self._pending is None else (self._pending and moving)
            self._wake.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Stop after the frame in progress, if any."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def _next(self) -> bool | None:
        """The next frame to render (whether moving), or None when closed."""
        with self._wake:
            while not self._closed:
                if self._pending is not None:
                    moving, self._pending = self._pending, None
                    return moving
                if self._still_due is not None:
                    wait = self._still_due - time.monotonic()
                    if wait <= 0:
                        self._still_due = None
                        return False
                    self._wake.wait(wait)
                else:
                    self._wake.wait()
            return None

    def _loop(self) -> None:
        while (moving := self._next()) is not None:
            try:
                self._render(moving)
            except Exception as error:  # a failed frame must not end the thread
                self._on_error(error)
            self.frames += 1
            with self._wake:
                if moving:
                    self._still_due = time.monotonic() + self._still_after
                elif self._pending is None:
                    self._still_due = None
