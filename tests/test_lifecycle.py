"""Online birth, merge and death of components (``n_components="auto"``, streamgmm._lifecycle)."""

import inspect
import json

import numpy as np
import pytest
from river import datasets
from sklearn.metrics import adjusted_rand_score, roc_auc_score

from streamgmm import OnlineGaussianMixture
from streamgmm._mixture_spec import MIXTURE_DEFAULTS
from streamgmm.river import GaussianMixture, GaussianMixtureDetector

A, B, C = np.array([0.0, 0.0]), np.array([6.0, 0.0]), np.array([0.0, 8.0])


def blobs(n, centers, seed):
    """n rows drawn evenly from unit Gaussians at ``centers``, in random order."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, len(centers), n)
    return np.asarray(centers)[which] + rng.normal(size=(n, 2)), which


def learn(model, X, path):
    if path == "batch":
        for i in range(0, X.shape[0], 100):
            model.partial_fit(X[i : i + 100])
    else:
        for x in X:
            model.learn_one(x)


# -- birth ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["batch", "one"])
def test_a_new_cluster_mid_stream_is_born(path):
    model = OnlineGaussianMixture(random_state=0, half_life=2000)
    learn(model, blobs(3000, [A, B], seed=1)[0], path)
    assert model.n_components_ == 2
    ids_before = model.component_ids_.tolist()
    learn(model, blobs(3000, [A, B, C], seed=2)[0], path)
    assert model.n_components_ == 3
    assert model.lifecycle_counts_ == {"births": 1, "merges": 0, "deaths": 0}
    # The newborn has a new id; the others keep theirs.
    assert model.component_ids_.tolist() == [*ids_before, max(ids_before) + 1]
    test = blobs(4000, [A, B, C], seed=3)[0]
    knew = OnlineGaussianMixture(3, random_state=0).fit(blobs(6000, [A, B, C], seed=4)[0])
    assert model.score(test) > knew.score(test) - 0.02
    # Without the life cycle the same stream leaves the new cluster to a stretched component.
    fixed = OnlineGaussianMixture(2, random_state=0, half_life=2000)
    learn(fixed, blobs(3000, [A, B], seed=1)[0], path)
    learn(fixed, blobs(3000, [A, B, C], seed=2)[0], path)
    assert fixed.score(test) < knew.score(test) - 0.3


def test_rows_kept_out_by_a_gate_still_count_as_evidence():
    """score_and_learn with a threshold that excludes the new cluster: it is born anyway."""
    model = OnlineGaussianMixture(random_state=0)
    model.partial_fit(blobs(3000, [A, B], seed=1)[0])
    X = blobs(3000, [A, B, C], seed=2)[0]
    for i in range(0, 3000, 50):
        result = model.score_and_learn(X[i : i + 50], threshold=12.0)
    assert model.n_components_ == 3
    assert result.learned.mean() > 0.9  # once born, the new cluster is learned
    # The one-row door for a record that is not learned.
    one = OnlineGaussianMixture(random_state=0)
    one.partial_fit(blobs(3000, [A, B], seed=1)[0])
    for x in X:
        if -one.score_one(x) > 12.0:
            one.observe_one(x)
        else:
            one.learn_one(x)
    assert one.n_components_ == 3


def test_a_given_log_density_changes_nothing():
    """learn_one/observe_one(log_density=score_one(x)) skip a second scoring: same model."""
    X = np.vstack([blobs(1500, [A, B], seed=1)[0], blobs(3000, [A, B, C], seed=2)[0]])
    given = OnlineGaussianMixture(random_state=0, half_life=2000)
    scored = OnlineGaussianMixture(random_state=0, half_life=2000)
    for x in X:  # a gated stream: the rows a threshold keeps out are only observed
        if getattr(given, "warming_up_", True):
            given.learn_one(x)
            scored.learn_one(x)
            continue
        ld = given.score_one(x)
        assert ld == scored.score_one(x)
        if -ld <= 12.0:
            assert given.learn_one(x, log_density=ld) == scored.learn_one(x)
        else:
            assert given.observe_one(x, log_density=ld) == scored.observe_one(x)
    assert given.lifecycle_counts_["births"] == 1  # the life cycle did work on the way
    assert given.lifecycle_counts_ == scored.lifecycle_counts_
    (arrays_a, meta_a), (arrays_b, meta_b) = given.get_state(), scored.get_state()
    assert json.dumps(meta_a, sort_keys=True) == json.dumps(meta_b, sort_keys=True)
    assert arrays_a.keys() == arrays_b.keys()
    for name, value in arrays_a.items():
        np.testing.assert_array_equal(value, arrays_b[name], err_msg=name)


def test_the_one_row_buffer_step_equals_the_masked_one():
    """Lifecycle._keep_one (the River path) leaves the state _keep leaves, overflow included."""
    from streamgmm._lifecycle import Lifecycle

    rows = np.random.default_rng(0).normal(size=(400, 3))
    one, masked = Lifecycle(2, 3, 0.1, 10), Lifecycle(2, 3, 0.1, 10)
    held = []
    for i, x in enumerate(rows):
        for lc in (one, masked):
            lc.n_seen += 1
            lc.rate *= lc.decay
            lc.holding = (i // 50) % 2 == 0  # held and released spells
        t = one.n_seen - 1.0
        a = one._keep_one(x, t)
        b = bool(masked._keep(np.array([True]), x[None, :], np.array([t]))[0])
        assert a == b
        held.append(a)
    assert one.n_rows == masked.n_rows == one.rows.shape[0]  # the buffer overflowed
    assert 0 < sum(held) < len(held)
    for name in ("rate", "pending", "n_rows"):
        assert getattr(one, name) == getattr(masked, name), name
    np.testing.assert_array_equal(one.rows, masked.rows)
    np.testing.assert_array_equal(one.times, masked.times)


def test_scattered_anomalies_are_not_born():
    rng = np.random.default_rng(5)
    X, _ = blobs(20000, [A, B], seed=6)
    outliers = rng.random(X.shape[0]) < 0.02
    X[outliers] = rng.uniform(-30.0, 30.0, (int(outliers.sum()), 2))
    model = OnlineGaussianMixture(random_state=0)
    learn(model, X, "batch")
    assert model.n_components_ == 2  # the warm-up's light outlier components are dropped
    assert model.lifecycle_counts_["births"] == 0
    # A burst of 300 scattered anomalies in a row: persistent, but not coherent.
    burst = rng.uniform(-30.0, 30.0, (300, 2))
    learn(model, np.vstack([burst, blobs(2000, [A, B], seed=7)[0]]), "batch")
    assert model.n_components_ == 2
    assert model.lifecycle_counts_["births"] == 0


def test_a_group_rarer_than_min_weight_stays_anomalous():
    """A coherent group at 5% of the stream (below min_weight, 0.1): no birth."""
    X, _ = blobs(3000, [A, B], seed=8)
    model = OnlineGaussianMixture(random_state=0)
    model.partial_fit(X)
    rng = np.random.default_rng(9)
    Y, _ = blobs(6000, [A, B], seed=10)
    rare = rng.random(6000) < 0.05
    Y[rare] = C + rng.normal(size=(int(rare.sum()), 2))
    learn(model, Y, "batch")
    assert model.n_components_ == 2
    # The same group at 30% is a regime.
    Z, _ = blobs(6000, [A, B], seed=11)
    Z[rng.random(6000) < 0.3] = C
    Z += rng.normal(scale=0.01, size=Z.shape)
    learn(model, Z, "batch")
    assert model.n_components_ == 3


def test_a_wide_change_is_followed_not_born():
    """The stream widens fivefold: no compact group, so no birth; the rows inside the
    components' bulk are learned, the components widen and merge, and the model follows."""
    model = OnlineGaussianMixture(random_state=0, half_life=1000)
    model.partial_fit(blobs(2000, [A, B], seed=26)[0])
    rng = np.random.default_rng(27)
    wide = rng.normal(0.0, 5.0, (12000, 2))
    before = model.score(wide[-2000:])
    for i in range(0, 10000, 100):
        model.partial_fit(wide[i : i + 100])
    assert model.lifecycle_counts_["births"] == 0
    assert model.score(wide[-2000:]) > before + 1.0
    np.testing.assert_allclose(np.diag(model.full_covariances_[0]), 25.0, rtol=0.25)


