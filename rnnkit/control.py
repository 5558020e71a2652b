"""What other threads (a panel's buttons and sliders, a callback, Ctrl+C) ask of a running fit.

A request only sets a flag and returns; the training loop takes the requests at its next step
boundary (:meth:`rnnkit.Trainer.fit`'s loop), so nothing ever changes in the middle of a step.
A paused loop waits on an ``Event`` (no busy-waiting) and still answers requests for a copy of
the model. Ctrl+C (SIGINT, main thread only) is one more request: the first ends the run at the
next boundary, a second interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any


class Requests:
    """The flags and queues shared between the training thread and the others."""

    def __init__(self) -> None:
        self.stop = self.pause = self.sigint = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._wake.set()
        self._lr: float | None = None
        self._copies: list[tuple[threading.Event, list]] = []
        self._open = False  # a fit is in progress and will answer copy requests

    def reset(self) -> None:
        """A new run starts with no requests pending (a learning rate set before stays)."""
        self.stop = self.pause = self.sigint = False
        self._wake.set()

    def ask_stop(self) -> None:
        self.stop = True
        self._wake.set()

    def ask_pause(self) -> None:
        self.pause = True
        self._wake.clear()

    def ask_unpause(self) -> None:
        self.pause = False
        self._wake.set()

    def ask_lr(self, lr: float) -> None:
        with self._lock:
            self._lr = lr

    def take_lr(self) -> float | None:
        with self._lock:
            lr, self._lr = self._lr, None
        return lr

    def open(self) -> None:
        """A fit begins: copy requests from now on are answered by its loop."""
        with self._lock:
            self._open = True

    def close(self, make_copy: Callable[[], Any]) -> None:
        """A fit ends: answer what is pending; later requests are told to copy themselves."""
        with self._lock:
            self._open = False
        self.answer_copies(make_copy)

    def ask_copy(self, timeout: float | None) -> tuple[bool, Any]:
        """Queue a request for a copy and wait until the loop answers it: ``(True, copy)``, or
        ``(False, None)`` when no fit is in progress to answer it."""
        done, box = threading.Event(), []
        with self._lock:
            if not self._open:
                return False, None
            self._copies.append((done, box))
        self._wake.set()  # a paused loop answers, then waits again
        if not done.wait(timeout):
            raise TimeoutError(f"no step boundary within {timeout} s to copy the model at")
        return True, box[0]

    def answer_copies(self, make_copy: Callable[[], Any]) -> None:
        with self._lock:
            requests, self._copies = self._copies, []
        for done, box in requests:
            box.append(make_copy())
            done.set()

    @property
    def ending(self) -> bool:
        return self.stop or self.sigint

    def wait_while_paused(self, make_copy: Callable[[], Any]) -> None:
        """Block until unpaused or asked to end, answering copy requests meanwhile."""
        while self.pause and not self.ending:
            self._wake.wait()
            self.answer_copies(make_copy)
            if self.pause and not self.ending:
                self._wake.clear()
                if self._copies:  # one arrived between the answer and the clear
                    self._wake.set()

    def install_sigint_handler(self):
        """Make Ctrl+C a stop request (a second one interrupts at once); returns the previous
        handler to restore, or None off the main thread (where signals never arrive)."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigint(signum, frame):
            if self.sigint:
                raise KeyboardInterrupt
            self.sigint = True
            self._wake.set()

        return signal.signal(signal.SIGINT, on_sigint)
