#!/usr/bin/env python
"""Crash loop against a real Kafka broker: SIGKILL the processor again and again, then audit.

Produces ``--records`` JSON records (plus one invalid record in every ``--bad-every``) to a
``--partitions``-partition topic, runs ``streamgmm run`` as a subprocess and kills it with SIGKILL
``--kills`` times, restarting it after each kill, then lets a last run finish the topic. The
kills rotate over every phase of the loop: ``poll``, ``score``, ``produce``, ``flush``,
``checkpoint_write`` and ``commit`` are hit exactly through the ``SGMM_FAULTS`` hook
(``streamgmm/service/faults.py``: the process SIGKILLs itself on the N-th time it reaches that
point), ``external`` is a SIGKILL from this script at a random moment. An uninterrupted run over
the same topic is the reference. Prints:

- records in, outputs, dead letters, duplicates (and how many differ from their first copy),
  lost input offsets;
- ``n_samples_seen_`` of the final checkpoint (``streamgmm inspect --json``) vs valid records;
- the final model's difference from the uninterrupted run.

    python scripts/fault_injection.py --records 500000 --kills 30 --seed 1

``--scenario`` picks other faults (``all``: every one, in turn):

- ``dynamic-crash-loop``: the same crash loop with the default (dynamic) group membership and a
  short session (``--session-ms``): each restart waits for the killed member's session to expire,
  external kills land anywhere from start-up to deep in processing;
- ``delayed-restart``: SIGKILL between "checkpoint written" and "offsets committed", restart
  after the session expired (dynamic and static membership): nothing may be learned twice;
- ``damaged``: the newest checkpoint truncated, zero-length, bit-flipped, garbage, replaced by a
  copy of the oldest, or every checkpoint deleted with the journals kept: the restart must resume
  from the previous checkpoint (behind the committed offsets) or refuse (exit 2), never hang;
- ``codecs``: topics compressed with gzip, snappy, lz4 and zstd by Kafka's own Java producer
  (``scripts/kafka/LineProducer.java``, run from the provisioned jars).

Uses $KAFKA_BOOTSTRAP_SERVERS if set, else starts its own broker with scripts/kafka_broker.py
and stops it by its pid at the end. The test suite imports this file
(tests/test_reliability_crash.py) and runs the same loop at a smaller scale.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CENTRES = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
FEATURES = ["a", "b", "c"]
BAD = [
    b"not json",
    b'{"a": 1, "b": 2',
    b"[1, 2, 3]",
    b'{"a": 1, "b": 2}',
    b'{"a": "x", "b": 1, "c": 2}',
    b'{"a": NaN, "b": 1, "c": 2}',
    b'{"a": 1e400, "b": 1, "c": 2}',
    b"\xff\xfe not utf-8",
    b"",
]
PHASES = ("poll", "score", "produce", "flush", "checkpoint_write", "commit", "external")
# How many times a point is reached before the kill: points reached once per batch get a wider
# range than those reached once per checkpoint.
_NTH = {"poll": 14, "score": 12, "produce": 12, "flush": 3, "checkpoint_write": 3, "commit": 3}


def cli_command() -> list[str]:
    """The `streamgmm` command (the tests that start the CLI use it too)."""
    # The installed entry point beside this interpreter first: a version manager's shim found
    # on PATH (pyenv's is a shell script that runs `pyenv exec`) costs ~0.1 s per start, and
    # the crash loops start the CLI dozens of times.
    beside = Path(sys.executable).with_name("streamgmm")
    exe = str(beside) if beside.is_file() else shutil.which("streamgmm")
    return [exe] if exe else [sys.executable, "-m", "streamgmm.service.cli"]


def produce(
    bootstrap: str, topic: str, n: int, partitions: int, seed: int = 0, bad_every: int = 1000
) -> int:
    """``n`` records round-robin over the partitions (one invalid in every ``bad_every``), fast
    (acks=1, large batches). Returns the number of valid records."""
    from kafka import KafkaProducer

    rng = np.random.default_rng(seed)
    X = CENTRES[rng.integers(0, len(CENTRES), n)] + rng.standard_normal((n, 3))
    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks=1,
        enable_idempotence=False,
        linger_ms=20,
        batch_size=512 * 1024,
        compression_type=None,
    )
    valid = 0
    for i, (a, b, c) in enumerate(X.tolist()):
        if bad_every and i % bad_every == bad_every // 2:
            v = BAD[(i // bad_every) % len(BAD)]
        else:
            v = b'{"a": %r, "b": %r, "c": %r}' % (a, b, c)
            valid += 1
        p.send(topic, value=v, partition=i % partitions)
    p.flush()
    p.close()
    return valid


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of ``topic`` up to its current end offsets (no consumer group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=20000)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    out: list = []
    deadline = time.monotonic() + 120
    while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
        for msgs in c.poll(timeout_ms=500).values():
            out.extend(msgs)
    c.close()
    return out


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
    end = {tp.partition: o for tp, o in c.end_offsets(tps).items()}
    c.close()
    return end


def make_topics(bootstrap: str, partitions: int, stem: str = "faults") -> tuple[str, str, str]:
    from kafka import KafkaAdminClient

    tag = uuid.uuid4().hex[:8]
    names = (f"{stem}-in-{tag}", f"{stem}-out-{tag}", f"{stem}-dlq-{tag}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics(
        {
            names[0]: {"num_partitions": partitions, "replication_factor": 1},
            names[1]: {"num_partitions": 2, "replication_factor": 1},
            names[2]: {"num_partitions": 1, "replication_factor": 1},
        },
        timeout_ms=30_000,
        wait_for_metadata=True,
    )
    admin.close()
    return names


def run_cmd(
    bootstrap: str, tin: str, tout: str, tdlq: str, group: str, ckdir: Path, every: int
) -> list[str]:
    """The ``streamgmm run`` command line of the crash loop (gate off: every valid record is
    learned, so ``n_samples_seen_`` must equal the valid count)."""
    return [
        *cli_command(),
        "run",
        "--bootstrap-servers",
        bootstrap,
        "--topic",
        tin,
        "--output-topic",
        tout,
        "--dead-letter-topic",
        tdlq,
        "--group-id",
        group,
        "--checkpoint-dir",
        str(ckdir),
        "--checkpoint-every",
        str(every),
        "--features",
        ",".join(FEATURES),
        "--n-components",
        "3",
        "--warm-up",
        "300",
        "--random-state",
        "0",
        "--no-gate",
        "--max-poll-records",
        "1000",
        "--idle-timeout",
        "4",
        "--log-format",
        "text",
    ]


@dataclass
class Incarnation:
    phase: str
    nth: int | None
    returncode: int | None = None
    seconds: float = 0.0


@dataclass
class CrashLoop:
    """Result of :func:`crash_loop`."""

    runs: list[Incarnation] = field(default_factory=list)

    @property
    def kills(self) -> list[Incarnation]:
        return [r for r in self.runs if r.returncode == -signal.SIGKILL]

    def kills_by_phase(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for r in self.kills:
            out[r.phase] += 1
        return dict(out)


def _env(faults: str | None, static: bool = True, session_ms: int | None = None) -> dict[str, str]:
    """The processor's environment: ``static`` membership (restarts rejoin at once instead of
    waiting for the killed member's session to expire) or the default dynamic one, and an
    optional shorter group session timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMGMM_")}
    if static:
        env["STREAMGMM_KAFKA__GROUP_INSTANCE_ID"] = "fault-injection"
    if session_ms is not None:
        env["STREAMGMM_KAFKA__SESSION_TIMEOUT_MS"] = str(session_ms)
    if faults:
        env["SGMM_FAULTS"] = faults
    return env


