"""Shared pytest fixtures: a real Apache Kafka broker for the tests that ask for one.

The broker is started lazily, once per session, by the first test that requests
``kafka_bootstrap`` / ``kafka_broker`` (so unit-test-only runs never start a JVM), and stopped by
its pid at the end of the session. Set ``KAFKA_BOOTSTRAP_SERVERS`` to use a broker that already
runs (e.g. ``eval "$(python scripts/kafka_broker.py start)"``). A broker that cannot be started
fails the tests that need it, with the broker's log tail; nothing is skipped.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

# scikit-learn's estimator checks include an array-API check that skips itself unless SciPy's
# array API support is switched on before SciPy is first imported (nothing above imports it);
# no test may skip.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

# The developer scripts (broker, fault injection) are not part of the streamgmm package: tests
# import them from scripts/, which is put on the path once, here.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import kafka_broker as kafka_broker_module

# One BLAS thread in the tests and the CLI processes they start (set before numpy is first
# imported; the variables are read when the BLAS library loads): the tests share 2 cores with
# the broker's JVM and each other's subprocesses, and BLAS threads then only contend (measured
# on a loaded machine: the wide-data gate test's 200x200 warm-up fits took 199 s with default
# threads, 51 s with one).
for _blas_threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_blas_threads, "1")


@pytest.fixture(autouse=True)
def _streamgmm_logger_restored():
    """The CLI's ``setup_logging``, run in-process by some tests, takes the ``streamgmm``
    logger off the root logger (``propagate=False``, its own handler): put it back after each
    test, or ``caplog`` sees nothing in the tests that run after one of those (measured:
    ``test_service_state_cache.py`` failed after ``test_service_file.py`` alone)."""
    logger = logging.getLogger("streamgmm")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(scope="session")
def _managed_kafka_broker():
    """The broker this test session starts and owns (stopped by pid at session end)."""
    error = None
    try:
        broker = kafka_broker_module.start_broker(owner_pid=os.getpid())
    except Exception as exc:
        error = f"could not start the Kafka test broker: {exc}"
    if error is not None:  # outside the except block: one clear message, no chained traceback
        pytest.fail(error, pytrace=False)
    # Belt and braces: the fixture finaliser normally stops it, atexit covers aborted sessions.
    atexit.register(broker.stop)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request) -> str:
    """``"127.0.0.1:PORT"`` of a live broker: $KAFKA_BOOTSTRAP_SERVERS, else one started here."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external
    return request.getfixturevalue("_managed_kafka_broker").bootstrap


@pytest.fixture
def kafka_broker(request):
    """The session's own ``Broker`` object (``.bootstrap``, ``.restart()``, ``.stop()``, ``.pid``).

    For tests that restart or kill the broker. If ``KAFKA_BOOTSTRAP_SERVERS`` points elsewhere,
    this is still a broker started by the session (an external broker cannot be restarted).
    A test that leaves it stopped gets it restarted afterwards (same port, same data), so the
    following tests still find a live broker.
    """
    broker = request.getfixturevalue("_managed_kafka_broker")
    yield broker
    if not broker.alive():
        broker.restart()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap):
    """A ``KafkaAdminClient`` connected to the test broker."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="streamgmm-tests")
    yield admin
    admin.close()


@pytest.fixture
def new_topic(request, kafka_admin):
    """Factory: ``new_topic(partitions=1, configs=None) -> name`` of a fresh, ready topic.

    The name is unique (test name + random suffix), so tests never see each other's records;
    the call returns only once metadata shows a leader for every partition.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80].strip("-.")

    def make(partitions: int = 1, configs: dict[str, str] | None = None) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:8]}"
        spec = {"num_partitions": partitions, "replication_factor": 1}
        if configs:
            spec["configs"] = dict(configs)
        kafka_admin.create_topics({name: spec}, timeout_ms=30_000, wait_for_metadata=True)
        kafka_admin.wait_for_topics([name], timeout_ms=30_000)
        return name

    return make
