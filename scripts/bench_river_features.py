"""River adapters on streams whose feature set is not fixed, and the clusterer's per-sample path.

1. **One-off keys.**  Two N(0, 1) features ``a`` and ``b``; every 5th record also carries a key
   seen in no other record (``tag_<i>``).  For the clusterer and the detector, with the default
   warm-up and with ``warm_up=500``: whether the warm-up has ended after the stream, how many
   features the schema holds, the pickled size of the estimator halfway and at the end (flat =
   bounded memory), and the throughput of the prequential loop (infer, then learn) over the
   second half of the stream (after any warm-up).  The same stream without the tags is the
   reference.
2. **Clusterer on Shuttle.**  ``predict_one`` + ``learn_one`` over River's bundled Shuttle
   (49,097 records, 9 features), warm-up included.

Each timed loop runs ``--repeat`` times and the best time is kept.  Times are the process's CPU
time (``time.process_time``): on a shared machine wall-clock time measures the neighbours.

    python scripts/bench_river_features.py [--repeat 3] [--n 20000]
"""

from __future__ import annotations

import argparse
import pickle
import time

import numpy as np
from river import datasets

from streamgmm.river import GaussianMixture, GaussianMixtureDetector


def one_off_stream(n: int, tags: bool, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    stream = []
    for i, (a, b) in enumerate(rng.normal(size=(n, 2)).tolist()):
        x = {"a": a, "b": b}
        if tags and i % 5 == 0:
            x[f"tag_{i}"] = 1.0
        stream.append(x)
    return stream


def infer_method(model):
    return model.predict_one if isinstance(model, GaussianMixture) else model.score_one


def one_off_row(cls, warm_up, stream, repeat):
    half = len(stream) // 2
    best = np.inf
    for _ in range(repeat):
        model = cls(n_components=2, warm_up=warm_up, seed=0)
        for x in stream[:half]:
            model.learn_one(x)
        size_half = len(pickle.dumps(model))
        infer, learn = infer_method(model), model.learn_one
        t0 = time.process_time()
        for x in stream[half:]:
            infer(x)
            learn(x)
        best = min(best, time.process_time() - t0)
    size_end = len(pickle.dumps(model))
    return (
        model.warming_up_,
        len(model.feature_names_in_),
        size_half,
        size_end,
        (len(stream) - half) / best,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()

    # Compile the numba kernels outside the timed loops.
    for cls in (GaussianMixture, GaussianMixtureDetector):
        warm = cls(warm_up=50)
        for x, _ in datasets.Shuttle().take(200):
            warm.learn_one(x)
            infer_method(warm)(x)

    print(f"\nOne-off keys: {args.n:,} records, features a, b; every 5th record adds tag_<i>")
    header = (
        f"{'estimator':<26}{'warm_up':>8}{'tags':>6}{'warming':>9}{'features':>10}"
        f"{'KiB half':>10}{'KiB end':>10}{'records/s':>12}"
    )
    print(header)
    for tags in (False, True):
        stream = one_off_stream(args.n, tags)
        for cls in (GaussianMixture, GaussianMixtureDetector):
            for warm_up in (None, 500):
                warming, n_features, half, end, rate = one_off_row(
                    cls, warm_up, stream, args.repeat
                )
                print(
                    f"{cls.__name__:<26}{warm_up!s:>8}{tags!s:>6}{warming!s:>9}{n_features:>10}"
                    f"{half / 1024:>10.0f}{end / 1024:>10.0f}{rate:>12,.0f}"
                )

    shuttle = [x for x, _ in datasets.Shuttle()]
    best = np.inf
    for _ in range(args.repeat):
        model = GaussianMixture(n_components=3, seed=0)
        predict, learn = model.predict_one, model.learn_one
        t0 = time.process_time()
        for x in shuttle:
            predict(x)
            learn(x)
        best = min(best, time.process_time() - t0)
    print("\nGaussianMixture(n_components=3) on Shuttle, predict_one + learn_one, warm-up included")
    print(f"{len(shuttle):,} records: {len(shuttle) / best:,.0f} records/s")


if __name__ == "__main__":
    main()
