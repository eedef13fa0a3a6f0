"""River's own estimator checks, run on both streamgmm.river estimators.

Parametrized the way River's ``river/test_estimators.py`` does it: one test per (estimator,
check) for every ``_unit_test_params`` entry, calling ``check(estimator.clone())``; nothing is
skipped (both classes declare no ``_unit_test_skips``).

River's checks take their data from the private ``river.checks._yield_datasets(model, scale)``
(river 0.26.1).  For anomaly detectors it downloads CreditCard, which these machines cannot do,
and for a pure clusterer it yields nothing, so the data checks would not run at all.  We replace
it, while the checks are generated, by River's bundled ``datasets.Shuttle`` (same 1000 * scale
rows budget as CreditCard) for both estimators.
"""

from __future__ import annotations

import inspect

import pytest
from river import base, checks, datasets

from streamgmm.river import GaussianMixture, GaussianMixtureDetector

ESTIMATOR_CLASSES = (GaussianMixture, GaussianMixtureDetector)


def _offline_datasets(model, scale: int = 1):
    """Stand-in for ``river.checks._yield_datasets`` (river 0.26.1 signature)."""
    yield datasets.Shuttle().take(1000 * scale)


def _estimators():
    for cls in ESTIMATOR_CLASSES:
        for params in cls._unit_test_params():
            yield cls(**params)


def _check_cases():
    # The hook must still look like the one we patch; if River renames or reshapes it, fail here
    # loudly instead of silently downloading or silently running no data checks.
    signature = inspect.signature(checks._yield_datasets)
    assert list(signature.parameters) == ["model", "scale"], signature
    cases = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "_yield_datasets", _offline_datasets)
        for i, estimator in enumerate(_estimators()):
            for check in checks.yield_checks(estimator):
                if check.__name__ in estimator._unit_test_skips():
                    continue
                cases.append(pytest.param(estimator, check, id=f"{estimator}{i}:{check.__name__}"))
    return cases


CASES = _check_cases()


@pytest.mark.parametrize("estimator, check", CASES)
def test_check_estimator(estimator, check):
    check(estimator.clone())


def test_no_check_is_skipped():
    for estimator in _estimators():
        assert estimator._unit_test_skips() == set()


@pytest.mark.parametrize("cls", ESTIMATOR_CLASSES)
def test_data_checks_run_for_every_params_entry(cls):
    """Both classes get the data-driven checks (a bare clusterer would get none)."""
    n_params = len(list(cls._unit_test_params()))
    assert n_params >= 2
    names = [c.values[1].__name__ for c in CASES if isinstance(c.values[0], cls)]
    for required in (
        "check_learn_one",
        "check_shuffle_features_no_impact",
        "check_emerging_features",
        "check_disappearing_features",
        "check_radically_disappearing_features",
        "check_predict_one_before_any_learn",
        "check_seeding_is_idempotent",
        "check_bounded_memory_growth",
    ):
        assert names.count(required) >= 1, required
    assert names.count("check_learn_one") == n_params
    if issubclass(cls, base.AnomalyDetector):
        assert names.count("check_roc_auc") == n_params
