"""Stop requests for the Ray runner: Ctrl-C, and the signals a batch scheduler, a CI timeout or a closed ssh
session send (SIGTERM, SIGHUP), all handled alike.

Python's default for SIGTERM and SIGHUP ends the process at once, possibly while DVC is writing dvc.lock. Here a
signal only sets a flag that the runner's loop reads between two steps: it cancels the running stages, commits
nothing unfinished, and exits 128 + the signal's number (130 for Ctrl-C). A second signal stops the waiting for
the cancellation (KeyboardInterrupt), still never in the middle of a commit's write.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupt:
    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal: the user does not want to wait for the cancellation
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: cancelling the running stages (again to stop waiting)", flush=True)
