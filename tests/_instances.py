"""The kill loop shared by the tests that run several real ``streamgmm run`` instances."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable


def owns_partitions(proc, timeout: float, also: str | None = None) -> bool:
    """Whether ``proc`` (a ``streamgmm run`` started with its log at ``proc.log_path``) has
    had partitions assigned (and logged ``also``, if given), waiting up to ``timeout`` seconds
    (0: look once); False as soon as it exits."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        with open(proc.log_path, errors="replace") as f:
            text = f.read()
        if "partitions assigned: ['" in text and (also is None or also in text):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return False


def kill_while_producing(
    procs: list,
    start: Callable[[], object],
    working: Callable[..., bool],
    producer: threading.Thread,
    rng,
    min_kills: int,
    pause: tuple[float, float],
    after_kill: Callable[[int], None] | None = None,
    min_self_kills: int = 0,
    prefer_working: bool = True,
) -> tuple[int, int]:
    """SIGKILL a random working instance and restart it (``start()``) until the producer is
    done and at least ``min_kills`` instances died, ``min_self_kills`` of them at their own
    fault points (whether an armed instance reaches its point before an outside kill is timing:
    on a loaded machine a run saw 1 of 2); an instance that killed itself at a fault point is
    restarted instead. ``after_kill(kills)`` runs after every kill (e.g. to restart the broker
    once, mid-run). Returns ``(kills, self_kills)``.

    ``working(proc, timeout)`` waits up to ``timeout`` seconds until ``proc`` owns partitions
    (a kill before that tests only the group join) and says whether it does. With
    ``prefer_working`` the victim is drawn from the instances that already work and only if
    none does is one waited for (drawing from all of them spent most of the loop waiting for
    the instance just restarted to start up and join: 5-8 s per kill once the stream was
    produced, 15-25 s per test); without it, from all of them."""
    kills = self_kills = 0
    deadline = math.inf  # set once the producer is done: the fault points get 60 s more
    while producer.is_alive() or kills < min_kills or self_kills < min_self_kills:
        if not producer.is_alive():
            deadline = min(deadline, time.monotonic() + 60.0)
            if time.monotonic() > deadline:
                break  # the caller's assertion on the counts says what is missing
        ready = [
            j
            for j, p in enumerate(procs)
            if prefer_working and p.poll() is None and working(p, timeout=0)
        ]
        i = rng.choice(ready) if ready else rng.randrange(len(procs))
        if not ready:
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