# -- merge and death ------------------------------------------------------------------------


def test_two_components_on_one_cluster_merge():
    """Two clusters drift together: their components end up explaining the same data."""
    model = OnlineGaussianMixture(random_state=0, half_life=1000)
    model.partial_fit(blobs(2000, [A, B], seed=12)[0])
    assert model.n_components_ == 2
    ids = model.component_ids_.tolist()
    rng = np.random.default_rng(13)
    for step in range(80):
        moving = B * max(0.0, 1.0 - step / 50)
        model.partial_fit(blobs(200, [A, moving], seed=100 + step)[0])
    assert model.n_components_ == 1
    assert model.lifecycle_counts_["merges"] == 1
    assert model.component_ids_.tolist() == [min(ids)]  # the older id survives
    test = rng.normal(size=(2000, 2))
    alone = OnlineGaussianMixture(1, random_state=0).fit(rng.normal(size=(4000, 2)))
    assert model.score(test) > alone.score(test) - 0.05


def test_a_component_whose_cluster_disappears_dies():
    model = OnlineGaussianMixture(random_state=0, half_life=500)
    model.partial_fit(blobs(2000, [A, B], seed=14)[0])
    assert model.n_components_ == 2
    learn(model, blobs(6000, [A], seed=15)[0], "batch")
    assert model.n_components_ == 1
    assert model.lifecycle_counts_ == {"births": 0, "merges": 0, "deaths": 1}
    np.testing.assert_allclose(model.means_[0], A, atol=0.15)


