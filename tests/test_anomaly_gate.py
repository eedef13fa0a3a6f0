"""Anomaly decisions (issue 9): unbiased gating, a calibrated bounded score, flag rates that hold
on data the model does not fit, one parameter spec, fast reaction to a change."""

from __future__ import annotations

import inspect
import json
import logging

import numpy as np
import pytest
from river import anomaly, datasets, metrics
from sklearn.metrics import roc_auc_score

from streamgmm import OnlineGaussianMixture
from streamgmm.river import GaussianMixtureDetector


def _gaussian_dicts(n, d=2, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"x{j}" for j in range(d)]
    return [dict(zip(names, r, strict=True)) for r in rng.normal(size=(n, d)).tolist()]


# -- 1. unbiased gating ---------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_detector_flags_at_the_target_rate_and_learns_the_true_variance(rate):
    """Dropping every flagged record truncated the tail: at 0.05 it flagged 13% and learned a
    variance of 0.70.  The gate must leave both as an ungated model has them."""
    stream = _gaussian_dicts(20000)
    gated = GaussianMixtureDetector(false_alarm_rate=rate, seed=0)
    ungated = GaussianMixtureDetector(false_alarm_rate=rate, gating=False, seed=0)
    flags = []
    for x in stream:
        flags.append(gated.is_anomaly(x))
        gated.learn_one(x)
        ungated.learn_one(x)
    realised = np.mean(flags[1000:])
    assert abs(realised / rate - 1.0) <= 0.25, realised

    def variance(det):
        return np.diag(det.model_.full_covariances_[0]) / det._inv_scale**2

    np.testing.assert_allclose(variance(gated), variance(ungated), rtol=0.05)
    np.testing.assert_allclose(variance(gated), [1.0, 1.0], rtol=0.05)


@pytest.mark.parametrize(
    "covariance_type, k, d, rate",
    [("full", 3, 10, 0.05), ("diag", 5, 2, 0.01), ("spherical", 1, 2, 0.05), ("tied", 3, 2, 0.01)],
)
def test_gate_step_unbiased_across_covariance_types(covariance_type, k, d, rate):
    from scipy.optimize import linear_sum_assignment

    from streamgmm.anomaly import AnomalyGate

    rng = np.random.default_rng(1)
    means = rng.normal(0.0, 6.0, (k, d))
    X = means[rng.integers(k, size=20000)] + rng.normal(size=(20000, d))

    def run(gating):
        model = OnlineGaussianMixture(
            k, covariance_type=covariance_type, warm_up=1000, random_state=0
        )
        gate = AnomalyGate(false_alarm_rate=rate, gating=gating, random_state=0)
        result = gate.score_and_learn(model, X)
        return model, result.anomaly[1000:].mean()

    gated, realised = run(True)
    ungated, _ = run(False)
    assert abs(realised / rate - 1.0) <= 0.25, realised
    cost = ((gated.means_[:, None] - ungated.means_[None]) ** 2).sum(-1)
    i, j = linear_sum_assignment(cost)
    var_g = np.diagonal(gated.full_covariances_[i], axis1=1, axis2=2)
    var_u = np.diagonal(ungated.full_covariances_[j], axis1=1, axis2=2)
    np.testing.assert_allclose(var_g, var_u, rtol=0.05)


# -- 2. a calibrated, bounded score ---------------------------------------------------------


