"""streamgmm.river: the feature schema on streams whose keys come and go, and the clusterer's
predictions during the warm-up."""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
from river import metrics

from streamgmm.river import GaussianMixture, GaussianMixtureDetector
from streamgmm.river._features import MIN_FEATURE_FREQUENCY, FrequentKeys

ADAPTERS = (GaussianMixture, GaussianMixtureDetector)


def one_off_stream(n, every=5, seed=0):
    """Features a and b; every `every`-th record also has a key no other record has."""
    rng = np.random.default_rng(seed)
    stream = []
    for i, (a, b) in enumerate(rng.normal(size=(n, 2)).tolist()):
        x = {"a": a, "b": b}
        if i % every == 0:
            x[f"tag_{i}"] = 1.0
        stream.append(x)
    return stream


def blobs(n, seed=0):
    """Three well separated 3-D clusters as River dicts, with their labels."""
    rng = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 3.0], [0.0, 7.0, -4.0]])
    labels = rng.integers(0, 3, n)
    X = centers[labels] + rng.normal(0.0, 1.0, (n, 3))
    return [{"a": r[0], "b": r[1], "c": r[2]} for r in X.tolist()], labels


def adjusted_rand(truth, predicted):
    ari = metrics.AdjustedRand()
    for t, p in zip(truth, predicted, strict=True):
        ari.update(t, p)
    return ari.get()


# -- the schema: features that recur ------------------------------------------------------


@pytest.mark.parametrize("cls", ADAPTERS)
@pytest.mark.parametrize("warm_up", [None, 500])
def test_one_off_keys_do_not_enter_the_schema(cls, warm_up):
    stream = one_off_stream(3000)
    model = cls(n_components=2, warm_up=warm_up, seed=0)
    for x in stream:
        model.learn_one(x)
    assert not model.warming_up_
    assert model.feature_names_in_ == ("a", "b")
    # The default warm-up counts only the schema's features: max(1000, 2 K (D + 1)) = 1000.
    end = 500 if warm_up == 500 else 1000
    n_tagged_after = sum(1 for i in range(end, 3000) if i % 5 == 0)
    assert model.n_unseen_ == n_tagged_after
    if cls is GaussianMixture:
        assert model.n_learned_ == 3000  # tagged records are complete on the schema


@pytest.mark.parametrize("cls", ADAPTERS)
def test_memory_stays_flat_on_a_stream_of_one_off_keys(cls):
    stream = one_off_stream(12000)
    model = cls(n_components=2, seed=0)
    for x in stream[:6000]:
        model.learn_one(x)
    size_half = len(pickle.dumps(model))
    for x in stream[6000:]:
        model.learn_one(x)
    assert not model.warming_up_
    # unseen_features_ tracks at most 1000 names; past that the estimator must not grow.
    assert len(pickle.dumps(model)) <= 1.05 * size_half


@pytest.mark.parametrize("cls", ADAPTERS)
def test_a_feature_must_recur_in_a_fraction_of_the_warm_up(cls):
    """Present in >= MIN_FEATURE_FREQUENCY of the warm-up records: a feature; rarer: not."""
    rng = np.random.default_rng(1)
    warm_up = 1000
    sparse_every = 10  # 10% of the records
    rare_every = round(1.0 / (0.5 * MIN_FEATURE_FREQUENCY))  # half the minimum rate
    stream = []
    for i in range(2 * warm_up):
        x = {"a": rng.normal(), "b": rng.normal()}
        if i % sparse_every == 0:
            x["sparse"] = rng.normal()
        if i % rare_every == 0:
            x["rare"] = rng.normal()
        stream.append(x)
    model = cls(warm_up=warm_up, seed=0)
    for x in stream[: warm_up - 1]:
        model.learn_one(x)
    assert model.warming_up_
    assert model.feature_names_in_ == ("a", "b", "sparse")  # the rule holds during warm-up
    for x in stream[warm_up - 1 :]:
        model.learn_one(x)
    assert model.feature_names_in_ == ("a", "b", "sparse")
    assert model.unseen_features_["rare"] == sum(
        1 for i in range(warm_up, 2 * warm_up) if i % rare_every == 0
    )


