"""refdiff bench's yardsticks (refdiff/bench.py): the direct closed form the oracle is timed against,
and the thread figures, which must leave the process's thread setting as it found it."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from refdiff import bench, runtime
from refdiff.schedule import Schedule

from strategies import EPS64, assert_bounded, mixtures, seeds

SCHED = Schedule.linear(1000)


@given(mixtures(), st.sampled_from([1, 2, 10, 250, 500, 999, 1000]), seeds)
def test_closed_form_eps_is_the_oracles_eps(p, t, seed):
    # Two factorisations of C_k (Cholesky here, the eigenvectors in the oracle) give the terms
    # C_k^-1 (x - sqrt(a) mu_k), each of size at most S_k = |x - m_k| / lambda_min(C_k), to 64 ulps
    # times cond(C_k) S_k (tests/test_oracle.py bounds a score so); and the log-densities, of size
    # at most L = max_k (|x - m_k|^2 / lambda_min + |log det C_k|) + D, to 64 ulps of L, which the
    # responsibilities carry as a relative error onto the terms. eps is sqrt(1 - a) times the sum.
    gm, a = p.gm, float(SCHED.alpha_bar[t])
    x = 6 * np.random.default_rng(seed).standard_normal((7, p.dim))
    kappa, lam_min = p.conditioning(a)
    dist = np.linalg.norm(x, axis=1)[:, None] + np.linalg.norm(p.noised(a)[0], axis=1)[None]  # (N, K)
    size = np.max(kappa * (1 + dist / lam_min), axis=1)
    logs = np.max(dist ** 2 / lam_min + np.abs(np.linalg.slogdet(p.noised(a)[1])[1]), axis=1) + p.dim
    tol = (64 * EPS64 * np.sqrt(1 - a) * size * (1 + logs))[:, None]
    assert_bounded(bench.closed_form_eps(gm, x, a), gm.eps(x, a), tol, f"closed form at t={t}")


def test_thread_figures_measure_both_settings_and_restore_the_setting():
    rng = np.random.default_rng(0)
    x0, y = rng.standard_normal((200, 2)), rng.integers(0, 3, 200)
    before = runtime.blas_threads()
    out = bench._threads(x0, y, SCHED, rng, {"batch": 16, "hidden": 8, "depth": 1, "dtype": "float32"}, steps=4,
                         n_predict=50)
    assert runtime.blas_threads() == before
    for n in (1, 2):
        for load in ("idle", "busy"):
            assert out[f"train_step_ms_threads{n}_{load}"] > 0 and out[f"predict_ms_threads{n}_{load}"] > 0
    assert out["threads"] == runtime.threads_from()
    n = min(out["threads"], 2)
    for work in ("train_step", "predict"):
        assert out[f"busy_over_idle_{work}"] == out[f"{work}_ms_threads{n}_busy"] / out[f"{work}_ms_threads{n}_idle"]


def test_median_times_calls_every_function_once_a_round_after_a_warm_up():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "ab"}
    out = bench.median_times(fns, 3)
    assert calls == list("ab") * 4 and set(out) == {"a", "b"} and all(v >= 0 for v in out.values())


def test_every_method_is_timed_at_a_step_that_calls_its_models(monkeypatch):
    # CFG-Zero*'s first step of a sampling call is its zero-init (G17z), which calls no model: a
    # bench that timed only first steps reported it 100 times faster than an unguided prediction.
    # Each timed call must reach the denoiser; CFG-like rules call it on 2N rows, once per call.
    from refdiff import nn

    rng = np.random.default_rng(0)
    config = nn.MLPConfig("denoiser", 2, 3, 8, 1, dtype="float32")
    den = nn.Denoiser(nn.init_params(config, rng), config, SCHED)
    clf_config = nn.MLPConfig("classifier", 2, 3, 8, 1, dtype="float32")
    clf = nn.Classifier(nn.init_params(clf_config, rng), clf_config, SCHED)
    rows, call = [], nn.Denoiser.__call__
    monkeypatch.setattr(nn.Denoiser, "__call__", lambda self, x, *a, **k: rows.append(len(x)) or call(self, x, *a, **k))
    monkeypatch.setattr(bench, "median_times", lambda fns, rounds: {name: (rows.clear(), fn(), sum(rows))[2] + 1.0
                                                                    for name, fn in fns.items()})
    out = bench._sampling_speed(den, clf, SCHED, 3, rng, n=20)  # "ms" = 1e3 (rows the denoiser saw + 1)
    assert out["sample_step_ms_unguided"] == 1e3 * (20 + 1)
    for name in ("cfg", "cfg_zero_star", "apg"):
        assert out[f"sample_step_ms_{name}"] == 1e3 * (40 + 1), (name, out)  # one call on 2N rows
