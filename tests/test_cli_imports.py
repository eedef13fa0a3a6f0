"""``import streamgmm`` and the command line's start do not import scikit-learn (about a second:
it pulls in SciPy's statistics and pandas); the estimator still imports on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("sklearn", "scipy", "pandas", "numba")
_MAIN = "from streamgmm.service.cli import main\n"


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {m.split(".")[0] for m in r.stdout.split()}


@pytest.mark.parametrize(
    "code",
    [
        "import streamgmm",
        "import streamgmm.service.cli",
        _MAIN + "try:\n    main(['--version'])\nexcept SystemExit:\n    pass",
        _MAIN + "main(['run', '--input', 'x', '--n-components', '0'])",
    ],
    ids=["import", "cli module", "--version", "config error"],
)
def test_start_does_not_import_scikit_learn(code):
    assert not set(HEAVY) & _imported_after(code)


def test_public_names_import_on_first_use():
    import streamgmm
    from streamgmm import NotFittedError, OnlineGaussianMixture, ScoreResult
    from streamgmm.online import OnlineGaussianMixture as Direct

    assert OnlineGaussianMixture is Direct is streamgmm.OnlineGaussianMixture
    assert ScoreResult.__name__ == "ScoreResult" and issubclass(NotFittedError, Exception)
    assert {"OnlineGaussianMixture", "NotFittedError", "ScoreResult"} <= set(dir(streamgmm))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = streamgmm.nope


def test_star_import_gives_the_public_names():
    ns: dict = {}
    exec("from streamgmm import *", ns)
    assert {"OnlineGaussianMixture", "NotFittedError", "ScoreResult"} <= set(ns)
