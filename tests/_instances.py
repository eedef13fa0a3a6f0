"""The kill loop shared by the tests that run several real ``streamgmm run`` instances."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable


def kill_while_producing(
    procs: list,
    start: Callable[[], object],
    working: Callable[[object], None],
    producer: threading.Thread,
    rng,
    min_kills: int,
    pause: tuple[float, float],
    after_kill: Callable[[int], None] | None = None,
) -> tuple[int, int]:
    """SIGKILL a random working instance and restart it (``start()``) until the producer is
    done and at least ``min_kills`` instances died; an instance that killed itself at a fault
    point is restarted instead. ``after_kill(kills)`` runs after every kill (e.g. to restart
    the broker once, mid-run). Returns ``(kills, self_kills)``."""
    kills = self_kills = 0
    while producer.is_alive() or kills < min_kills:
        i = rng.randrange(len(procs))
        working(procs[i])
        time.sleep(rng.uniform(*pause))
        died = [j for j, p in enumerate(procs) if p.poll() is not None]
        for j in died:  # killed itself at a fault point
            kills += 1
            self_kills += 1
            procs[j] = start()
            if after_kill is not None:
                after_kill(kills)
        if died:
            continue
        procs[i].send_signal(signal.SIGKILL)
        procs[i].wait()
        kills += 1
        procs[i] = start()
        if after_kill is not None:
            after_kill(kills)
    producer.join()
    return kills, self_kills