def _done(ckdir: Path) -> int:
    """Input records covered by the newest checkpoint."""
    from streamgmm.service.checkpoint import latest_checkpoint

    ck = latest_checkpoint(ckdir) if ckdir.exists() else None
    return sum(ck.meta["offsets"]["kafka"].values()) if ck is not None else 0


def crash_loop(
    cmd: list[str],
    kills: int,
    seed: int,
    log_path: Path,
    total: int,
    ckdir: Path,
    every: int,
    batch: int = 1000,
    timeout: float = 120.0,
    static: bool = True,
    session_ms: int | None = None,
    external: tuple[float, float] = (0.8, 2.2),
):
    """Run ``cmd`` ``kills`` times with a kill each (rotating over :data:`PHASES`), then once
    to the end. Returns a :class:`CrashLoop`; raises if a run fails other than by SIGKILL.
    ``static``/``session_ms``: group membership (see :func:`_env`); ``external``: range of the
    random moment (seconds after start) of the kills from outside.

    Where a point is reached N times per run, N is drawn so that the kills spread over the
    whole topic: about twice the records still to do per remaining kill, at most."""
    rng = random.Random(seed)
    phases = list(itertools.islice(itertools.cycle(PHASES), kills))
    rng.shuffle(phases)
    result = CrashLoop()
    with open(log_path, "ab") as log:
        for i, phase in enumerate([*phases, None]):
            nth = None
            if phase not in (None, "external"):
                share = 2 * max(0, total - _done(ckdir)) / max(1, kills - i)
                per = every if phase in ("flush", "checkpoint_write", "commit") else batch
                nth = rng.randint(1, max(1, min(_NTH[phase], round(share / per))))
            faults = f"{phase}:kill@{nth}" if nth else None
            inc = Incarnation(phase or "final", nth)
            log.write(f"=== run: {inc.phase} nth={nth}\n".encode())
            log.flush()
            t0 = time.monotonic()
            env = _env(faults, static, session_ms)
            p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
            try:
                if phase == "external":
                    # anywhere from start-up (restore, group join: ~1.4 s) into processing
                    time.sleep(rng.uniform(*external))
                    p.send_signal(signal.SIGKILL)
                inc.returncode = p.wait(timeout=timeout)
            except BaseException:
                p.kill()
                p.wait()
                raise
            inc.seconds = time.monotonic() - t0
            result.runs.append(inc)
            if inc.returncode not in (0, -signal.SIGKILL):
                raise RuntimeError(f"run {inc.phase} exited with {inc.returncode}; see {log_path}")
    return result


