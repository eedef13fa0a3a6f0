"""Benchmark the online EM core against scikit-learn, side by side in one run.

    python scripts/bench_core.py [--n-train 200000] [--repeats 3]

Prints, on the same data (a known K=5, D=10 mixture):
- held-out mean log-likelihood and wall time of sklearn ``GaussianMixture(n_init=3).fit`` vs one
  online pass of ``OnlineGaussianMixture`` in mini-batches of 1000 (gap and speed ratio);
- batch-size invariance: held-out log-likelihood after one pass with B in {1, 10, 100, 1000};
- mini-batch throughput (K=5, D=10, B=1000), samples/s;
- per-sample cost of ``partial_fit`` on one row (public API, with validation) and of the
  one-row API ``learn_one`` / ``score_one`` that the River estimators use;
- memory over a 1M-record stream: the model state's size and the process's resident memory,
  sampled every 100k records (they must stay flat: the state is O(K D^2)).

BLAS is limited to one thread for both sides (threadpoolctl), so the figures are "one core".
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_info, threadpool_limits

from streamgmm import OnlineGaussianMixture
from streamgmm.datasets import KnownMixture


def online_pass(X, batch_size, **params):
    model = OnlineGaussianMixture(**params)
    start = time.perf_counter()
    if batch_size == 1:
        model.partial_fit(X[:1])
        for x in X[1:]:
            model.learn_one(x)
    else:
        for i in range(0, len(X), batch_size):
            model.partial_fit(X[i : i + batch_size])
    return model, time.perf_counter() - start


def resident_mib():
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def state_bytes(model):
    arrays, _ = model.get_state()
    return sum(a.nbytes for a in arrays.values())


def best_of(repeats, fn):
    return min(fn() for _ in range(repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=200_000)
    parser.add_argument("--n-test", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    truth = KnownMixture.random(5, 10, seed=1)
    X, _ = truth.sample(args.n_train, seed=2)
    X_test, _ = truth.sample(args.n_test, seed=3)
    params = dict(n_components=5, random_state=0)

    # Compile the kernels outside the timings.
    online_pass(X[:3000], 1, **params)

    with threadpool_limits(limits=1):
        blas = {i.get("internal_api") for i in threadpool_info()}
        print(f"BLAS {sorted(blas)} limited to 1 thread; K=5 D=10, n_train={len(X)}")
        print()

        t0 = time.perf_counter()
        sk = GaussianMixture(5, n_init=3, random_state=0).fit(X)
        t_sk = time.perf_counter() - t0
        online, t_on = online_pass(X, 1000, **params)
        ll_true = truth.log_density(X_test).mean()
        ll_sk, ll_on = sk.score(X_test), online.score(X_test)
        print("quality vs speed (held-out mean log-likelihood, nats/sample)")
        print(f"  true density                          {ll_true:10.4f}")
        print(f"  sklearn GaussianMixture(n_init=3).fit {ll_sk:10.4f}   {t_sk:7.2f} s")
        print(f"  streamgmm one online pass (B=1000)    {ll_on:10.4f}   {t_on:7.2f} s")
        print(
            f"  gap sklearn - online = {ll_sk - ll_on:.4f} nats/sample (target <= 0.01); "
            f"online pass {t_sk / t_on:.1f}x faster than sklearn's fit (target >= 10x)"
        )
        print()

        print("batch-size invariance (held-out mean log-likelihood after one pass)")
        lls = {}
        for b in (1, 10, 100, 1000):
            model, t = online_pass(X, b, **params)
            lls[b] = model.score(X_test)
            print(f"  B={b:5d}  {lls[b]:.6f}   {len(X) / t:12,.0f} samples/s")
        spread = max(lls.values()) - min(lls.values())
        print(f"  spread {spread:.2e} nats/sample (target <= 1e-3)")
        print()

        warm = OnlineGaussianMixture(**params).fit(X[:20_000])
        batches = [np.ascontiguousarray(X[i : i + 1000]) for i in range(20_000, len(X), 1000)]

        def batch_run():
            m = OnlineGaussianMixture.from_state(*warm.get_state())
            start = time.perf_counter()
            for b in batches:
                m.partial_fit(b)
            return time.perf_counter() - start

        t_batch = best_of(args.repeats, batch_run)
        n_batch = sum(len(b) for b in batches)
        print("mini-batch throughput, K=5 D=10 B=1000 (partial_fit, validation included)")
        print(f"  {n_batch / t_batch:12,.0f} samples/s (target >= 1,000,000)")
        print()

        rows = X[20_000:70_000]

        def per_sample(fn):
            def run():
                m = OnlineGaussianMixture.from_state(*warm.get_state())
                f = fn(m)
                start = time.perf_counter()
                for x in rows:
                    f(x)
                return (time.perf_counter() - start) / len(rows) * 1e6

            return run

        us_public = best_of(args.repeats, per_sample(lambda m: lambda x: m.partial_fit(x[None])))
        us_learn = best_of(args.repeats, per_sample(lambda m: m.learn_one))
        us_score = best_of(args.repeats, per_sample(lambda m: m.score_one))
        print("per-sample cost, K=5 D=10 (one row at a time)")
        print(f"  partial_fit(x[None])   {us_public:6.2f} us  (public API: input checks included)")
        print(f"  learn_one(x)           {us_learn:6.2f} us  (fast path; target well under 15 us)")
        print(f"  score_one(x)           {us_score:6.2f} us")
        print(f"  learn + score          {us_learn + us_score:6.2f} us")
        print()

        print("memory over a 1,000,000-record stream (K=5 D=10, mini-batches of 1000)")
        model = OnlineGaussianMixture.from_state(*warm.get_state())
        for chunk in range(10):
            stream, _ = truth.sample(100_000, seed=100 + chunk)
            for i in range(0, len(stream), 1000):
                model.partial_fit(stream[i : i + 1000])
            print(
                f"  {(chunk + 1) * 100_000:9,d} records streamed: state {state_bytes(model):6,d}"
                f" bytes, process RSS {resident_mib():7.1f} MiB"
            )


if __name__ == "__main__":
    main()
