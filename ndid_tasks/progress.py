"""Progress of long commands: a tqdm bar on a terminal, and a plain line with count, rate and ETA
every few seconds when the output goes to a log (tqdm's bar is silent or unreadable there)."""

from __future__ import annotations

import sys
import time
from typing import Self, TextIO


class Progress:
    """``update(n)`` after each unit of work; use as a context manager."""

    def __init__(self, total: int, desc: str, unit: str = "img", stream: TextIO | None = None,
                 every_s: float = 10.0) -> None:
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.done = 0
        self.start = self.last = time.monotonic()
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last >= self.every_s:
            self._line()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return (f"{self.desc}: {self.done}/{self.total}{share} {self.unit}, {rate:.1f} {self.unit}/s, "
                f"elapsed {_clock(elapsed)}, ETA {_clock(left)}")

    def _line(self) -> None:
        self.last = time.monotonic()
        print(self.line(), file=self.stream, flush=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            self._line()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
