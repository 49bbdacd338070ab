"""Let a served model run only the forward passes a test allows, so a test controls when tokens happen.

A request on the tiny model finishes hundreds of tokens in a fraction of a second, so a test that
cancels a request (or lets its deadline pass) and then checks that it stopped early cannot tell a
working cancel from a request that simply finished. With the model held between forward passes,
the request cannot finish by itself until the test has done its part and opened the gate.
"""

from __future__ import annotations

import threading


class ForwardGate:
    """A forward pre-hook on `model` that blocks each forward pass until the test grants one (or opens the gate).

    It hooks the input embeddings, which every forward pass runs once: the model's own forward and the native
    engine's decode step (server/engines/decode_step.py), which does not go through `model.forward`."""

    def __init__(self, model, allowed: int = 0):
        self._cond = threading.Condition()
        self._allowed = allowed
        self._open = False
        self.forwards = 0          # forward passes let through so far
        self.waiting = False       # a forward pass is being held now
        self._hook = model.get_input_embeddings().register_forward_pre_hook(self._wait)

    def _wait(self, module, args) -> None:
        with self._cond:
            while not self._open and self._allowed == 0:
                self.waiting = True
                self._cond.wait()
            self.waiting = False
            if not self._open:
                self._allowed -= 1
            self.forwards += 1

    def open(self) -> None:
        """Let every forward through from now on, and take the hook off."""
        with self._cond:
            self._open = True
            self._cond.notify_all()
        self._hook.remove()

    def __enter__(self) -> "ForwardGate":
        return self

    def __exit__(self, *exc) -> None:
        self.open()


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll `condition()` until true; the timeout is only a backstop for a hung server, never a measurement."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)
