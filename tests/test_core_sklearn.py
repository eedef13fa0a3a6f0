"""scikit-learn's own estimator checks, with no expected-failure list."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from streamgmm import OnlineGaussianMixture


@parametrize_with_checks(
    [
        OnlineGaussianMixture(random_state=0),
        OnlineGaussianMixture(2, covariance_type="diag", random_state=0),
        OnlineGaussianMixture(2, covariance_type="spherical", half_life=50, random_state=0),
        OnlineGaussianMixture(2, covariance_type="tied", warm_up=20, random_state=0),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
