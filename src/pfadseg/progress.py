"""Progress of long steps: a bar with ETA on a terminal, a plain line every tenth of the work when output is redirected."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol, TextIO

from tqdm.auto import tqdm

#: Redirected output gets one line per this share of the work, and one at the end.
LINE_EVERY = 0.1


class Progress(Protocol):
    """The part of tqdm's interface pfadseg uses."""

    def update(self, n: int = 1) -> Any: ...
    def set_description(self, desc: str) -> Any: ...
    def set_postfix(self, **values: Any) -> Any: ...
    def write(self, text: str) -> Any: ...
    def close(self) -> Any: ...


class LineProgress:
    """Progress as complete lines (``desc: 30/300 it (10 %), 0:42 elapsed, ETA 6:18, loss 0.1234``); none when ``quiet``.

    ``write`` always prints: warnings reach the user whether or not progress is shown.
    """

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.n, self.quiet = total, desc, unit, initial, quiet
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self._started, self._started_at = time.perf_counter(), initial
        self._step = max(1, round(LINE_EVERY * total))
        self._next = initial + self._step

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n >= self._next or self.n >= self.total:
            if not self.quiet:
                self.write(self._line())
            self._next = self.n + self._step

    def write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Nothing to clear: every line is complete."""

    def _line(self) -> str:
        elapsed = time.perf_counter() - self._started
        done = self.n - self._started_at
        eta = (self.total - self.n) * elapsed / done if done > 0 else None
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f} %)",
                 f"{_clock(elapsed)} elapsed", f"ETA {_clock(eta)}"]
        return ", ".join(parts + ([self.postfix] if self.postfix else []))


def _clock(seconds: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; ``?`` before the first step."""
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 60}:{s % 60:02d}" if s < 3600 else f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True, initial: int = 0) -> Progress:
    """A tqdm bar when stderr is a terminal, :class:`LineProgress` lines when it is redirected, nothing but warnings when disabled."""
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial, quiet=not enabled)
