"""The one place that chooses how worker processes start.

fork where it is safe (Linux, no other Python thread running): a script that uses nearsort as a
library needs no ``if __name__ == "__main__":`` guard, and workers start without re-importing
anything. Elsewhere forkserver (POSIX) or spawn (Windows), which re-import the main module: there
the caller's script needs the guard, as for any multiprocessing code.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading


def pool_context():
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn" if os.name == "nt" else "forkserver")