def test_fixed_k_keeps_sklearn_behaviour():
    """An integer K never changes; a starving component is re-seeded, not removed."""
    model = OnlineGaussianMixture(2, random_state=0, half_life=500)
    model.partial_fit(blobs(2000, [A, B], seed=14)[0])
    learn(model, blobs(6000, [A], seed=15)[0], "batch")
    learn(model, blobs(3000, [A, B, C], seed=2)[0], "batch")
    assert model.n_components_ == 2
    assert model.component_ids_.tolist() == [0, 1]
    assert model.lifecycle_counts_ == {"births": 0, "merges": 0, "deaths": 0}


# -- state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_state_round_trip_while_k_changes(covariance_type):
    model = OnlineGaussianMixture(random_state=0, covariance_type=covariance_type, half_life=800)
    model.partial_fit(blobs(2000, [A, B], seed=16)[0])
    new = blobs(1500, [A, B, C], seed=17)[0]
    model.partial_fit(new[:90])  # evidence for a birth is being gathered
    arrays, meta = model.get_state()
    meta = json.loads(json.dumps(meta))
    assert all(a.dtype == np.float64 for a in arrays.values())
    restored = OnlineGaussianMixture.from_state({k: v.copy() for k, v in arrays.items()}, meta)
    rest = np.vstack([new[90:], blobs(6000, [A, C], seed=18)[0]])
    for m in (model, restored):
        for i in range(0, rest.shape[0], 37):
            m.partial_fit(rest[i : i + 37])
    assert model.lifecycle_counts_["births"] >= 1
    assert model.lifecycle_counts_["deaths"] >= 1  # B stopped: its component died
    assert restored.lifecycle_counts_ == model.lifecycle_counts_
    assert restored.component_ids_.tolist() == model.component_ids_.tolist()
    np.testing.assert_array_equal(restored.means_, model.means_)
    np.testing.assert_array_equal(restored.covariances_, model.covariances_)
    assert restored.get_state()[1] == json.loads(json.dumps(model.get_state()[1]))


def test_non_finite_change_is_rolled_back():
    model = OnlineGaussianMixture(random_state=0)
    model.partial_fit(blobs(2000, [A, B], seed=16)[0])
    lc = model._lifecycle
    before = model.means_.copy()
    bad = np.vstack([model.means_, [np.nan, 0.0]])
    assert not lc._adopt(
        model, np.array([0.4, 0.4, 0.2]), bad, np.concatenate([model._cov, np.eye(2)[None]])
    )
    assert model.n_components_ == 2
    np.testing.assert_array_equal(model.means_, before)


# -- one spec, River faces ------------------------------------------------------------------


def test_every_face_takes_its_defaults_from_the_one_spec():
    from streamgmm.service.config import ModelConfig

    faces = [OnlineGaussianMixture, GaussianMixture, GaussianMixtureDetector]
    for face in faces:
        params = inspect.signature(face.__init__).parameters
        for name, default in MIXTURE_DEFAULTS.items():
            assert params[name].default == default, (face.__name__, name)
    config = ModelConfig()
    for name in ModelConfig.model_fields:
        if name in MIXTURE_DEFAULTS:
            assert getattr(config, name) == MIXTURE_DEFAULTS[name], name
    assert MIXTURE_DEFAULTS["n_components"] == "auto"


