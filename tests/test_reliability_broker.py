"""The broker goes away mid-stream and comes back: the real CLI keeps running, reports the
outage on /healthz, /metrics and in its logs (no crash loop), reconnects and loses nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

import pytest

from streamgmm.service.checkpoint import checkpoint_paths

pytestmark = pytest.mark.kafka


def _fault_injection():
    import fault_injection  # scripts/ is on the path (conftest.py)

    return fault_injection


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _metric(text: bytes, name: str) -> float:
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


def test_broker_outage_mid_stream_is_survived_and_reported(kafka_broker, tmp_path):
    fi = _fault_injection()
    bootstrap = kafka_broker.bootstrap  # the session's own broker: this test stops it
    tin, tout, tdlq = fi.make_topics(bootstrap, 3, stem="outage")
    # 40k: the outage (at the first checkpoint, 5000 records in) still falls mid-stream with a
    # wide margin (the flush of the next checkpoint blocks by 10k), and the rest after the
    # restart is 3-4 s of work at the injected pace, not 7.
    n = 40_000
    valid = fi.produce(bootstrap, tin, n, 3, seed=4)
    port = _free_port()
    ck = tmp_path / "ck"
    cmd = [
        *fi.run_cmd(bootstrap, tin, tout, tdlq, f"g-{tin}", ck, every=5000),
        "--metrics-port",
        str(port),
        # One process throughout, no restart: it stops at the topic's last record rather
        # than idling out at the end (the idle timeout still runs during the outage).
        "--max-records",
        str(n),
    ]
    env = fi._env("produce:sleep=0.1")  # ~10k records/s: the outage hits mid-stream
    log_path = tmp_path / "run.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        try:
            deadline = time.monotonic() + 60
            while not (ck.exists() and checkpoint_paths(ck)):
                assert p.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
            assert json.loads(_get(port, "/healthz")[1])["broker_connected"] is True
            kafka_broker.stop(keep_data=True)
            t_down = time.monotonic()
            # Away for a while: alive, reporting it, not exiting (idle-timeout is 4 s: the
            # outage outlasts it by 3 s, more than the processor's ~1 s of work after its last
            # poll before the stop).
            seen_down = False
            while time.monotonic() - t_down < 7:
                assert p.poll() is None, "the processor died while the broker was away"
                code, body = _get(port, "/healthz")
                h = json.loads(body)
                if not h["broker_connected"]:
                    seen_down = True
                    assert code == 200 and "unreachable" in h["status"], h
                    assert _metric(_get(port, "/metrics")[1], "streamgmm_broker_connected") == 0
                time.sleep(0.5)
            assert seen_down, "/healthz never reported the outage"
            in_during = json.loads(_get(port, "/healthz")[1])["records_in"]
            assert 0 < in_during < n, "the outage must fall mid-stream"
            kafka_broker.restart()
            rc = p.wait(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = log_path.read_text(errors="replace")
    assert rc == 0, text[-3000:]
    assert "Kafka broker unreachable" in text and "reachable again" in text
    assert text.count("restored checkpoint") == 0  # one process throughout, no restart
    f = fi.audit(bootstrap, tin, tout, tdlq)
    assert f["lost"] == 0 and f["unexpected"] == 0, f
    assert f["duplicates_differing"] == 0, f
    assert fi.inspect(ck)["n_samples_seen"] == valid
