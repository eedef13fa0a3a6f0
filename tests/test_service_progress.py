"""The progress bar appears when a file is processed in a terminal, and only then."""

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios


def _write_input(path, n=3000):
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"a": (i % 7) * 0.5, "b": (i % 11) * 0.25}) + "\n")


def _run(args, tty):
    cmd = [sys.executable, "-m", "streamgmm.service.cli", *args]
    if not tty:
        proc = subprocess.run(cmd, capture_output=True, timeout=120)
        return proc.returncode, proc.stderr.decode()
    # A real pseudo-terminal as stderr (and stdout): what a person at a shell has.
    leader, follower = pty.openpty()
    # 30 rows x 100 columns: a fresh pty reports 0x0, and tqdm draws nothing in zero columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(cmd, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def test_progress_bar_in_a_terminal_only(tmp_path):
    src = tmp_path / "in.jsonl"
    _write_input(src)
    common = ["run", "--input", str(src), "--features", "a,b", "--log-level", "WARNING"]
    rc, screen = _run([*common, "--output", str(tmp_path / "tty.jsonl")], tty=True)
    assert rc == 0, screen
    assert "streamgmm" in screen and "100%" in screen, screen

    rc, err = _run([*common, "--output", str(tmp_path / "pipe.jsonl")], tty=False)
    assert rc == 0, err
    assert "100%" not in err
    assert (tmp_path / "pipe.jsonl").read_text().count("\n") == 3000
