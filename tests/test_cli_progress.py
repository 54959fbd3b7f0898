"""Long commands print one progress line on stderr (train.Progress: stage, step/total, rate, ETA),
which ``-q`` silences; stdout keeps only the results.

stderr is replaced by a stream that says it is a terminal, and Progress.TTY_SECONDS is set to 0
so that every step is written whatever the machine's speed: the last rewrite of the line is then
the final state, which the tests read. The replacement is made in the test's body: pytest's capsys
takes over sys.stderr when the test starts, after its fixtures have run. The demo's figures,
which print no progress, are not drawn here (tests/test_cli.py and tests/test_figures.py draw them).
"""
import io
import re
import sys

import pytest

from refdiff import bench, demo, train
from refdiff.cli import main


class Terminal(io.StringIO):
    def isatty(self):
        return True


def as_terminal(monkeypatch):
    """stderr as a terminal, every progress step written; returns the stream."""
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(train.Progress, "TTY_SECONDS", 0.0)
    return err


def final_states(text):
    """The last state of each progress line written to a terminal: the text before each newline
    after its last carriage return, stripped."""
    return [line.split("\r")[-1].strip() for line in text.split("\n") if "\r" in line]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A folder written by refdiff train with tiny budgets (quietly)."""
    folder = tmp_path_factory.mktemp("model")
    assert main(["train", "--out", str(folder), "--denoiser-steps", "3", "--classifier-steps", "2", "-q"]) == 0
    return folder


RUNS = {
    "sample": (["sample", "-n", "20", "--steps", "4", "--out", "{tmp}/s.npz"], [r"sample ddim: 4/4 steps"]),
    "sample ddpm": (["sample", "--sampler", "ddpm", "-n", "20", "--steps", "3", "--out", "{tmp}/s.npz"],
                    [r"sample ddpm: 3/3 steps"]),
    "sample a model": (["sample", "--model", "{model}", "--guidance", "cfg", "--scale", "1", "-n", "20", "--steps",
                        "2", "--out", "{tmp}/s.npz"], [r"sample ddim: 2/2 steps"]),
    "verify": (["verify", "--only", "G5", "C3"], [r"verify identities: 2/2 checks  G5"]),
    "demo": (["demo", "--out", "{tmp}/d", "--denoiser-steps", "3", "--classifier-steps", "2", "--n-per-label", "4"],
             [r"train denoiser: 3/3 steps", r"train classifier: 2/2 steps", r"sample guidance sweep: 500/500 steps"]),
    "train": (["train", "--out", "{tmp}/m", "--denoiser-steps", "3", "--classifier-steps", "2"],
              [r"train denoiser: 3/3 steps  loss \d", r"train classifier: 2/2 steps  loss \d"]),
}


@pytest.mark.parametrize("name", RUNS)
def test_a_long_command_prints_one_progress_line_per_stage_and_q_silences_it(name, tmp_path, model_dir, capsys,
                                                                             monkeypatch):
    argv = [a.format(tmp=tmp_path, model=model_dir) for a in RUNS[name][0]]
    terminal = as_terminal(monkeypatch)
    monkeypatch.setattr(demo, "_figures", lambda *args: None)  # 6 of the demo's 7 s; no progress line
    assert main(argv) == 0
    states = final_states(terminal.getvalue())
    assert len(states) == len(RUNS[name][1]), (states, terminal.getvalue())
    for state, pattern in zip(states, RUNS[name][1]):
        # the stage and its steps, then the rate and the time it took
        assert re.match(pattern, state) and re.search(r"  \S+ \w+/s  in \d+s$", state), (state, pattern)
    assert "\r" not in capsys.readouterr().out  # results on stdout, progress on stderr only
    terminal.seek(0), terminal.truncate()
    assert main(argv + ["-q"]) == 0 and terminal.getvalue() == "", terminal.getvalue()


@pytest.mark.parametrize("flags, verbose", [([], True), (["-q"], False)])
@pytest.mark.parametrize("images", [False, True])
def test_bench_trains_with_a_progress_line_unless_quiet(flags, verbose, images, monkeypatch, capsys):
    seen = {}
    fake = lambda *args, **kwargs: seen.update(kwargs) or {"figure": 1.0}
    monkeypatch.setattr(bench, "run_images" if images else "run", fake)
    assert main(["bench", *(["--images"] if images else []), *flags]) == 0
    assert seen == {"verbose": verbose}, seen
