"""A dependency-free progress bar on stderr, drawn only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``with Progress(total, "epoch 3/30") as bar: bar.update(1, loss=0.52)``.

    Draws at most every ``interval`` seconds, and nothing at all when disabled or when the
    stream is not a TTY (logs and pipes stay clean).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float = 0.1,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.stream.isatty()
        self.total, self.label, self.interval = total, label, interval
        self.count = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self.postfix = ""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, n: int = 1) -> None:
        self.update(n)

    def update(self, n: int = 1, **postfix: float) -> None:
        self.count += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.interval and self.count < self.total:
            return
        self._last_draw = now
        if postfix:
            self.postfix = "  " + "  ".join(f"{k} {float(v):.4g}" for k, v in postfix.items())
        self._draw(now)

    def wants_postfix(self) -> bool:
        """Whether a redraw is due (callers skip computing costly postfix values otherwise)."""
        return self.enabled and time.perf_counter() - self._last_draw >= self.interval

    def _draw(self, now: float) -> None:
        width = 24
        done = min(self.count / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        elapsed = now - self.start
        self.stream.write(
            f"\r{self.label} [{bar}] {self.count}/{self.total} {elapsed:5.1f}s{self.postfix}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\r\x1b[K")
            self.stream.flush()
