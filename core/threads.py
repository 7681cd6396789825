"""One BLAS thread per process, for the whole process.

OpenBLAS's worker threads spin while they wait for work, so on the small matrix products this project makes
(a simulated day's users × titles, implicit's per-user solves) a second thread costs CPU without saving time:
building the default world took 12 s of CPU with two BLAS threads and 7.4 s with one, in the same 7.5 s of wall
time (2 cores). implicit runs 1.5–3× slower and warns otherwise (STACK-NOTES)."""
from __future__ import annotations

import threading

from threadpoolctl import threadpool_limits

_blas_pinned = False
_pin_lock = threading.Lock()


def pin_blas() -> None:
    """Pin every loaded BLAS to one thread, once per process.

    OpenBLAS's thread count is process-wide, so one call covers every thread. Called before every fit, recommend,
    explain and simulated day, but it works only the first time: `threadpool_limits` re-discovers the loaded
    libraries by reading /proc/self/maps (2–5 ms), which was about 45 % of a served request when it ran per call
    (issue 16). A BLAS loaded after the first call keeps its default (numpy's and scipy's load with numpy).
    """
    global _blas_pinned
    if _blas_pinned:
        return
    with _pin_lock:
        if not _blas_pinned:
            threadpool_limits(1, "blas")
            _blas_pinned = True