def test_river_score_is_a_bounded_tail_score_that_river_filters_understand():
    stream = _gaussian_dicts(12000, d=3, seed=2)
    qf = anomaly.QuantileFilter(GaussianMixtureDetector(seed=0), q=0.95)
    tf = anomaly.ThresholdFilter(GaussianMixtureDetector(seed=0), threshold=0.99)
    q_flags, t_flags, scores = [], [], []
    for x in stream:
        s = qf.score_one(x)
        scores.append(s)
        q_flags.append(qf.classify(s))
        qf.learn_one(x)
        t_flags.append(tf.classify(tf.score_one(x)))
        tf.learn_one(x)
    assert min(scores) >= 0.0 and max(scores) <= 1.0
    assert 0.035 <= np.mean(q_flags[2000:]) <= 0.065, np.mean(q_flags[2000:])
    # ThresholdFilter(0.99): about 1% of normal records, warm-up included (no starving).
    assert 0.005 <= np.mean(t_flags) <= 0.02, np.mean(t_flags)
    assert tf.anomaly_detector.n_learned_ >= 0.97 * len(stream)


def test_threshold_filter_does_not_starve_the_detector_on_real_data():
    """River's ThresholdFilter learns only what it does not flag; the detector must not narrow
    itself on that truncated stream (it flagged 54% of Shuttle's normal records: the warm-up's
    rank reference and the gate's reference never saw the records kept out)."""
    data = list(datasets.Shuttle().take(6000))
    labels = np.array([y for _, y in data])
    tf = anomaly.ThresholdFilter(GaussianMixtureDetector(seed=0), threshold=0.99)
    scores, flags = [], []
    for x, _ in data:
        scores.append(tf.score_one(x))
        flags.append(tf.classify(scores[-1]))
        tf.learn_one(x)
    flags = np.array(flags)
    detector = tf.anomaly_detector
    assert flags[labels == 0].mean() <= 0.02, flags[labels == 0].mean()  # measured 0.004
    assert detector.n_kept_out_ == flags.sum()  # each flagged record, once
    assert detector.n_learned_ <= len(data) - flags.sum()  # and none of them learned
    assert roc_auc_score(labels, scores) > 0.95  # measured 0.987


def test_river_rocauc_agrees_with_the_exact_figure():
    data = list(datasets.Shuttle().take(8000))
    detector = GaussianMixtureDetector(seed=0)
    river_auc = metrics.ROCAUC()
    scores, labels = [], []
    for x, y in data:
        s = detector.score_one(x)
        river_auc.update(y, s)
        scores.append(s)
        labels.append(y)
        detector.learn_one(x)
    exact = roc_auc_score(labels, scores)
    assert exact > 0.95
    assert abs(river_auc.get() - exact) <= 0.02, (river_auc.get(), exact)


def test_warm_up_scores_are_not_absurd():
    """Two records used to give a running variance of ~0 and scores of 8e6 for the third."""
    stream = _gaussian_dicts(300, d=3, seed=3)
    det = GaussianMixtureDetector(score="neg_log_density", seed=0)
    tails = GaussianMixtureDetector(seed=0)
    nll, bounded = [], []
    for x in stream:
        nll.append(det.score_one(x))
        bounded.append(tails.score_one(x))
        det.learn_one(x)
        tails.learn_one(x)
    assert max(nll) < 50.0, max(nll)
    assert min(bounded) >= 0.0 and max(bounded) <= 1.0
    assert np.mean(np.array(bounded[20:]) > 0.99) < 0.03


# -- 3. flag rates on data the model does not fit --------------------------------------------


def test_flag_rate_holds_on_wide_data():
    """4,000 rows of 200 correlated features (76% flagged before): the stream's own scores
    and the core's shorter warm-up keep the rate near the target."""
    from streamgmm.anomaly import AnomalyGate

    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 200))
    X = rng.multivariate_normal(np.zeros(200), a @ a.T / 200 + np.eye(200), 4000)
    model = OnlineGaussianMixture(random_state=0)
    gate = AnomalyGate(random_state=0)
    result = gate.score_and_learn(model, X)
    assert result.anomaly[2000:].mean() <= 0.02, result.anomaly[2000:].mean()


