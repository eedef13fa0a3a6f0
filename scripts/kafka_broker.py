#!/usr/bin/env python
"""Provision, start and stop a real single-node Apache Kafka broker for tests and dev scripts.

The broker is the genuine Apache Kafka server (KRaft, combined broker + controller), run from the
jars Maven resolves for ``scripts/kafka/pom.xml``; nothing here is a stand-in. The product itself
never starts a broker: it only connects to the ``bootstrap_servers`` its configuration names.

Command line::

    python scripts/kafka_broker.py provision            # jars -> .kafka/libs (idempotent, fast)
    python scripts/kafka_broker.py start [--port P]     # prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:P
    python scripts/kafka_broker.py status
    python scripts/kafka_broker.py stop [--keep-data]   # stops every broker this script recorded
    python scripts/kafka_broker.py stop --pid PID       # ... or only one (--data-dir DIR works too)
    python scripts/kafka_broker.py start --data-dir DIR # restart on kept data (same ports)

From Python (tests/conftest.py puts scripts/ on sys.path and imports this module)::

    broker = start_broker()          # -> Broker, ready to serve
    broker.bootstrap                 # "127.0.0.1:PORT"
    broker.restart()                 # same port, same data, new pid
    broker.stop()                    # SIGTERM, then SIGKILL; removes its data dir

    with bootstrap_servers() as bootstrap:   # dev scripts: $KAFKA_BOOTSTRAP_SERVERS, else a
        ...                                  # broker of their own, stopped when the block ends

Layout under the repository's git-ignored ``.kafka/``: ``libs/`` (jars + ``.provisioned``
marker), ``run/<broker>/`` (server.properties, ``kafka-logs/``, ``broker.log``) and
``state/<pid>.json`` (one file per running broker: pid, ports, data dir, owner). Only the standard
library is imported at module level; kafka-python is needed only for the readiness check.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS_DIR.parent
POM = SCRIPTS_DIR / "kafka" / "pom.xml"
LOG4J_CONFIG = SCRIPTS_DIR / "kafka" / "log4j2.properties"
KAFKA_HOME = REPO_ROOT / ".kafka"
LIBS_DIR = KAFKA_HOME / "libs"
RUN_DIR = KAFKA_HOME / "run"
STATE_DIR = KAFKA_HOME / "state"
MARKER = LIBS_DIR / ".provisioned"
LAST_LOG = KAFKA_HOME / "last-broker.log"

NODE_ID = 1
DEFAULT_HEAP = "512m"
DEFAULT_READY_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 30.0


class BrokerError(RuntimeError):
    """The broker could not be provisioned, started or stopped; the message says why."""


def _log(msg: str) -> None:
    # stdout is reserved for the KAFKA_BOOTSTRAP_SERVERS line so that shells can eval/grep it.
    print(f"[kafka_broker] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Provisioning
# --------------------------------------------------------------------------------------------


def pinned_kafka_version() -> str:
    """The Kafka version pinned in scripts/kafka/pom.xml (the single source of truth)."""
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not match:
        raise BrokerError(f"no <kafka.version> property in {POM}")
    return match.group(1).strip()


def _marker_content() -> dict:
    return {
        "kafka_version": pinned_kafka_version(),
        "pom_sha256": hashlib.sha256(POM.read_bytes()).hexdigest(),
    }


def is_provisioned() -> bool:
    try:
        return json.loads(MARKER.read_text()) == _marker_content()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def provision(force: bool = False) -> Path:
    """Copy the broker's runtime jars into .kafka/libs with Maven; return that folder.

    A marker records the pinned version and a hash of the pom, so a second call returns at once
    and a version bump re-provisions. Concurrent callers serialise on a lock file.
    """
    if not force and is_provisioned():
        return LIBS_DIR
    with _file_lock(KAFKA_HOME / "provision.lock"):
        if not force and is_provisioned():
            return LIBS_DIR
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven ('mvn') is not on PATH; it is needed to fetch the Kafka jars")
        staging = Path(tempfile.mkdtemp(prefix="libs-staging-", dir=KAFKA_HOME))
        staging.chmod(0o755)  # mkdtemp makes it private; the jars are not secret
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        _log(f"provisioning Kafka {pinned_kafka_version()} jars with Maven ...")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=POM.parent)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(
                f"Maven failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        # Maven may leave a target/ folder beside the pom; keep the source tree clean.
        shutil.rmtree(POM.parent / "target", ignore_errors=True)
        # Swap the folder in whole so a half-copied classpath is never used.
        if LIBS_DIR.exists():
            shutil.rmtree(LIBS_DIR)
        staging.rename(LIBS_DIR)
        MARKER.write_text(json.dumps(_marker_content()))
        n_jars = len(list(LIBS_DIR.glob("*.jar")))
        _log(f"provisioned {n_jars} jars in {time.monotonic() - t0:.1f} s -> {LIBS_DIR}")
    return LIBS_DIR


# --------------------------------------------------------------------------------------------
# Processes and state
# --------------------------------------------------------------------------------------------


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no 'java' on PATH (Java 17+ is needed to run the Kafka broker)")
    return java


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _pid_alive(pid: int) -> bool:
    """True if the pid runs and is not a zombie (a zombie has exited, it only awaits reaping)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # Field 3 (after the parenthesised command name) is the state letter.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _pid_is_broker(pid: int, data_dir: Path) -> bool:
    """True if the pid is *our* Kafka broker for data_dir (guards against pid reuse)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    props = str(data_dir / "server.properties").encode()
    return b"kafka.Kafka" in args and props in args


def _generate_cluster_id() -> str:
    # Kafka's Uuid.toString(): 16 random bytes, URL-safe base64 without padding. Kafka refuses
    # ids whose text starts with "-" (they read as command-line flags), so draw again then.
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    return f"""\
# Written by scripts/kafka_broker.py: single-node KRaft test broker on loopback only.
process.roles=broker,controller
node.id={NODE_ID}
controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={log_dir}
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
# One partition for the internal topics: the first group join creates __consumer_offsets,
# and 50 partitions (the default) cost seconds on a small machine for no benefit here.
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
# Fast consumer-group joins in tests (kafka-python's own test broker does the same).
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
# After a kill -9 the controller refuses the restarted broker's registration until the old
# session expires (default 9 s); a shorter session makes crash-recovery tests quicker.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
# Light on a 2-core machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
"""


def _read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def _tail(path: Path, n_lines: int = 60) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return f"(no broker log at {path})"
    return "\n".join(lines[-n_lines:])


def _state_path(pid: int) -> Path:
    return STATE_DIR / f"{pid}.json"


@dataclass
class Broker:
    """A running (or stopped) Kafka broker started by this module.

    Attributes
    ----------
    pid
        Process id of the broker JVM (its own process group / session leader).
    port
        PLAINTEXT port on 127.0.0.1 that clients use.
    controller_port
        KRaft controller port on 127.0.0.1 (kept across restarts: it is part of the quorum).
    data_dir
        Folder holding server.properties, ``kafka-logs/`` and ``broker.log``.
    owner_pid
        Pid of the process that started the broker and is responsible for stopping it, or None
        for a detached broker started from the command line. Brokers whose owner has died are
        reaped by the next ``start_broker(reap_orphans=True)``.
    """

    pid: int
    port: int
    controller_port: int
    data_dir: Path
    heap: str = DEFAULT_HEAP
    owner_pid: int | None = None
    owns_data_dir: bool = True
    _proc: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def state_path(self) -> Path:
        return _state_path(self.pid)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_alive(self.pid) and _pid_is_broker(self.pid, self.data_dir)

    def log_tail(self, n_lines: int = 60) -> str:
        return _tail(self.log_path, n_lines)

    def to_state(self) -> dict:
        return {
            "pid": self.pid,
            "port": self.port,
            "controller_port": self.controller_port,
            "bootstrap": self.bootstrap,
            "data_dir": str(self.data_dir),
            "log_path": str(self.log_path),
            "heap": self.heap,
            "owner_pid": self.owner_pid,
            "owns_data_dir": self.owns_data_dir,
            "kafka_version": pinned_kafka_version(),
        }

    @classmethod
    def from_state(cls, state: dict) -> Broker:
        return cls(
            pid=int(state["pid"]),
            port=int(state["port"]),
            controller_port=int(state["controller_port"]),
            data_dir=Path(state["data_dir"]),
            heap=state.get("heap", DEFAULT_HEAP),
            owner_pid=state.get("owner_pid"),
            owns_data_dir=bool(state.get("owns_data_dir", False)),
        )

    def stop(
        self, keep_data: bool = False, timeout: float = DEFAULT_STOP_TIMEOUT, hard: bool = False
    ) -> None:
        """Stop the broker by its pid: SIGTERM (clean shutdown), SIGKILL after ``timeout`` s.

        ``hard=True`` sends SIGKILL at once (a crash, for recovery tests). Unless ``keep_data``,
        the data dir is removed afterwards (if this module created it); the last broker log is
        kept at .kafka/last-broker.log either way. Idempotent.
        """
        if self.alive():
            self._signal(signal.SIGKILL if hard else signal.SIGTERM)
            if not self._wait_exit(timeout):
                _log(f"broker pid {self.pid} ignored SIGTERM for {timeout:.0f} s; sending SIGKILL")
                self._signal(signal.SIGKILL)
                if not self._wait_exit(15.0):
                    raise BrokerError(f"broker pid {self.pid} did not die after SIGKILL")
        elif self._proc is not None:
            self._proc.wait()  # reap a zombie we own
        self.state_path.unlink(missing_ok=True)
        if self.log_path.exists():
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log_path, LAST_LOG)
        if not keep_data and self.owns_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, ready_timeout: float = DEFAULT_READY_TIMEOUT, hard: bool = False) -> Broker:
        """Stop (keeping the data) and start again on the same ports; updates this object."""
        self.stop(keep_data=True, hard=hard)
        new = _launch(
            self.data_dir,
            port=self.port,
            heap=self.heap,
            owner_pid=self.owner_pid,
            owns_data_dir=self.owns_data_dir,
            ready_timeout=ready_timeout,
        )
        self.pid, self._proc = new.pid, new._proc
        return self

    def _signal(self, sig: int) -> None:
        # Re-check identity right before signalling: never hit a recycled pid.
        if self._proc is not None or _pid_is_broker(self.pid, self.data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(self.pid):
                return True
            time.sleep(0.1)
        return not _pid_alive(self.pid)


def recorded_brokers() -> list[Broker]:
    """Brokers with a state file; state files of dead brokers are removed on the way."""
    brokers = []
    for path in sorted(STATE_DIR.glob("*.json")):
        try:
            broker = Broker.from_state(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)
            continue
        if broker.alive():
            brokers.append(broker)
        else:
            path.unlink(missing_ok=True)
    return brokers


def reap_orphans() -> None:
    """Stop brokers whose owning process (e.g. a killed pytest run) no longer exists."""
    for broker in recorded_brokers():
        if broker.owner_pid is not None and not _pid_alive(broker.owner_pid):
            _log(f"stopping orphaned broker pid {broker.pid} (owner {broker.owner_pid} is gone)")
            broker.stop()


# --------------------------------------------------------------------------------------------
# Starting
# --------------------------------------------------------------------------------------------


def _format_storage(libs: Path, props_path: Path, log_dir: Path) -> None:
    if (log_dir / "meta.properties").exists():
        return  # already formatted: a restart on kept data
    cmd = [
        _java(),
        "-Xmx256m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",  # a short-lived tool: start fast, peak speed is irrelevant
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        "-cp",
        f"{libs}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _generate_cluster_id(),
        "-c",
        str(props_path),
        "--standalone",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BrokerError(
            f"formatting the storage failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )


def _wait_ready(broker: Broker, timeout: float) -> None:
    """Block until the broker answers a metadata request listing itself; raise on failure."""
    from kafka import KafkaAdminClient  # imported late: provisioning needs no kafka-python

    deadline = time.monotonic() + timeout
    last_error = "port never opened"
    while time.monotonic() < deadline:
        if not broker.alive():
            code = broker._proc.poll() if broker._proc is not None else "?"
            raise BrokerError(
                f"Kafka broker exited during startup (exit code {code}); full log kept in "
                f"{LAST_LOG}; tail:\n{broker.log_tail()}"
            )
        if not _port_open(broker.port):
            time.sleep(0.25)
            continue
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=broker.bootstrap,
                client_id="streamgmm-broker-readiness",
                request_timeout_ms=5000,
            )
            try:
                cluster = admin.describe_cluster()
            finally:
                admin.close()
            if any(b.get("broker_id") == NODE_ID for b in cluster.get("brokers", [])):
                return
            last_error = f"metadata lists no broker yet: {cluster}"
        except Exception as exc:  # any client error means "not ready yet"; retried until deadline
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise BrokerError(
        f"Kafka broker at {broker.bootstrap} not ready after {timeout:.0f} s "
        f"(last: {last_error}); full log kept in {LAST_LOG}; tail:\n{broker.log_tail()}"
    )


def _launch(
    data_dir: Path,
    port: int | None,
    heap: str,
    owner_pid: int | None,
    owns_data_dir: bool,
    ready_timeout: float,
) -> Broker:
    libs = provision()
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    props_path = data_dir / "server.properties"
    log_dir = data_dir / "kafka-logs"

    for other in recorded_brokers():
        if other.data_dir == data_dir:
            raise BrokerError(f"a broker (pid {other.pid}) already runs on {data_dir}")

    controller_port = None
    if (log_dir / "meta.properties").exists() and props_path.exists():
        # Kept data: the controller endpoint is recorded in the quorum, so it must not change.
        old = _read_properties(props_path)
        controller_port = int(old["controller.quorum.bootstrap.servers"].rsplit(":", 1)[1])
        if port is None:
            port = int(old["advertised.listeners"].rsplit(":", 1)[1])
    port = port or _free_port()
    controller_port = controller_port or _free_port()
    while controller_port == port:
        controller_port = _free_port()
    for p in (port, controller_port):
        if _port_open(p):
            raise BrokerError(f"port 127.0.0.1:{p} is already in use")

    props_path.write_text(_server_properties(port, controller_port, log_dir))
    _format_storage(libs, props_path, log_dir)

    cmd = [
        _java(),
        f"-Xmx{heap}",
        "-Xms128m",
        "-XX:+UseSerialGC",  # one GC thread: the machine has two cores and tests share them
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={data_dir}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(props_path),
    ]
    log_path = data_dir / "broker.log"
    with open(log_path, "ab") as log_fh:
        log_fh.write(f"\n==== {time.strftime('%F %T')} {' '.join(cmd)}\n".encode())
        log_fh.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            start_new_session=True,  # own process group: no terminal signals, clean pid to stop
            close_fds=True,
        )
    broker = Broker(
        pid=proc.pid,
        port=port,
        controller_port=controller_port,
        data_dir=data_dir,
        heap=heap,
        owner_pid=owner_pid,
        owns_data_dir=owns_data_dir,
        _proc=proc,
    )
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    broker.state_path.write_text(json.dumps(broker.to_state(), indent=2))
    try:
        _wait_ready(broker, ready_timeout)
    except BaseException:
        # Never leave a half-started JVM behind (also on Ctrl-C); keep its data for diagnosis.
        broker.stop(keep_data=True, timeout=10.0)
        raise
    return broker


def start_broker(
    port: int | None = None,
    data_dir: str | os.PathLike | None = None,
    heap: str = DEFAULT_HEAP,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    owner_pid: int | None = None,
    reap: bool = True,
) -> Broker:
    """Provision if needed, start a broker and return it once it serves metadata requests.

    Parameters
    ----------
    port
        PLAINTEXT port on 127.0.0.1; a free one is picked if None (or the previous one when
        restarting on kept data).
    data_dir
        Reuse this folder (restart on kept, already formatted data) or create it. None: a fresh
        folder under .kafka/run/, removed again by ``Broker.stop()``.
    heap
        JVM maximum heap (``-Xmx``).
    ready_timeout
        Seconds to wait for readiness before failing with the broker's log tail.
    owner_pid
        Process responsible for stopping the broker (the test session passes ``os.getpid()``);
        None for a detached broker.
    reap
        First stop brokers whose owner process has died (left over by a killed test run).
    """
    if reap:
        reap_orphans()
    if data_dir is None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        path, owns = Path(tempfile.mkdtemp(prefix="broker-", dir=RUN_DIR)), True
    else:
        path = Path(data_dir)
        owns = path.resolve().is_relative_to(RUN_DIR.resolve())
    t0 = time.monotonic()
    try:
        broker = _launch(path, port, heap, owner_pid, owns, ready_timeout)
    except BaseException:
        if data_dir is None:  # a fresh folder of ours: its log was copied to LAST_LOG already
            shutil.rmtree(path, ignore_errors=True)
        raise
    _log(f"broker pid {broker.pid} ready at {broker.bootstrap} in {time.monotonic() - t0:.1f} s")
    return broker


@contextlib.contextmanager
def bootstrap_servers() -> Iterator[str]:
    """``$KAFKA_BOOTSTRAP_SERVERS`` if set, else a broker started here and stopped on leaving.

    For the dev scripts (benchmarks, fault injection): ``with bootstrap_servers() as bootstrap:``
    runs against the broker the caller names, or against one of their own that never outlives
    the block (also on an exception or Ctrl-C; owned by this process, so a killed script's
    broker is reaped by the next ``start_broker``).
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = start_broker(owner_pid=os.getpid())
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _select(brokers: list[Broker], pid: int | None, data_dir: str | None) -> list[Broker]:
    if pid is not None:
        brokers = [b for b in brokers if b.pid == pid]
    if data_dir is not None:
        brokers = [b for b in brokers if b.data_dir == Path(data_dir).resolve()]
    return brokers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_prov = sub.add_parser("provision", help="fetch the broker jars into .kafka/libs")
    p_prov.add_argument("--force", action="store_true", help="re-run Maven even if provisioned")

    p_start = sub.add_parser("start", help="start a detached broker, print its bootstrap address")
    p_start.add_argument("--port", type=int, help="PLAINTEXT port (default: a free one)")
    p_start.add_argument("--data-dir", help="reuse / create this data folder (kept on stop)")
    p_start.add_argument("--heap", default=DEFAULT_HEAP, help="JVM -Xmx (default %(default)s)")
    p_start.add_argument("--timeout", type=float, default=DEFAULT_READY_TIMEOUT)

    p_stop = sub.add_parser("stop", help="stop recorded brokers (all, or the one selected)")
    p_stop.add_argument("--keep-data", action="store_true", help="keep the data dir to restart")
    p_stop.add_argument("--pid", type=int)
    p_stop.add_argument("--data-dir")
    p_stop.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)

    sub.add_parser("status", help="list running brokers")
    args = parser.parse_args(argv)

    try:
        if args.command == "provision":
            libs = provision(force=args.force)
            _log(f"Kafka {pinned_kafka_version()} jars ready in {libs}")
            return 0

        if args.command == "start":
            detached = [b for b in recorded_brokers() if b.owner_pid is None]
            if detached and args.port is None and args.data_dir is None:
                # Idempotent for dev use: hand out the broker that already runs.
                broker = detached[0]
                _log(f"a broker already runs (pid {broker.pid}, data {broker.data_dir})")
            else:
                broker = start_broker(
                    port=args.port,
                    data_dir=args.data_dir,
                    heap=args.heap,
                    ready_timeout=args.timeout,
                )
            print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
            return 0

        if args.command == "stop":
            brokers = _select(recorded_brokers(), args.pid, args.data_dir)
            if not brokers:
                _log("no running broker recorded")
            for broker in brokers:
                broker.stop(keep_data=args.keep_data, timeout=args.timeout)
                kept = f"; data kept in {broker.data_dir}" if args.keep_data else ""
                _log(f"stopped broker pid {broker.pid} ({broker.bootstrap}){kept}")
                if args.keep_data:
                    _log(
                        f"restart with: python {Path(__file__).relative_to(REPO_ROOT)} start "
                        f"--data-dir {broker.data_dir} --port {broker.port}"
                    )
            return 0

        if args.command == "status":
            brokers = recorded_brokers()
            state = "provisioned" if is_provisioned() else "not provisioned"
            print(f"Kafka {pinned_kafka_version()} jars: {state} ({LIBS_DIR})")
            for b in brokers:
                owner = f"owner pid {b.owner_pid}" if b.owner_pid else "detached"
                print(f"running: pid {b.pid} {b.bootstrap} data {b.data_dir} ({owner})")
            if not brokers:
                print("no broker running")
            return 0 if brokers else 3
    except BrokerError as exc:
        _log(f"error: {exc}")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
