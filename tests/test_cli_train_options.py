"""refdiff train --prediction, --weighting, --schedule, --zero-snr and --scheduler-config: what the
checkpoints record, and one line naming the flag for each mistake (docs/schedule.md (S7)-(S9),
docs/process.md (C8))."""
import json

import numpy as np
import pytest

from refdiff import checkpoint
from refdiff.cli import main
from refdiff.schedule import Schedule

FAST = ["--denoiser-steps", "20", "--classifier-steps", "5", "-q"]


def test_train_records_the_prediction_and_the_schedule(tmp_path, capsys):
    assert main(["train", *FAST, "--prediction", "v", "--weighting", "min_snr", "--schedule", "scaled_linear",
                 "--zero-snr", "--out", str(tmp_path / "m")]) == 0
    den, clf = (checkpoint.load(tmp_path / "m" / f"{k}.npz") for k in ("denoiser", "classifier"))
    want = Schedule.scaled_linear(1000).rescale_zero_terminal_snr()
    assert den.config.prediction == "v" and clf.config.prediction == "eps"
    assert np.array_equal(den.sched.betas, want.betas) and np.array_equal(clf.sched.betas, want.betas)
    # the zero-SNR eps the v model implies samples on a leading grid (which starts below t = T)
    assert main(["sample", "--model", str(tmp_path / "m"), "-q", "-n", "50", "--out", str(tmp_path / "s.npz")]) == 0


def test_train_takes_the_schedule_of_a_diffusers_config(tmp_path, capsys):
    config = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 400, "prediction_type": "epsilon"}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    assert main(["train", *FAST, "--scheduler-config", str(tmp_path / "scheduler_config.json"),
                 "--out", str(tmp_path / "m")]) == 0
    assert np.array_equal(checkpoint.load(tmp_path / "m" / "denoiser.npz").sched.betas, Schedule.cosine(400).betas)


@pytest.mark.parametrize("argv, flag", [
    (["--scheduler-config", "CONFIG", "--zero-snr"], "--scheduler-config"),
    (["--scheduler-config", "CONFIG", "--schedule", "cosine"], "--scheduler-config"),
    (["--scheduler-config", "MISSING"], "--scheduler-config"),
    (["--scheduler-config", "BAD"], "beta_schedule"),
    (["--prediction", "noise"], "--prediction"),
    (["--schedule", "sigmoid"], "--schedule")])
def test_train_refuses_bad_schedule_and_prediction_options_in_one_line(argv, flag, tmp_path, capsys):
    (tmp_path / "ok.json").write_text("{}")
    (tmp_path / "bad.json").write_text(json.dumps({"beta_schedule": "sigmoid"}))
    paths = {"CONFIG": tmp_path / "ok.json", "MISSING": tmp_path / "missing.json", "BAD": tmp_path / "bad.json"}
    argv = [str(paths.get(a, a)) for a in argv]
    status = main(["train", *FAST, *argv, "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not (tmp_path / "m").exists()
