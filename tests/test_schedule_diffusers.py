"""Stable Diffusion's schedules and diffusers' configs: scaled_linear (S7), the rescaling to zero
terminal SNR (S8), from_diffusers_config / to_diffusers_config (S9), and what refuses to run where
alpha_bar_T = 0 ((C1) and the samplers' grids).

The formulas are written here from the papers and diffusers' documentation: Stable Diffusion's
betas are linear in their square roots between 0.00085 and 0.012; Lin et al. (2024, Alg. 1) shift
sqrt(alpha_bar) by its last value and rescale it to keep its first. Lin et al. (2024, Table 1)
publish sqrt(alpha_bar_T) = 0.068265 and SNR_T = 0.004682 for Stable Diffusion's schedule.
"""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st

import toy_data
from refdiff.metrics import two_sample_test
from refdiff import process
from refdiff.process import eps_to_v, eps_to_x0, p_mean, tweedie_x0
from refdiff.samplers import SAMPLERS, ddim
from refdiff.schedule import DIFFUSERS_SCHEDULE_KEYS, Schedule

# The scheduler_config.json values of two public models (only the types of the values matter to JSON).
SD15 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "trained_betas": None, "clip_sample": False}  # runwayml/stable-diffusion-v1-5
SD21_V = {"_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
          "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction",
          "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}  # stabilityai/stable-diffusion-2-1
betas = st.floats(1e-5, 0.05)


@given(st.integers(2, 2000), betas, betas)
def test_S7_scaled_linear_is_linear_in_the_square_roots(T, start, end):
    s = Schedule.scaled_linear(T, start, end)
    t = np.arange(1, T + 1)
    want = (np.sqrt(start) + (np.sqrt(end) - np.sqrt(start)) * (t - 1) / (T - 1)) ** 2
    np.testing.assert_allclose(s.betas[1:], want, rtol=1e-13)
    assert s.betas[1] == pytest.approx(start, rel=1e-15) and s.betas[-1] == pytest.approx(end, rel=1e-15)


def test_S7_stable_diffusions_terminal_snr_is_lin_et_als():
    s = Schedule.scaled_linear(1000)
    a_T = s.alpha_bar[-1]
    assert round(np.sqrt(a_T), 6) == 0.068265 and round(a_T / (1 - a_T), 6) == 0.004682
    assert Schedule.scaled_linear(1).betas.tolist() == [0.0, 0.00085]  # T = 1: the start alone


@given(st.sampled_from(["linear", "scaled_linear", "cosine"]), st.integers(2, 1500))
def test_S8_zero_terminal_snr_shifts_and_rescales_the_square_roots(kind, T):
    s = {"linear": lambda: Schedule.linear(max(T, 20)), "scaled_linear": lambda: Schedule.scaled_linear(T),
         "cosine": lambda: Schedule.cosine(T)}[kind]()
    z = s.rescale_zero_terminal_snr()
    r, rz = np.sqrt(s.alpha_bar[1:]), np.sqrt(z.alpha_bar[1:])
    assert z.alpha_bar[-1] == 0.0 and z.betas[-1] == 1.0 and z.T == s.T
    # (S8): rz = (r - r_T) r_1 / (r_1 - r_T), so rz_1 = r_1 and rz is an increasing affine map of r
    np.testing.assert_allclose(rz, (r - r[-1]) * r[0] / (r[0] - r[-1]), rtol=1e-12, atol=1e-15)
    assert rz[0] == pytest.approx(r[0], rel=1e-14) and np.all(np.diff(z.alpha_bar) < 0)


def test_S8_refuses_T_1():
    with pytest.raises(ValueError, match=r"T >= 2"):
        Schedule.linear(1000).respace([5]).rescale_zero_terminal_snr()


@pytest.mark.parametrize("config", [SD15, SD21_V], ids=["sd15", "sd21-v"])
def test_S9_public_configs_give_stable_diffusions_schedule(config, tmp_path):
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(config))
    for source in (config, path, str(path)):
        s = Schedule.from_diffusers_config(source)
        np.testing.assert_array_equal(s.betas, Schedule.scaled_linear(1000, 0.00085, 0.012).betas)