def test_a_flag_rate_far_above_the_target_is_reported(caplog):
    """4% of far outliers at a 0.5% target: every outlier is flagged, none is learned, and the
    sustained excess is logged, counted and visible as an attribute.  (The model still fits
    the bulk of the stream, so the gate keeps calibrating on the model, not on the stream.)"""
    from streamgmm.anomaly import AnomalyGate

    rng = np.random.default_rng(6)
    X = rng.normal(size=(8000, 2))
    outlier = rng.random(8000) < 0.04
    outlier[:1000] = False
    angle = rng.uniform(0.0, 2.0 * np.pi, outlier.sum())
    X[outlier] = 30.0 * np.column_stack([np.cos(angle), np.sin(angle)])  # scattered, far
    model = OnlineGaussianMixture(warm_up=1000, random_state=0)
    gate = AnomalyGate(false_alarm_rate=0.005, random_state=0)
    with caplog.at_level(logging.WARNING, logger="streamgmm.anomaly"):
        result = gate.score_and_learn(model, X)
    assert result.anomaly[outlier].all() and not result.learned[outlier].any()
    assert gate.calibration_source_ == "model"
    assert gate.flag_rate_alarm_ and gate.n_rate_warnings_ == 1
    assert gate.recent_flag_rate_ > 0.02
    assert "far above the target" in caplog.text


def test_the_flag_rate_warning_shows_a_small_target(caplog):
    # The demo's target 0.0002 was logged as "stays far above the target 0.000".
    from streamgmm.anomaly import ALARM_WINDOWS, AnomalyGate

    gate = AnomalyGate(false_alarm_rate=0.0002, random_state=0)
    with caplog.at_level(logging.WARNING, logger="streamgmm.anomaly"):
        for _ in range(ALARM_WINDOWS):
            gate._window_n, gate._window_flagged = 1000, 15
            gate._close_window()
    assert gate.flag_rate_alarm_
    assert "flag rate 0.015 stays far above the target 0.0002 " in caplog.text


# -- 4. one spec, one step ------------------------------------------------------------------


def test_one_parameter_spec_for_gate_detector_and_service():
    from streamgmm._gate_spec import GATE_DEFAULTS
    from streamgmm.anomaly import AnomalyGate
    from streamgmm.service.config import GateConfig, ModelConfig

    gate = inspect.signature(AnomalyGate).parameters
    detector = inspect.signature(GaussianMixtureDetector).parameters
    service = GateConfig()
    for name, default in GATE_DEFAULTS.items():
        assert gate[name].default == default, name
        if name != "random_state":  # River's `seed`
            assert detector[name].default == default, name
        if name == "gating":
            assert service.enabled == default
        elif name != "random_state":  # the service is seeded (reproducible) by default
            assert getattr(service, name) == default, name
    # The same number of components everywhere.
    assert (
        inspect.signature(OnlineGaussianMixture).parameters["n_components"].default
        == detector["n_components"].default
        == ModelConfig().n_components
        == "auto"
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"false_alarm_rate": 0.0},
        {"exclusion_ratio": 2.0},
        {"refresh_every": 0},
        {"n_calibration": 5},
        {"drift_threshold": -1.0},
        {"gating": "yes"},
    ],
)
def test_gate_parameters_are_validated_on_every_face(kwargs):
    from streamgmm.anomaly import AnomalyGate
    from streamgmm.service.config import ConfigError, load_config

    with pytest.raises(ValueError):
        AnomalyGate(**kwargs)
    with pytest.raises(ValueError):
        GaussianMixtureDetector(**kwargs)
    if "gating" not in kwargs:
        with pytest.raises(ConfigError, match=f"gate.{next(iter(kwargs))}"):
            load_config(overrides={"input": {"path": "x"}, "gate": kwargs}, env={})


