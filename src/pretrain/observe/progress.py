"""Progress of long local steps: a tqdm bar for a person at a terminal, plain lines for logs.

A bar redraws itself with carriage returns, which in a pod's or CI's log turn into one huge line (or thousands
of them); so where the stream is not a terminal, ``auto`` prints one ordinary line every ``interval`` seconds
(and at the end) instead: done/total, percent, rate and the time left.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Literal

Mode = Literal["auto", "bar", "lines", "off"]


def resolve_mode(mode: Mode, stream: IO[str]) -> Literal["bar", "lines", "off"]:
    """``auto``: a bar when the stream is a terminal, else lines."""
    if mode != "auto":
        return mode
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Counts ``done`` of ``total`` units; draws a bar or prints lines according to ``mode``."""

    def __init__(self, label: str, total: int, mode: Mode = "auto", interval: float = 30.0, unit: str = "step",
                 initial: int = 0, stream: IO[str] | None = None) -> None:
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.done = self._start = initial
        self._began = self._last = time.monotonic()
        self._bar: Any = None
        self._closed = False
        self._shown = -1  # the count the last line showed
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=label, unit=unit, file=self.stream,
                             dynamic_ncols=True, leave=True)

    def update(self, n: int = 1) -> None:
        self.set(self.done + n)

    def set(self, done: int, note: str = "") -> None:
        """Move to ``done`` units; ``note`` (e.g. the loss) goes on the bar or the next line."""
        delta, self.done = done - self.done, done
        if self._bar is not None:
            if note:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(delta)
        elif self.mode == "lines" and not self._closed and time.monotonic() - self._last >= self.interval:
            self._line(note)

    def line(self, note: str = "") -> str:
        """The plain progress line: ``[label] 120/300 steps (40%), 3.1 steps/s, 58s left``."""
        elapsed = time.monotonic() - self._began
        rate = (self.done - self._start) / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = f"[{self.label}] {self.done}/{self.total} {self.unit}s ({pct:.0f}%)"
        if rate > 0:
            text += f", {rate:.3g} {self.unit}s/s"
            if self.done < self.total:
                text += f", {_duration((self.total - self.done) / rate)} left"
        return text + (f", {note}" if note else "")

    def _line(self, note: str = "") -> None:
        self._last, self._shown = time.monotonic(), self.done
        print(self.line(note), file=self.stream, flush=True)

    def close(self, note: str = "") -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines" and not self._closed and self._shown != self.done:
            self._line(note)
        self._closed = True  # one final line only

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
