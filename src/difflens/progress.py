"""Progress bars that stay readable when stderr is a log file or a pipe.

On a terminal tqdm redraws one line in place, so ten refreshes a second cost nothing. Redirected
to a file, every redraw is kept (`\\r`-separated), and a long run leaves thousands of bar lines in
the log. `progress` returns an ordinary tqdm bar that refreshes as usual on a terminal and at most
about every `FILE_INTERVAL_S` seconds otherwise; closing it always writes the final state and a newline.
"""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

FILE_INTERVAL_S = 30.0  # seconds between redraws when the stream is not a terminal


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _Bar(tqdm):
    """tqdm whose `set_postfix`/`set_description` wait for the next scheduled redraw instead of forcing one
    (tqdm's default `refresh=True` would redraw on every training step and defeat the throttling)."""

    def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
        super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    def set_description(self, desc=None, refresh=False):
        super().set_description(desc, refresh=refresh)


def progress(total: int | None, desc: str | None = None, unit: str = "it", enabled: bool = True,
             initial: int = 0, file: IO[str] | None = None) -> tqdm:
    """A tqdm bar over `total` units, drawn on `file` (default: sys.stderr, looked up at call time).

    Call `.update(n)` and `.close()` (or use it as a context manager); `set_postfix` shows at the next redraw.
    """
    stream = sys.stderr if file is None else file
    throttle = {} if _is_tty(stream) else {
        # mininterval gates redraws from update(); maxinterval (>= mininterval) keeps tqdm's monitor
        # thread from forcing redraws more often than that while dynamic miniters skips time checks
        "mininterval": FILE_INTERVAL_S, "maxinterval": FILE_INTERVAL_S}
    return _Bar(total=total, desc=desc, unit=unit, initial=initial, disable=not enabled, file=stream,
                **throttle)
