"""A long-running process's startup heap, kept out of the garbage collector's full passes.

A full collection stops every thread of the process while it walks every object the process
holds: about 140k objects after startup (the libraries, the app or worker, its clients),
60-140 ms of CPU, and 150-900 ms of wall time on two loaded cores. In an API worker that was
R1's p99 tail; in the relay (about 7 full passes a minute at 1,000 commands/s) and the
projector it held every event in flight back by as long: P2's tail. Frozen, what startup
built is never walked again; the passes see only what was made since.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collects once, then leaves every object held now out of later passes (for good: a
    long-running process's startup heap lives as long as it does)."""
    gc.collect()
    gc.freeze()


def was_frozen() -> bool:
    """Whether this process froze its heap (a bulk load, which unfreezes what it froze,
    freezes it again after)."""
    return gc.get_freeze_count() > 0