def test_gate_state_round_trip_continues_exactly():
    from streamgmm.anomaly import AnomalyGate

    rng = np.random.default_rng(4)
    X = rng.normal(size=(5000, 3))
    X[3000:, 0] += 6.0  # a change, so that the change detector and the adaptation are saved

    def fresh():
        return OnlineGaussianMixture(warm_up=300, random_state=0), AnomalyGate(random_state=0)

    model, gate = fresh()
    whole = [gate.score_and_learn(model, X[i : i + 100]) for i in range(0, 5000, 100)]
    # 100, 200: warm-up checks; 400: settling after the warm-up; 3100: adapting after the change.
    for cut in (100, 200, 400, 2000, 3100):
        model, gate = fresh()
        for i in range(0, 5000, 100):
            if i == cut:
                arrays, meta = model.get_state()
                model = OnlineGaussianMixture.from_state(arrays, json.loads(json.dumps(meta)))
                arrays, meta = gate.get_state()
                gate = AnomalyGate.from_state(arrays, json.loads(json.dumps(meta)))
            part = gate.score_and_learn(model, X[i : i + 100])
            for a, b in zip(part, whole[i // 100], strict=True):
                np.testing.assert_array_equal(a, b)


# -- 5. fast reaction to a change ------------------------------------------------------------


def test_an_abrupt_change_is_followed_within_a_hundred_records():
    """A jump of 5 standard deviations: the old window check needed ~1,000 flagged records."""
    from streamgmm.anomaly import AnomalyGate

    rng = np.random.default_rng(5)
    X = rng.normal(size=(9000, 2))
    X[6000:, 0] += 5.0
    model = OnlineGaussianMixture(half_life=3000, random_state=0)
    gate = AnomalyGate(random_state=0)
    result = np.concatenate(
        [gate.score_and_learn(model, X[i : i + 250]).anomaly for i in range(0, 9000, 250)]
    )
    assert gate.n_drifts_ == 1
    assert result[6000:7000].sum() <= 100, result[6000:7000].sum()
    assert result[7000:].mean() <= 0.02
    assert result[1000:6000].mean() <= 0.02


def test_change_detector_sees_the_same_block_medians_in_a_batch_as_row_by_row():
    """The batch step's numpy block medians, and the scalar path's, feed the change detector
    exactly as River's own ``PageHinkley.update`` fed block by block: the same row fires, and
    the detectors end in the same state, to the last bit."""
    import math

    from streamgmm.anomaly import DRIFT_BLOCK, SURPRISE_CAP, AnomalyGate

    rng = np.random.default_rng(11)
    calm = rng.uniform(size=3000)
    calm[rng.random(3000) < 0.02] = np.nan  # rows without a tail are skipped
    calm[rng.random(3000) < 0.01] = 0.0  # a tail of 0 counts as the capped surprise
    changed = rng.uniform(size=200) * 1e-4  # then every row is very surprising
    tails = np.concatenate([calm, changed])

    # River's detector, fed by hand.
    river_ph = AnomalyGate(random_state=0)._new_detector()
    block, fired_river = [], None
    for i, t in enumerate(tails.tolist()):
        if t != t:
            continue
        block.append(min(-math.log(t) if t > 0 else SURPRISE_CAP, SURPRISE_CAP))
        if len(block) == DRIFT_BLOCK:
            river_ph.update(sorted(block)[DRIFT_BLOCK // 2])
            block = []
            if river_ph.drift_detected:
                fired_river = i
                break

    one, many = AnomalyGate(random_state=0), AnomalyGate(random_state=0)
    fired_one = next(i for i, t in enumerate(tails.tolist()) if one._watch(t))
    i, fired_many = 0, None
    while fired_many is None:
        j = i + int(rng.integers(1, 60))  # segments of every length, across block boundaries
        k = many._watch_many(tails[i:j])
        fired_many = None if k is None else i + k
        i = j
    assert fired_many == fired_one == fired_river and 3000 <= fired_river < 3030
    assert one.n_drifts_ == many.n_drifts_ == 1
    fields = ("_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease")
    for gate in (one, many):
        det = gate._detector
        assert [getattr(det, f) for f in fields] == [getattr(river_ph, f) for f in fields]
        assert (det._x_mean.n, det._x_mean._mean) == (river_ph._x_mean.n, river_ph._x_mean._mean)
        assert det.drift_detected


def test_batch_gate_step_scores_each_row_once():
    """Tails, change detector and learning share one E-step: besides the calibration draws, the
    gate never asks the model for scores again."""
    from streamgmm.anomaly import AnomalyGate

    model = OnlineGaussianMixture(n_components=2, warm_up=500, random_state=0)
    gate = AnomalyGate(random_state=0)
    X = np.random.default_rng(2).normal(size=(20000, 3))
    gate.score_and_learn(model, X[:2000])
    scored = []
    real = model.score_samples
    model.score_samples = lambda rows: scored.append(len(rows)) or real(rows)
    n_calibrations = gate._n_calibrations
    gate.score_and_learn(model, X[2000:])
    assert sum(scored) == gate.n_calibration * (gate._n_calibrations - n_calibrations)


def test_a_restored_gate_with_a_stream_reference_keeps_the_models_exclusion_threshold():
    # With a stream reference the exclusion threshold is the model's far tail; from_state
    # recomputed it from the stream reference (Shuttle: 9.9e5 instead of 28), so after a
    # restart the gate learned the anomalies it had kept out and the runs diverged.
    from streamgmm.anomaly import AnomalyGate
    from streamgmm.service.state import copy_pair

    X = np.array([list(x.values()) for x, _ in datasets.Shuttle().take(10100)])
    model, gate = OnlineGaussianMixture(random_state=0), AnomalyGate(random_state=0)
    for start in range(0, 10000, 100):
        gate.score_and_learn(model, X[start : start + 100])
    assert gate.calibration_source_ == "stream"
    model_copy, gate_copy = copy_pair(model, gate)
    assert gate_copy.exclusion_threshold_ == gate.exclusion_threshold_
    after = gate.score_and_learn(model, X[10000:])
    after_copy = gate_copy.score_and_learn(model_copy, X[10000:])
    for field, a, b in zip(after._fields, after, after_copy, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=field)


def test_flag_rates_hold_on_lattice_valued_real_data():
    """River's ImageSegments (integer-valued pixel counts) and Phishing (features in {-1, 0,
    1}), through the gate's batch step with the defaults: the model's own Gaussian samples are
    far too optimistic about such records, so the gate must notice it from the stream's scores
    -- in the warm-up, within 50 records of each fit, and when a tenth of the stream lies
    beyond the threshold with the bulk well judged.  Measured: 2.5% and 4.8% flagged over the
    whole stream (9.7% and 4.4% before; the target is 1%)."""
    from streamgmm.anomaly import AnomalyGate

    for data, limit in ((datasets.ImageSegments(), 0.035), (datasets.Phishing(), 0.065)):
        X = np.array([[float(v) for v in x.values()] for x, _ in data])
        model = OnlineGaussianMixture(random_state=0)
        gate = AnomalyGate(random_state=0)
        flags = [gate.score_and_learn(model, X[i : i + 100]).anomaly for i in range(0, len(X), 100)]
        rate = np.concatenate(flags).mean()
        assert rate <= limit, (type(data).__name__, rate)


def test_a_tenth_of_the_stream_beyond_the_threshold_is_a_misfit_not_anomalies():
    """River's Phishing through the River detector (seed 1): the model judges the bulk of the
    records well, but 13% of those after the warm-up scored beyond its threshold, and no user
    has that many anomalies at a 1% target.  More than a tenth of the stream beyond the
    threshold now makes the stream's scores the reference (measured 7.2% after the warm-up,
    13.2% before, on 250 records)."""
    det = GaussianMixtureDetector(seed=1)
    flags = []
    for x, _ in datasets.Phishing():
        flags.append(det.score_one(x) > det.threshold)
        det.learn_one(x)
    assert np.mean(flags[1000:]) <= 0.1


def test_a_heavy_tail_is_not_kept_out_of_the_model_wholesale():
    """A Cauchy stream (2-D, one component): the model's far tail holds its own misfit, not
    anomalies.  The gate never keeps more than a tenth of the recent stream out of the model
    (measured: 9.1% kept out after the warm-up; 12.1% without the cap)."""
    from streamgmm.anomaly import AnomalyGate

    X = np.random.default_rng(0).standard_t(1.0, size=(20000, 2))
    model = OnlineGaussianMixture(n_components=1, random_state=0)
    gate = AnomalyGate(random_state=0)
    results = [gate.score_and_learn(model, X[i : i + 200]) for i in range(0, len(X), 200)]
    learned = np.concatenate([r.learned for r in results])
    assert 1.0 - learned[1000:].mean() <= 0.1


def test_the_river_detectors_warm_up_flags_about_its_target_on_lattice_data():
    """River's ImageSegments through the River detector: during its warm-up a record's tail is
    never below its rank among the earlier warm-up records' Student-t tails (the stream's own
    calibration).  The t tails alone flagged 15.1% of the first 1,000 records (measured: 1.1%
    now; target 1%)."""
    det = GaussianMixtureDetector(seed=0)
    flags = []
    for x, _ in list(datasets.ImageSegments())[:1000]:
        flags.append(det.score_one(x) > det.threshold)
        det.learn_one(x)
    assert np.mean(flags) <= 0.03


def _warm_up_rows():
    from sklearn import datasets as sk_datasets

    rng = np.random.default_rng(0)
    trump = np.array([list(x.values()) for x, _ in datasets.TrumpApproval()])
    yield "TrumpApproval", trump[:1000]  # the warm-up's length
    yield "breast_cancer", sk_datasets.load_breast_cancer().data
    yield "diabetes", sk_datasets.load_diabetes().data
    iris = sk_datasets.load_iris().data
    yield "iris", iris[rng.permutation(len(iris))]


@pytest.mark.parametrize("name, X", [pytest.param(n, X, id=n) for n, X in _warm_up_rows()])
def test_the_gates_warm_up_flags_about_its_target_on_small_real_data(name, X):
    """Data sets shorter than the warm-up, through the gate's batch step with the defaults (as
    ``streamgmm run`` does): every record is judged by a provisional fit.  A provisional
    fit's own samples cannot calibrate a 1% tail, and a drifting series (TrumpApproval) runs
    away from each fit; a record's tail is therefore never below its rank among the earlier
    warm-up records' tails.  Measured (all in the warm-up, target 1%): TrumpApproval 0.8%,
    breast_cancer 0.5%, diabetes 0.9%, iris 1.3%; before: 18%, 6%, 7%, 7%."""
    from streamgmm.anomaly import AnomalyGate

    model = OnlineGaussianMixture(random_state=0)
    gate = AnomalyGate(random_state=0)
    flags = [gate.score_and_learn(model, X[i : i + 50]).anomaly for i in range(0, len(X), 50)]
    assert np.concatenate(flags).mean() <= 0.025, name


def test_a_record_beyond_every_warm_up_record_is_still_flagged():
    """The warm-up's rank never hides a record unlike all earlier ones: its rank is
    extrapolated in proportion to its tail, not tied at 1 / (n + 1)."""
    from streamgmm.anomaly import AnomalyGate

    X = np.random.default_rng(3).normal(size=(600, 3))
    odd = [60, 320, 480]  # 60: fewer than 99 earlier records
    X[odd] = 12.0
    model = OnlineGaussianMixture(random_state=0)
    gate = AnomalyGate(random_state=0)
    result = [gate.score_and_learn(model, X[i : i + 50]) for i in range(0, len(X), 50)]
    flags = np.concatenate([r.anomaly for r in result])
    assert model.warming_up_
    assert flags[odd].all()
    assert np.delete(flags, odd).mean() <= 0.02