@given(st.integers(1, 3000), betas, betas)
def test_S9_diffusers_linear_has_no_1000_over_T_rescaling(T, start, end):
    s = Schedule.from_diffusers_config({"num_train_timesteps": T, "beta_start": start, "beta_end": end})
    np.testing.assert_allclose(s.betas[1:], start + (end - start) * np.arange(T) / max(T - 1, 1), rtol=1e-12, atol=1e-18)
    if T == 1000:  # refdiff's linear rescales by 1000 / T: the same schedule only at T = 1000
        np.testing.assert_array_equal(s.betas, Schedule.linear(1000, start, end).betas)


def test_S9_cosine_trained_betas_first_then_zero_snr_and_defaults():
    assert np.array_equal(Schedule.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 300}).betas,
                          Schedule.cosine(300).betas)
    assert np.array_equal(Schedule.from_diffusers_config({}).betas, Schedule.linear(1000).betas)  # DDPMScheduler's defaults
    trained = np.linspace(0.001, 0.2, 50)
    got = Schedule.from_diffusers_config({"num_train_timesteps": 50, "trained_betas": trained.tolist(),
                                          "beta_schedule": "no such schedule", "rescale_betas_zero_snr": True})
    np.testing.assert_array_equal(got.betas, Schedule.from_betas(trained).rescale_zero_terminal_snr().betas)
    ignored = {**SD15, "timestep_spacing": "trailing", "prediction_type": "sample", "anything": [1, 2]}
    assert np.array_equal(Schedule.from_diffusers_config(ignored).betas, Schedule.from_diffusers_config(SD15).betas)
    assert set(DIFFUSERS_SCHEDULE_KEYS) >= {k for k in SD15 if not k.startswith("_")} - {
        "set_alpha_to_one", "skip_prk_steps", "steps_offset", "clip_sample"}


@pytest.mark.parametrize("sched", [Schedule.linear(1000), Schedule.cosine(37), Schedule.scaled_linear(500).rescale_zero_terminal_snr(),
                                   Schedule.linear(1000).respace(np.arange(1, 1001, 7))], ids=["linear", "cosine", "zero-snr", "respaced"])
def test_S9_to_and_from_diffusers_config_round_trip_bit_for_bit(sched):
    config = sched.to_diffusers_config()
    assert np.array_equal(Schedule.from_diffusers_config(config).betas, sched.betas)
    assert np.array_equal(Schedule.from_diffusers_config(json.loads(json.dumps(config))).betas, sched.betas)


@pytest.mark.parametrize("config, name", [
    ({"beta_schedule": "sigmoid"}, "beta_schedule"), ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}, "trained_betas"), ({"trained_betas": "0.1"}, "trained_betas"),
    ({"beta_start": -1.0}, "beta_start"), ({"beta_end": "0.02"}, "beta_end"), ({"rescale_betas_zero_snr": "yes"}, "rescale_betas_zero_snr"),
    ([("beta_start", 0.1)], "config")])
