"""A dependency-free progress bar on stderr, drawn only on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO, runtime_checkable


@runtime_checkable
class StageProgress(Protocol):
    """A progress sink for work in named stages (the attacks of a cascade), each made of units
    (batches) that are long themselves: it is told which stage runs and pulsed inside a unit."""

    def __call__(self, n: int = 1) -> None:
        """``n`` more units done."""

    def stage(self, name: str) -> None:
        """The stage now running (shown until the next one)."""

    def pulse(self, **postfix: float) -> None:
        """Work inside the current unit (e.g. ``model_calls=312``), without advancing."""


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
        self.stage_name = ""

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
            self.postfix = _format_postfix(postfix)
        self._draw(now)

    def stage(self, name: str) -> None:
        """Name the work now running (an attack of a cascade); drawn at once."""
        self.stage_name, self.postfix = name, ""
        if self.enabled:
            self._last_draw = time.perf_counter()
            self._draw(self._last_draw)

    def pulse(self, **postfix: float) -> None:
        """Redraw (at most every ``interval`` seconds) with ``postfix``, without advancing: a
        unit of work that takes long (one batch of AutoAttack's APGD-T: ~900 model calls) still
        shows it is moving."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.interval:
            return
        self._last_draw = now
        self.postfix = _format_postfix(postfix)
        self._draw(now)

    def wants_postfix(self) -> bool:
        """Whether a redraw is due (callers skip computing costly postfix values otherwise)."""
        return self.enabled and time.perf_counter() - self._last_draw >= self.interval

    def _draw(self, now: float) -> None:
        width = 24
        done = min(self.count / self.total, 1.0) if self.total else 1.0
        bar = "#" * int(done * width) + "-" * (width - int(done * width))
        elapsed = now - self.start
        stage = f"  {self.stage_name}" if self.stage_name else ""
        self.stream.write(
            f"\r{self.label} [{bar}] {self.count}/{self.total} {elapsed:5.1f}s{stage}{self.postfix}\x1b[K"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(time.perf_counter())
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _format_postfix(values: dict[str, float]) -> str:
    """``loss=0.5123, model_calls=312`` -> ``"  loss 0.5123  model calls 312"``."""
    parts = [
        f"{k.replace('_', ' ')} {v if isinstance(v, int) else format(float(v), '.4g')}"
        for k, v in values.items()
    ]
    return "  " + "  ".join(parts)
