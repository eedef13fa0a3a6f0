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


def test_a_restored_model_learns_without_importing_k_means(tmp_path):
    """A process that restores a model and goes on learning (every restart of the service)
    does not import scikit-learn's k-means and mixture modules (~0.2 s of every start); the
    warm-up's k-means starts do import them, on first use."""
    import json

    import numpy as np

    from streamgmm import OnlineGaussianMixture

    X = np.random.default_rng(0).normal(size=(400, 2))
    m = OnlineGaussianMixture(n_components=2, warm_up=100, random_state=0).partial_fit(X[:200])
    arrays, meta = m.get_state()
    np.savez(tmp_path / "state.npz", **arrays)
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    probe = (
        "import json, sys, numpy as np\n"
        "from streamgmm import OnlineGaussianMixture as M\n"
        f"a = dict(np.load({str(tmp_path / 'state.npz')!r}))\n"
        f"meta = json.load(open({str(tmp_path / 'meta.json')!r}))\n"
        "m = M.from_state(a, meta).partial_fit(np.random.default_rng(1).normal(size=(200, 2)))\n"
        "assert m.n_samples_seen_ == 400, m.n_samples_seen_\n"
        "{}\n"
        "print(sorted(n for n in sys.modules if n in ('sklearn.cluster', 'sklearn.mixture')))\n"
    )
    warm_up = (
        "M(n_components=2, warm_up=100).partial_fit(np.random.default_rng(2).normal(size=(150, 2)))"
    )
    for extra, want in (("", "[]"), (warm_up, "['sklearn.cluster']")):
        r = subprocess.run(
            [sys.executable, "-c", probe.format(extra)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want
