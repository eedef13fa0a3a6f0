"""Restarts that used to learn records twice or hang, against the real broker with the real CLI.

- A SIGKILL between "checkpoint written" and "offsets committed", then a restart after the
  group session expired (default dynamic membership: the first assignment is often empty):
  the checkpoint's offsets must be applied on every assignment.
- Batch journals holding a segment twice, a partial segment or a gap (a replay checkpointed
  midway, batches regrouped after a rebalance): the replay must serve what continues from the
  checkpoint and never spin in ``poll``.
- A crash loop with dynamic membership (restarts wait for the killed member's session).
- A damaged newest checkpoint: resume from the previous one (behind the committed offsets) or
  refuse clearly; never hang, ``--idle-timeout`` honoured.
- An empty checkpoint directory while the group has committed offsets: refused (exit 2)
  unless ``--fresh``.

The scenarios live in ``scripts/fault_injection.py`` (also run stand-alone); group sessions
are shortened to 3 s to keep each test well under a minute.
"""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.kafka


def _fi():
    import fault_injection  # scripts/ is on the path (conftest.py)

    return fault_injection


def _exactly_once(f: dict) -> None:
    """Nothing lost, nothing learned twice, every duplicate output identical to its first copy."""
    assert f["lost"] == 0, f["lost_examples"]
    assert f["unexpected"] == 0
    assert f["n_samples_seen"] == f["valid"], f
    assert f["duplicates_differing"] == 0, f["differing_examples"]


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_delayed_restart_after_kill_before_commit_learns_nothing_twice(
    kafka_bootstrap, tmp_path, static
):
    f = _fi().delayed_restart(kafka_bootstrap, tmp_path, static=static)
    log = (tmp_path / "delayed-restart.log").read_text(errors="replace")
    assert f["returncodes"] == [-9, 0], log[-3000:]
    _exactly_once(f)
    assert "seek" in log.split("=== run:")[-1]


def test_journal_with_repeated_partial_and_gapped_segments_replays_without_spinning(
    kafka_bootstrap, tmp_path
):
    fi = _fi()
    topics = fi.make_topics(kafka_bootstrap, 2, stem="journal")
    valid = fi.produce(kafka_bootstrap, topics[0], 10_000, 2)
    ck = tmp_path / "ck"
    cmd = fi.run_cmd(kafka_bootstrap, *topics, f"journal-{topics[0]}", ck, 2000)
    log_path = tmp_path / "journal.log"
    assert fi.run_once(cmd, log_path, "score:kill@7") == -9
    journal = max(ck.glob("batches-*.jsonl"), key=lambda p: int(p.stem.split("-")[1]))
    lines = journal.read_text().splitlines()
    assert lines, "the crashed run journaled batches after its checkpoint"
    t, p, s, e = json.loads(lines[0])[0]
    partial = json.dumps([[t, p, (s + e) // 2, e]])
    gap = json.dumps([[t, p, 10**6, 10**6 + 10]])
    journal.write_text("\n".join([*lines, *lines, partial, *lines, gap]) + "\n")
    rc = fi.run_once(cmd, log_path, timeout=60)
    assert rc == 0, log_path.read_text(errors="replace")[-3000:]
    _exactly_once(fi._outcome(kafka_bootstrap, topics, ck, valid))
    assert "replaying" in log_path.read_text(errors="replace").split("=== run:")[-1]


def test_crash_loop_with_dynamic_membership_never_hangs(kafka_bootstrap, tmp_path):
    fi = _fi()
    f = fi.experiment(
        kafka_bootstrap,
        30_000,
        2,
        6,
        seed=5,
        workdir=tmp_path,
        every=3000,
        reference=False,
        static=False,
        session_ms=3000,
        external=(0.5, 6.0),
    )
    assert f["kills"] == 6, f
    _exactly_once(f)


# Zero-length and garbage newest checkpoints take the same path as a truncated one (unreadable
# file): they are covered in file mode (test_reliability_checkpoints.py) and by the script.
@pytest.mark.parametrize(
    "damage", ["truncated", "bit-flipped", "oldest-over-newest", "deleted-journal-kept"]
)
def test_damaged_newest_checkpoint_resumes_from_previous_or_refuses(
    kafka_bootstrap, tmp_path, damage
):
    f = _fi().damaged_checkpoint(kafka_bootstrap, tmp_path, damage)
    assert f["returncodes"][0] == -9, f["first_log"][-3000:]
    assert len(f["checkpoints_before"]) == 3, f["first_log"][-3000:]  # keep=3 were written
    if damage == "deleted-journal-kept":
        assert f["returncodes"][1] == 2, f["restart_log"][-3000:]
        assert "holds no checkpoint" in f["restart_log"]
        return
    assert f["returncodes"][1] == 0, f["restart_log"][-3000:]
    assert "skipping unusable checkpoint" in f["restart_log"] or damage == "oldest-over-newest"
    assert f["duplicated_records"] > 0  # the records after the older checkpoint did repeat
    _exactly_once(f)


def test_empty_checkpoint_dir_with_committed_offsets_is_refused_unless_fresh(
    kafka_bootstrap, tmp_path
):
    fi = _fi()
    topics = fi.make_topics(kafka_bootstrap, 1, stem="wiped")
    fi.produce(kafka_bootstrap, topics[0], 3000, 1)
    group = f"wiped-{topics[0]}"
    cmd = fi.run_cmd(kafka_bootstrap, *topics, group, tmp_path / "ck", 1000)
    # The first run stops at the topic's last record instead of idling out.
    assert fi.run_once([*cmd, "--max-records", "3000"], tmp_path / "first.log") == 0
    wiped = fi.run_cmd(kafka_bootstrap, *topics, group, tmp_path / "new-volume", 1000)
    r = subprocess.run(wiped, capture_output=True, text=True, env=fi._env(None), timeout=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "committed offsets" in r.stderr and "--fresh" in r.stderr
    assert not list((tmp_path / "new-volume").glob("ckpt-*"))
    r = subprocess.run(
        [*wiped, "--fresh"], capture_output=True, text=True, env=fi._env(None), timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