def test_river_detector_defaults_on_shuttle():
    data = list(datasets.Shuttle())
    labels = np.array([y for _, y in data])
    detector = GaussianMixtureDetector(seed=42)
    scores, flags = [], []
    for x, _ in data:
        scores.append(detector.score_one(x))
        flags.append(detector.is_anomaly(x))
        detector.learn_one(x)
    assert roc_auc_score(labels, scores) >= 0.98
    assert np.mean(np.array(flags)[~labels]) < 0.02
    # The anomaly classes (7%, coherent) are lighter than min_weight: not components.
    assert detector.model_.lifecycle_counts_["births"] == 0


def test_river_detector_births_from_gated_records():
    """A new regime whose records the gate keeps out of the model is still born."""
    rng = np.random.default_rng(19)
    detector = GaussianMixtureDetector(seed=0, drift_detection=False)
    for x in blobs(2000, [A, B], seed=20)[0]:
        detector.learn_one({"a": x[0], "b": x[1]})
    assert detector.model_.n_components_ == 2
    new = blobs(3000, [A, B, C], seed=21)[0]
    for x in new:
        detector.learn_one({"a": x[0], "b": x[1]})
    assert detector.model_.n_components_ == 3
    later = blobs(3000, [C], seed=22)[0]
    rate = np.mean([detector.is_anomaly({"a": x[0], "b": x[1]}) for x in later])
    assert rate < 0.05  # the new regime is normal now
    assert detector.is_anomaly({"a": 20.0 + rng.normal(), "b": -20.0})


def test_river_clusterer_labels_stay_stable_across_birth_and_death():
    model = GaussianMixture(seed=0, half_life=800)
    for x in blobs(2000, [A, B], seed=23)[0]:
        model.learn_one({"a": x[0], "b": x[1]})
    label_a = model.predict_one({"a": 0.0, "b": 0.0})
    label_b = model.predict_one({"a": 6.0, "b": 0.0})
    assert label_a != label_b
    for x in blobs(3000, [A, B, C], seed=24)[0]:
        model.learn_one({"a": x[0], "b": x[1]})
    label_c = model.predict_one({"a": 0.0, "b": 8.0})
    assert label_c == max(label_a, label_b) + 1  # a born component gets a new label
    assert model.predict_one({"a": 0.0, "b": 0.0}) == label_a
    assert set(model.centers) == {label_a, label_b, label_c}
    assert abs(model.centers[label_c]["b"] - 8.0) < 0.3
    for x in blobs(6000, [A, C], seed=25)[0]:  # B stops: its component dies
        model.learn_one({"a": x[0], "b": x[1]})
    assert set(model.centers) == {label_a, label_c}
    assert model.predict_one({"a": 0.0, "b": 8.0}) == label_c
    proba = model.predict_proba_one({"a": 0.0, "b": 0.0})
    assert set(proba) == {label_a, label_c} and proba[label_a] > 0.99


@pytest.mark.parametrize("name", ["ImageSegments", "Bananas"])
def test_river_clusterer_auto_on_bundled_datasets(name):
    data = list(getattr(datasets, name)())
    truth = [y for _, y in data]
    models = {k: GaussianMixture(n_components=k, seed=0) for k in ("auto", 2, len(set(truth)))}
    for x, _ in data:
        for model in models.values():
            model.learn_one(x)
    auto = models["auto"]
    assert 2 <= auto.model_.n_components_ <= 10
    predicted = [auto.predict_one(x) for x, _ in data]
    assert set(predicted) <= set(auto.centers)
    # Clusters at least as good as guessing K (the number of classes, or 2), by the labels
    # and by the density.
    ari = {
        k: adjusted_rand_score(truth, [m.predict_one(x) for x, _ in data])
        for k, m in models.items()
    }
    assert ari["auto"] >= max(ari.values()) - 0.02
    # The typical record is explained better than with K=2.  (Not the mean: records of a
    # group rarer than min_weight are held back as anomalies and score very low.)
    loglik = {k: np.median([m.score_one(x) for x, _ in data]) for k, m in models.items()}
    assert loglik["auto"] > loglik[2]