def test_S9_refuses_bad_configs_by_name(config, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Schedule.from_diffusers_config(config)


def test_S9_refuses_unreadable_files_by_name(tmp_path):
    for text, label in (("{not json", "bad.json"), ("[1, 2]", "list.json")):
        (tmp_path / label).write_text(text)
        with pytest.raises(ValueError, match=rf"{label}|JSON object"):
            Schedule.from_diffusers_config(tmp_path / label)
    with pytest.raises(ValueError, match=r"missing\.json"):
        Schedule.from_diffusers_config(str(tmp_path / "missing.json"))


# ---- alpha_bar_T = 0: refused where undefined, fine elsewhere --------------------------------------
ZERO = Schedule.scaled_linear(1000).rescale_zero_terminal_snr()


def test_C1_conversions_refuse_t_with_alpha_bar_0_by_name():
    x, t = np.ones((3, 2)), np.array([5, 1000, 7])
    for convert in (lambda: eps_to_x0(ZERO, x, t, x), lambda: eps_to_v(ZERO, x, t, x), lambda: tweedie_x0(ZERO, x, t, x),
                    lambda: p_mean(ZERO, x, t, x)):
        with pytest.raises(ValueError, match=r"\bt = 1000\b.*alpha(_bar|_t) = 0"):
            convert()
    assert np.all(np.isfinite(eps_to_x0(ZERO, x, np.array([5, 999, 7]), x)))  # alpha_bar_999 = 2e-7 > 0


@pytest.mark.parametrize("name", SAMPLERS)
def test_samplers_refuse_a_grid_starting_at_alpha_bar_0_and_run_below_it(name):
    model = toy_data.mixture("three_gaussians").eps_model(ZERO)
    x_T = np.random.default_rng(0).standard_normal((4, 2))
    run = lambda steps: SAMPLERS[name][1](lambda x, t: model(x, t), ZERO, x_T, steps, np.random.default_rng(1), None)
    for steps in ([ZERO.timesteps(10, "trailing")] + ([None] if name == "ddpm" else [])):
        with pytest.raises(ValueError, match=r"\bsteps\b.*t = 1000.*alpha_bar = 0"):
            run(steps)
    assert np.all(np.isfinite(run(ZERO.timesteps(10, "leading"))))


def test_ddim_on_zero_snr_without_t_T_samples_the_data():
    # DDIM-50 (leading: t = 981 down to 1; alpha_bar_981 = 7.7e-5, so x_T ~ N(0, I) is its law to that
    # much) with the oracle of the zero-SNR schedule passes the two-sample test against 2000 true points
    # (energy distance, permutation threshold at alpha = 0.01)
    mix, rng = toy_data.mixture("three_gaussians"), np.random.default_rng(3)
    model = mix.eps_model(ZERO)
    x = ddim(lambda x, t: model(x, t), ZERO, rng.standard_normal((2000, 2)), 50)
    assert two_sample_test(x, mix.sample(2000, rng)[0], rng).passed


def test_ddim_from_t_T_with_a_v_models_x0_samples_the_data():
    # Lin et al. (2024): zero terminal SNR, v-prediction, trailing spacing. The oracle's v model gives
    # x0 at t = T (alpha_bar = 0) by the rotation x0 = sqrt(a) x - sqrt(1 - a) v = -v: the data mean
    # E[x0], whatever x_T is; DDIM-50 from t = T then passes the two-sample test against 2000 true
    # points (energy distance, permutation threshold at alpha = 0.01); x0_fn is asked at every step.
    mix, rng = toy_data.mixture("three_gaussians"), np.random.default_rng(4)
    eps_model, v_model = mix.eps_model(ZERO), mix.prediction_model(ZERO, "v")
    asked = []

    def x0_fn(x, t):
        x0 = process.prediction_to_x0(ZERO, x, t, v_model(x, t), "v")
        asked.append((int(t[0]), x0))
        return x0
    grid = ZERO.timesteps(50, "trailing")
    assert grid[0] == 1000 and ZERO.alpha_bar[1000] == 0
    x = ddim(lambda x, t: eps_model(x, t), ZERO, rng.standard_normal((2000, 2)), grid, x0_fn=x0_fn)
    data_mean = mix.weights @ mix.means
    assert [t for t, _ in asked] == list(grid)
    np.testing.assert_allclose(asked[0][1], np.broadcast_to(data_mean, (2000, 2)), rtol=0, atol=1e-12)
    assert two_sample_test(x, mix.sample(2000, rng)[0], rng).passed
    with pytest.raises(ValueError, match=r"\bsteps\b.*x0_fn"):
        ddim(lambda x, t: eps_model(x, t), ZERO, x[:3], grid)