def inspect(ckdir: Path) -> dict:
    r = subprocess.run(
        [*cli_command(), "inspect", str(ckdir), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(r.stdout)


def audit(bootstrap: str, tin: str, tout: str, tdlq: str) -> dict:
    """Outputs and dead letters against the input offsets."""
    outs, dead = read_topic(bootstrap, tout), read_topic(bootstrap, tdlq)
    by_coord: dict[tuple, list] = defaultdict(list)
    for m in itertools.chain(outs, dead):
        src = json.loads(m.value)["source"]
        by_coord[(src["topic"], src["partition"], src["offset"])].append((m.key, m.value))
    end = end_offsets(bootstrap, tin)
    lost = [(tin, p, o) for p, n in end.items() for o in range(n) if (tin, p, o) not in by_coord]
    extra = [c for c in by_coord if c[0] != tin or c[2] >= end.get(c[1], 0)]
    dups = {c: v for c, v in by_coord.items() if len(v) > 1}
    differing = [c for c, v in dups.items() if any(x != v[0] for x in v[1:])]
    return {
        "records_in": sum(end.values()),
        "outputs": len(outs),
        "dead_letters": len(dead),
        "duplicated_records": len(dups),
        "duplicate_copies": sum(len(v) - 1 for v in dups.values()),
        "duplicates_differing": len(differing),
        "differing_examples": [dups[c][:2] for c in differing[:2]],
        "lost": len(lost),
        "lost_examples": lost[:5],
        "unexpected": len(extra),
    }


def model_difference(ck_a: Path, ck_b: Path) -> dict:
    """Largest differences between two final models, components matched by their means."""
    from streamgmm.service.checkpoint import latest_checkpoint
    from streamgmm.service.processor import model_from_checkpoint

    a, _ = model_from_checkpoint(latest_checkpoint(ck_a))
    b, _ = model_from_checkpoint(latest_checkpoint(ck_b))
    best = None
    for perm in itertools.permutations(range(a.n_components)):
        d = float(np.abs(a.means_ - b.means_[list(perm)]).max())
        if best is None or d < best[0]:
            best = (d, list(perm))
    perm = best[1]
    return {
        "max_abs_mean": best[0],
        "max_abs_weight": float(np.abs(a.weights_ - b.weights_[perm]).max()),
        "max_abs_cov": float(np.abs(a.covariances_ - b.covariances_[perm]).max()),
        "n_samples_seen": (int(a.n_samples_seen_), int(b.n_samples_seen_)),
    }


def experiment(
    bootstrap: str,
    records: int,
    partitions: int,
    kills: int,
    seed: int,
    workdir: Path,
    bad_every: int = 1000,
    every: int = 4000,
    reference: bool = True,
    static: bool = True,
    session_ms: int | None = None,
    external: tuple[float, float] = (0.8, 2.2),
) -> dict:
    """The whole experiment; returns every figure (see the module docstring)."""
    t0 = time.monotonic()
    tin, tout, tdlq = make_topics(bootstrap, partitions)
    valid = produce(bootstrap, tin, records, partitions, seed=seed, bad_every=bad_every)
    t_produce = time.monotonic() - t0
    ck = workdir / "ck"
    loop = crash_loop(
        run_cmd(bootstrap, tin, tout, tdlq, f"crash-{tin}", ck, every),
        kills,
        seed,
        workdir / "crash-loop.log",
        total=records,
        ckdir=ck,
        every=every,
        static=static,
        session_ms=session_ms,
        external=external,
    )
    t_loop = time.monotonic() - t0 - t_produce
    figures = audit(bootstrap, tin, tout, tdlq)
    final = inspect(ck)
    figures.update(
        valid=valid,
        n_samples_seen=final["n_samples_seen"],
        kills=len(loop.kills),
        kills_by_phase=loop.kills_by_phase(),
        runs=len(loop.runs),
        seconds_produce=round(t_produce, 1),
        seconds_crash_loop=round(t_loop, 1),
    )
    if reference:
        _, rout, rdlq = make_topics(bootstrap, 1, stem="faults-ref")
        rck = workdir / "ref-ck"
        # Uninterrupted, it stops at the topic's last record (--max-records) instead of idling
        # out; the crash loop's final run keeps the idle timeout: ending there shows that no
        # replay was left waiting (a run stopped by a count could hide one).
        cmd = [
            *run_cmd(bootstrap, tin, rout, rdlq, f"ref-{tin}", rck, every),
            *("--max-records", str(records)),
        ]
        with open(workdir / "reference.log", "wb") as log:
            subprocess.run(cmd, stdout=log, stderr=log, env=_env(None), check=True, timeout=600)
        figures["model_difference"] = model_difference(ck, rck)
    return figures


# -- single faults -----------------------------------------------------------------------------
def run_once(
    cmd: list[str],
    log_path: Path,
    faults: str | None = None,
    static: bool = True,
    session_ms: int | None = None,
    timeout: float = 90.0,
) -> int:
    """One incarnation of ``cmd`` (output appended to ``log_path``); its return code, or
    ``"timeout"`` if it had to be killed after ``timeout`` seconds (a hang)."""
    with open(log_path, "ab") as log:
        log.write(f"=== run: faults={faults} static={static}\n".encode())
        log.flush()
        p = subprocess.Popen(cmd, stdout=log, stderr=log, env=_env(faults, static, session_ms))
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            return "timeout"


def _outcome(bootstrap: str, topics: tuple[str, str, str], ck: Path, valid: int) -> dict:
    figures = audit(bootstrap, *topics)
    try:
        figures["n_samples_seen"] = inspect(ck)["n_samples_seen"]
    except subprocess.CalledProcessError:
        figures["n_samples_seen"] = None
    figures["valid"] = valid
    return figures


def _wait_group_empty(bootstrap: str, group: str, timeout: float) -> None:
    """Until the group coordinator has no member left in ``group``: the killed member's
    session has expired (static or dynamic membership alike)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + timeout
        while True:
            members = admin.describe_groups([group])[group]["members"]
            if not members:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"group {group} still has members after {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        admin.close()


def delayed_restart(
    bootstrap: str,
    workdir: Path,
    static: bool = False,
    records: int = 12_000,
    partitions: int = 2,
    every: int = 3000,
    session_ms: int = 3000,
    seed: int = 0,
) -> dict:
    """SIGKILL between "checkpoint written" and "offsets committed" (the committed offsets lag
    the checkpoint by one interval), wait longer than the group session timeout, restart:
    the restart must seek to the checkpoint's offsets. Returns the audit figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    topics = make_topics(bootstrap, partitions, stem="delayed")
    valid = produce(bootstrap, topics[0], records, partitions, seed=seed)
    ck = workdir / "ck"
    cmd = run_cmd(bootstrap, *topics, f"delayed-{topics[0]}", ck, every)
    log_path = workdir / "delayed-restart.log"
    first = run_once(cmd, log_path, "commit:kill@2", static, session_ms)
    _wait_group_empty(bootstrap, f"delayed-{topics[0]}", timeout=session_ms / 1000 + 30)
    # The restart stops at the topic's last record (--max-records counts the records in across
    # restarts, as the checkpoint has them) instead of idling out. Were the checkpoint's
    # offsets not applied, it would read records again, stop short of the end and leave some
    # without output ("lost"), besides learning them twice.
    until_end = ["--max-records", str(records)]
    second = run_once([*cmd, *until_end], log_path, None, static, session_ms)
    return {**_outcome(bootstrap, topics, ck, valid), "returncodes": [first, second]}


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


#: Ways to damage the newest checkpoint (or all of them, keeping the batch journals).
DAMAGES = {
    "truncated": lambda paths: paths[-1].write_bytes(paths[-1].read_bytes()[:300]),
    "zero-length": lambda paths: paths[-1].write_bytes(b""),
    "bit-flipped": lambda paths: _flip(paths[-1]),
    "garbage": lambda paths: paths[-1].write_bytes(os.urandom(4096)),
    "oldest-over-newest": lambda paths: shutil.copyfile(paths[0], paths[-1]),
    "deleted-journal-kept": lambda paths: [p.unlink() for p in paths],
}


def damaged_checkpoint(
    bootstrap: str,
    workdir: Path,
    damage: str,
    records: int = 11_500,
    partitions: int = 2,
    every: int = 2000,
    static: bool = False,
    session_ms: int = 3000,
    seed: int = 0,
) -> dict:
    """SIGKILL a run that has checkpointed (and committed) most of the topic and processed
    the rest, damage the newest checkpoint (see :data:`DAMAGES`), restart with
    ``--idle-timeout``: the restart must resume from the previous checkpoint — behind the
    committed offsets — and finish the topic, or refuse clearly (exit 2); never hang."""
    from streamgmm.service.checkpoint import checkpoint_paths

    workdir.mkdir(parents=True, exist_ok=True)
    topics = make_topics(bootstrap, partitions, stem="damaged")
    valid = produce(bootstrap, topics[0], records, partitions, seed=seed)
    ck = workdir / "ck"
    cmd = run_cmd(bootstrap, *topics, f"damaged-{topics[0]}", ck, every)
    log_path = workdir / f"damaged-{damage}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=_env(None, static, session_ms))
        deadline = time.monotonic() + 120
        while (
            _done(ck) < records - records % every
            and time.monotonic() < deadline
            and proc.poll() is None
        ):
            time.sleep(0.2)
        time.sleep(1.0)  # the records after the last checkpoint are processed meanwhile
        proc.send_signal(signal.SIGKILL)
        first = proc.wait()
    paths = checkpoint_paths(ck)
    first_log = log_path.read_text(errors="replace")
    DAMAGES[damage](paths)
    t0 = time.monotonic()
    second = run_once(cmd, log_path, None, static, session_ms, timeout=90)
    seconds = round(time.monotonic() - t0, 1)
    tail = log_path.read_text(errors="replace").split("=== run:")[-1]
    return {
        **_outcome(bootstrap, topics, ck, valid),
        "returncodes": [first, second],
        "checkpoints_before": [p.name for p in paths],
        "restart_seconds": seconds,
        "first_log": first_log,
        "restart_log": tail,
    }


def java_produce(bootstrap: str, topic: str, lines: list[bytes], compression: str) -> int:
    """Produce ``lines`` with Kafka's own Java producer, from the provisioned broker jars:
    ``compression`` is a ``compression.type`` or a comma-separated list (line i is sent with
    the i-th modulo their number). Returns the number of records sent."""
    libs = _broker_module().provision()
    source = HERE / "kafka" / "LineProducer.java"
    r = subprocess.run(
        ["java", "-cp", f"{libs}/*", str(source), bootstrap, topic, compression],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise RuntimeError(f"Java producer failed: {r.stderr.decode(errors='replace')[-2000:]}")
    return int(r.stdout.split()[-1])


def compressed_topic(
    bootstrap: str, workdir: Path, codec: str, records: int = 2000, seed: int = 0
) -> dict:
    """Records compressed by the Java producer with ``codec`` (or a comma-separated list of
    codecs, interleaved in one topic), consumed by ``streamgmm run``."""
    workdir.mkdir(parents=True, exist_ok=True)
    topics = make_topics(bootstrap, 1, stem="codec-" + codec.replace(",", "-"))
    rng = np.random.default_rng(seed)
    X = CENTRES[rng.integers(0, len(CENTRES), records)] + rng.standard_normal((records, 3))
    lines = [b'{"a": %r, "b": %r, "c": %r}' % tuple(x) for x in X.tolist()]
    sent = java_produce(bootstrap, topics[0], lines, codec)
    ck = workdir / f"ck-{codec}"
    cmd = run_cmd(bootstrap, *topics, f"codec-{topics[0]}", ck, 4000)
    # One uninterrupted run: it stops at the topic's last record rather than idling out.
    cmd += ["--max-records", str(sent)]
    rc = run_once(cmd, workdir / "codecs.log", None, True, None, timeout=90)
    return {**_outcome(bootstrap, topics, ck, records), "sent": sent, "returncode": rc}


def _broker_module():
    import kafka_broker as mod  # beside this script: on the path when run as a script

    return mod


def _ok(f: dict) -> bool:
    """Nothing lost or invented, nothing learned twice, duplicates identical."""
    return (
        f["lost"] == 0
        and f["unexpected"] == 0
        and f["duplicates_differing"] == 0
        and f["n_samples_seen"] == f["valid"]
    )


def _line(f: dict) -> str:
    return (
        f"in {f['records_in']} ({f['valid']} valid), out {f['outputs']}, dead {f['dead_letters']}, "
        f"lost {f['lost']}, duplicated {f['duplicated_records']} ({f['duplicates_differing']} "
        f"differing), n_samples_seen {f['n_samples_seen']}"
    )


def _print_crash_loop(title: str, f: dict, workdir: Path) -> bool:
    print(f"== {title}")
    print(f"records in          {f['records_in']}  ({f['valid']} valid)")
    print(f"outputs             {f['outputs']}")
    print(f"dead letters        {f['dead_letters']}")
    print(
        f"duplicates          {f['duplicated_records']} records output more than once "
        f"({f['duplicate_copies']} extra copies), {f['duplicates_differing']} differing"
    )
    print(f"lost                {f['lost']}")
    print(f"n_samples_seen_     {f['n_samples_seen']} (valid records: {f['valid']})")
    print(f"kills               {f['kills']} SIGKILLs in {f['runs']} runs: {f['kills_by_phase']}")
    if "model_difference" in f:
        d = f["model_difference"]
        print(
            "vs uninterrupted    max |d mean| {:.3g}, max |d weight| {:.3g}, "
            "max |d cov| {:.3g}".format(d["max_abs_mean"], d["max_abs_weight"], d["max_abs_cov"])
        )
    print(
        f"time                produce {f['seconds_produce']} s, crash loop "
        f"{f['seconds_crash_loop']} s; logs in {workdir}"
    )
    ok = _ok(f)
    print("RESULT              " + ("OK" if ok else "FAILED"))
    return ok


SCENARIOS = ("crash-loop", "dynamic-crash-loop", "delayed-restart", "damaged", "codecs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--scenario",
        choices=[*SCENARIOS, "all"],
        default="crash-loop",
        help="crash-loop (static membership), dynamic-crash-loop (default membership, short "
        "session), delayed-restart (kill before commit, restart after the session expired), "
        "damaged (each damage of the newest checkpoint), codecs (topics compressed by the "
        "Java producer); all: every one",
    )
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bad-every", type=int, default=1000, help="one invalid record per N")
    ap.add_argument("--checkpoint-every", type=int, default=4000)
    ap.add_argument("--session-ms", type=int, default=3000, help="dynamic-membership scenarios")
    ap.add_argument("--no-reference", action="store_true", help="skip the uninterrupted run")
    ap.add_argument("--workdir", help="keep logs and checkpoints here (default: a temp dir)")
    a = ap.parse_args(argv)
    with _broker_module().bootstrap_servers() as bootstrap:
        workdir = Path(a.workdir or tempfile.mkdtemp(prefix="streamgmm-faults-"))
        workdir.mkdir(parents=True, exist_ok=True)
        todo = SCENARIOS if a.scenario == "all" else (a.scenario,)
        ok = True
        for name in todo:
            sub = workdir / name
            sub.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            if name in ("crash-loop", "dynamic-crash-loop"):
                dynamic = name == "dynamic-crash-loop"
                f = experiment(
                    bootstrap,
                    a.records,
                    a.partitions,
                    a.kills,
                    a.seed,
                    sub,
                    bad_every=a.bad_every,
                    every=a.checkpoint_every,
                    reference=not a.no_reference,
                    static=not dynamic,
                    session_ms=a.session_ms if dynamic else None,
                    external=(0.5, 8.0) if dynamic else (0.8, 2.2),
                )
                title = "crash loop, " + ("dynamic" if dynamic else "static") + " membership"
                ok &= _print_crash_loop(title, f, sub)
            elif name == "delayed-restart":
                print("== delayed restart (SIGKILL before the commit, restart after the session)")
                for static in (False, True):
                    f = delayed_restart(
                        bootstrap, sub / str(static), static=static, session_ms=a.session_ms
                    )
                    good = _ok(f) and f["returncodes"] == [-signal.SIGKILL, 0]
                    ok &= good
                    kind = "static " if static else "dynamic"
                    print(f"{kind}  {_line(f)}  {'OK' if good else 'FAILED'}")
            elif name == "damaged":
                print("== damaged newest checkpoint (restart with --idle-timeout 4)")
                for damage in DAMAGES:
                    f = damaged_checkpoint(bootstrap, sub / damage, damage, session_ms=a.session_ms)
                    rc = f["returncodes"][1]
                    if damage == "deleted-journal-kept":
                        good = rc == 2 and "holds no checkpoint" in f["restart_log"]
                        what = f"exit {rc} (refused: no checkpoint, committed offsets)"
                    else:
                        good = rc == 0 and _ok(f)
                        what = f"exit {rc}, {_line(f)}"
                    ok &= good
                    print(
                        f"{damage:<21} {what}; restart {f['restart_seconds']} s  "
                        + ("OK" if good else "FAILED")
                    )
            elif name == "codecs":
                print("== compressed topics (Kafka's Java producer, compression.type=...)")
                for codec in ("gzip", "snappy", "lz4", "zstd"):
                    f = compressed_topic(bootstrap, sub, codec)
                    good = f["returncode"] == 0 and _ok(f) and f["outputs"] == f["sent"]
                    ok &= good
                    print(
                        f"{codec:<7} exit {f['returncode']}, {_line(f)}  "
                        + ("OK" if good else "FAILED")
                    )
            print(f"   ({time.monotonic() - t0:.0f} s; logs in {sub})")
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