def test_n_components_auto_is_the_default_and_bad_values_are_refused_clearly():
    for cls in ADAPTERS:
        assert cls().n_components == "auto"
        for bad in ("many", 0):
            with pytest.raises(ValueError, match="n_components"):
                cls(n_components=bad)


def test_frequent_keys_counts_in_bounded_memory_and_keeps_what_recurs():
    counter = FrequentKeys(capacity=50)
    for i in range(10000):
        record = {"a": 1.0, "b": 2.0, f"once_{i}": 3.0}
        if i % 10 == 0:
            record["sometimes"] = 4.0
        counter.add(record)
        assert len(counter) <= 50
    assert counter.n_records == 10000
    frequent = counter.frequent(0.05)
    assert frequent == {"a", "b", "sometimes"}
    # Misra-Gries: a kept key's count is at most its true count, and at least
    # true count - (key occurrences) / (capacity + 1).
    slack = counter.n_occurrences / 51
    assert 10000 - slack <= counter["a"] <= 10000
    assert 1000 - slack <= counter["sometimes"] <= 1000


# -- predictions during the warm-up ----------------------------------------------------------


def test_predict_one_during_the_warm_up_uses_a_provisional_fit():
    stream, labels = blobs(1600)
    model = GaussianMixture(n_components=3, seed=0)  # default warm-up: 1000 records
    for x in stream[:300]:
        model.learn_one(x)
    assert model.warming_up_
    test = stream[1000:1600]
    predicted = [model.predict_one(x) for x in test]
    assert adjusted_rand(labels[1000:1600], predicted) > 0.95
    proba = model.predict_proba_one(test[0])
    assert max(proba.values()) > 0.99
    # Centers and densities come from the provisional fit too.
    centers = sorted(tuple(round(v) for v in c.values()) for c in model.centers.values())
    assert centers == [(0, 0, 0), (0, 7, -4), (6, 0, 3)]
    assert model.score_one(test[0]) > model.score_one({"a": 30.0, "b": 30.0, "c": 30.0})


def test_cluster_labels_survive_refits_and_the_end_of_the_warm_up():
    stream, _ = blobs(1600, seed=2)
    model = GaussianMixture(n_components=3, warm_up=800, seed=3)
    probes = stream[1000:1300]
    history = []
    for i, x in enumerate(stream[:1000]):
        model.learn_one(x)
        if i + 1 in (100, 200, 400, 799, 800, 1000):
            history.append([model.predict_one(p) for p in probes])
    assert not model.warming_up_
    for before, after in itertools.pairwise(history):
        agree = np.mean(np.array(before) == np.array(after))
        assert agree > 0.99, agree


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_warm_up_fits_keep_the_stream_warm_up_starts(adapter, monkeypatch):
    # OnlineGaussianMixture.fit() adds 2 n_init k-means starts; the adapters' warm-up and
    # provisional fits keep the stream warm-up's n_init starts seeded by init_params (6 more
    # k-means seeds made the clusterer 1.4-1.7x slower over 3,000 Shuttle records).
    from streamgmm import _warm_up

    seeded = []
    initial_resp = _warm_up._initial_resp

    def recorded(X, n_components, init_params, rng):
        seeded.append(init_params)
        return initial_resp(X, n_components, init_params, rng)

    monkeypatch.setattr(_warm_up, "_initial_resp", recorded)
    model = adapter(n_components=3, warm_up=200, n_init=3, seed=0)
    rng = np.random.default_rng(0)
    for a, b in rng.normal(size=(300, 2)).tolist():
        model.learn_one({"a": a, "b": b})
    assert not model.warming_up_
    assert seeded and set(seeded) == {"k-means++"}
    assert seeded.count("k-means++") >= 3  # the final warm-up fit's n_init starts
