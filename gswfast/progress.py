"""Progress of long jobs on stderr: a tqdm bar on a terminal, plain lines in logs and CI.

tqdm is imported only when a bar is shown, so ``import gswfast`` and ``gswfast --help``
stay fast.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts units of work (files, windows, items) towards ``total`` (None: unknown).

    On a terminal it draws a tqdm bar (count, rate, ETA); otherwise it prints a line
    ``label: 3/10 files, 1.2 files/s, ETA 6 s`` at most every ``every`` seconds, and always
    at the end. ``quiet`` prints nothing at all.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "item",
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        every: float = 2.0,
    ) -> None:
        self.label, self.total, self.unit, self.quiet, self.every = label, total, unit, quiet, every
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self._start = self._last = time.perf_counter()
        self._printed = -1
        self._bar = None
        if not quiet and _is_terminal(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=label, unit=f" {unit}s", file=self.stream, dynamic_ncols=True
            )

    def update(self, count: int = 1) -> None:
        """``count`` more units are done."""
        self.set(self.done + count)

    def set(self, done: int) -> None:
        """``done`` units are done in all (counted elsewhere, say by every rank)."""
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
        elif (
            not self.quiet
            and done != self._printed  # the same count again (a failed input set to its end)
            and time.perf_counter() - self._last >= self.every
        ):
            self._line()

    def write(self, message: str, always: bool = False) -> None:
        """A message line that does not break the bar (nothing when quiet, unless ``always``:
        errors)."""
        if self.quiet and not always:
            return
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self, final_line: bool = True) -> None:
        """The final count (a last line, or the bar closed); no last line when the work
        stopped on an error (``final_line=False``)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif final_line and not self.quiet and self._printed != self.done:
            self._line()

    def _line(self) -> None:
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        text = f"{self.label}: {count} {self.unit}s, {rate:.2f} {self.unit}s/s"
        if self.total is not None and self.done < self.total and rate > 0:
            text += f", ETA {(self.total - self.done) / rate:.0f} s"
        print(text, file=self.stream, flush=True)
        self._last, self._printed = time.perf_counter(), self.done

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        self.close(final_line=kind is None)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
