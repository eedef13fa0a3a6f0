"""scikit-learn's own test module for ``GaussianMixture``, run against ``OnlineGaussianMixture``.

``sklearn/mixture/tests/test_gaussian_mixture.py`` ships in the installed wheel.  Its module
global ``GaussianMixture`` is replaced by :class:`GaussianMixture` below, a shim that maps
scikit-learn's arguments (and defaults) onto ``OnlineGaussianMixture``; its tests are then
collected here unchanged.  Tests of batch-EM internals that cannot apply to an online
estimator are left out, each with the reason, in :data:`NOT_APPLICABLE`.
"""

import numpy as np
import pytest
from sklearn.mixture.tests import test_gaussian_mixture as suite

from streamgmm import OnlineGaussianMixture


class GaussianMixture(OnlineGaussianMixture):
    """``OnlineGaussianMixture`` with scikit-learn's signature, defaults and name.

    ``warm_start``, ``verbose`` and ``verbose_interval`` are accepted and ignored (see
    :data:`NOT_APPLICABLE` for the tests that need them to act).
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
    ):
        super().__init__(
            n_components,
            covariance_type=covariance_type,
            tol=tol,
            reg_covar=reg_covar,
            max_iter=max_iter,
            n_init=n_init,
            init_params=init_params,
            weights_init=weights_init,
            means_init=means_init,
            precisions_init=precisions_init,
            random_state=random_state,
        )
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval


NOT_APPLICABLE = {
    # warm_start: a second fit continuing the first is partial_fit's job here; fit is fresh.
    "test_warm_start": "warm_start continues batch EM; here fit is fresh, partial_fit continues",
    "test_convergence_detected_with_warm_start": "needs warm_start (batch EM continued)",
    "test_monotonic_likelihood": "needs warm_start: one EM iteration per fit call",
    "test_regularisation": "expects reg_covar=0 to fail; here it is the least regulariser",
    "test_gaussian_mixture_fit_best_params": "compares with sklearn's own random-state path",
    "test_gaussian_mixture_precisions_init": "calls sklearn's private _initialize(X, resp)",
    "test_gaussian_mixture_precisions_init_diag": (
        "builds the init with reg_covar in raw units; here reg_covar is in standardised units"
    ),
    "test_gaussian_mixture_all_init_does_not_estimate_gaussian_parameters": (
        "counts calls of sklearn's private _estimate_gaussian_parameters"
    ),
    "test_gaussian_mixture_array_api_compliance": "array API namespaces: the state is numpy",
    "test_gaussian_mixture_raises_where_array_api_not_implemented": "array API namespaces",
}
# Tests of sklearn's private helpers: they never construct the estimator, so they test nothing
# of OnlineGaussianMixture and are not collected either.
SKLEARN_INTERNALS = {
    "test_suffstat_sk_full",
    "test_suffstat_sk_tied",
    "test_suffstat_sk_diag",
    "test_gaussian_suffstat_sk_spherical",
    "test_compute_log_det_cholesky",
    "test_gaussian_mixture_log_probabilities",
}

suite.GaussianMixture = GaussianMixture
SUITE_TESTS = sorted(name for name in vars(suite) if name.startswith("test_"))
for _name in SUITE_TESTS:
    if _name not in NOT_APPLICABLE and _name not in SKLEARN_INTERNALS:
        globals()[_name] = getattr(suite, _name)


@pytest.fixture
def global_dtype():
    """The state is float64 (scikit-learn runs float32 only on request)."""
    return np.float64


@pytest.fixture(params=[42])
def global_random_seed(request):
    """scikit-learn's default global seed."""
    return request.param


def test_every_left_out_test_exists_in_the_suite():
    assert set(NOT_APPLICABLE) <= set(SUITE_TESTS)
    assert set(SKLEARN_INTERNALS) <= set(SUITE_TESTS)
    assert len(NOT_APPLICABLE) <= 10
