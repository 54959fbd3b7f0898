"""The README runs as written: every fenced ```python block runs on its own, in an empty folder,
exits 0 and prints what its comments say.

"On its own" is checked as: a fresh namespace in one fresh interpreter, the library re-imported
for each block. The blocks run one after another in a single ``python -c`` process (run_alone,
DRIVER), each in its own empty folder and namespace, after refdiff and toy_data have been dropped
from ``sys.modules``, so that a block leaning on an earlier block's import or file fails. They
share only third-party modules (numpy, scipy, autograd), with matplotlib's figures closed and
numpy's global RNG reseeded between blocks: one interpreter, not one per block, because importing
those modules costs 1.3-1.7 s of CPU each time. A block that raises or exits non-zero fails its
own test only, with its traceback or exit code.

A comment ending in "prints VALUE" claims that the output holds VALUE as a line; the claims of a
block must appear in its output in their order. What a comment says in words ("rises with w",
"round-off") is checked by the block's entry in CHECKS. Every fence carries a language, so a
Python block cannot hide in an untagged one.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)
CLAIM = re.compile(r"#.*\bprints (\S+)\s*$")


def fenced_blocks(text):
    """[(language, code)] of every fenced block of a Markdown text, in order."""
    return FENCE.findall(text)


def python_blocks(text):
    return [code for language, code in fenced_blocks(text) if language == "python"]


def claims(code):
    """The values that comments ending in "prints VALUE" claim, in order."""
    return [m.group(1) for m in map(CLAIM.search, code.splitlines()) if m]


DRIVER = '''"""Run the blocks given on stdin as JSON, [[code, folder], ...], in order, in this interpreter;
print [[outcome, stdout], ...] as JSON, outcome 0, the SystemExit code or the traceback."""
import contextlib, io, json, os, sys, traceback

LIBRARY = ("refdiff", "toy_data")


def forget_library():
    """Drop refdiff, toy_data and their submodules from sys.modules, so that a block imports them afresh."""
    for name in [name for name in sys.modules if name.partition(".")[0] in LIBRARY]:
        del sys.modules[name]


def reset_shared_state():
    """Close the figures left open, and reseed numpy's global RNG from the OS as a new interpreter does."""
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
    if "numpy.random" in sys.modules:
        sys.modules["numpy.random"].seed()


def run_block(code, folder):
    """[outcome, stdout] of code run in folder, in a fresh namespace, with the library forgotten."""
    os.chdir(folder)
    forget_library()
    reset_shared_state()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "<README block>", "exec"), {"__name__": "__main__"})
        outcome = 0
    except SystemExit as stop:
        outcome = 0 if stop.code is None else stop.code
    except Exception:
        outcome = traceback.format_exc()
    return [outcome, printed.getvalue()]


print(json.dumps([run_block(code, folder) for code, folder in json.load(sys.stdin)]))
'''


def run_alone(codes, folders):
    """Run each code in its folder: a fresh namespace in one fresh interpreter, the library re-imported
    for each code (DRIVER, run by ``python -c`` with this checkout's refdiff first on the path and the
    suite's environment, hence its one BLAS thread). One interpreter for all, not one each, because
    importing numpy, scipy and autograd costs 1.3-1.7 s of CPU every time.

    Returns [(outcome, stdout lines)] in the order of ``codes``; outcome is 0, a SystemExit code or
    a traceback.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    blocks = json.dumps([[code, str(folder)] for code, folder in zip(codes, folders)])
    done = subprocess.run([sys.executable, "-c", DRIVER], input=blocks, cwd=folders[0], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
    return [(outcome, printed.splitlines()) for outcome, printed in json.loads(done.stdout)]


def in_order(wanted, lines):
    """Whether every string of ``wanted`` is a line of ``lines``, in that order."""
    rest = iter(lines)
    return all(any(line == value for line in rest) for value in wanted)


def numbers(line):
    return [float(v) for v in line.split()]


def check_oracle_samplers(lines, folder):
    assert lines[0].startswith("TwoSampleResult(") and "passed=True" in lines[0], lines[0]


def check_learned(lines, folder):
    excess, right = float(lines[0]), float(lines[1])
    assert 0 <= excess < 1, excess  # 300 small steps: above the floor, far below twice it
    assert 0.95 <= right <= 1, right  # "class 1 for all but a few"
    assert (folder / "three_gaussians.npz").is_file()


def check_guidance(lines, folder):
    table = [numbers(line) for line in lines[:3]]
    assert [row[0] for row in table] == [0.0, 1.0, 3.0]
    assert all(row[1] == row[2] for row in table), table  # CFG(w) = CG(1 + w) on exact models
    assert table[0][1] < table[1][1] < table[2][1], table  # fidelity rises with w
    assert table[0][3] > table[1][3] > table[2][3], table  # the spread falls
    assert table[0][1] < float(lines[3]) <= 1, lines[3]  # the mean-shift form at s = 3 guides too


def check_exact_clip(lines, folder):
    assert float(lines[0]) < 1e-9, lines[0]  # (G13) with the exact ratio is (G3): 50 steps of round-off


def check_learned_clip(lines, folder):
    table = [numbers(line) for line in lines[:3]]
    assert [row[0] for row in table] == [0.0, 1.0, 4.0]
    assert table[0][1] == table[0][2], table  # at s = 0 both are the unguided model
    for column in (1, 2):
        assert table[0][column] < table[1][column] < table[2][column], table  # both rise ...
    assert 0.2 < table[0][1] < 0.5 and table[2][1] > 0.9, table  # ... from about 1/3 toward 1


def check_latent(lines, folder):
    (w0, unguided), (w3, guided) = numbers(lines[0]), numbers(lines[1])
    assert (w0, w3) == (0.0, 3.0) and 0 <= unguided < guided <= 1, lines  # rises with w


def check_rules(lines, folder):
    rows = {line[:15].strip(): numbers(line[15:]) for line in lines[:9]}
    assert len(rows) == 9 and all(rows[name][0] > rows["unguided"][0] for name in rows if name != "unguided"), rows
    assert abs(rows["negative label"][1] / rows["unguided"][1] - 1) < 0.1, rows  # keeps the spread
    for name in ("CFG", "CFG-Zero*", "autoguidance"):  # shrink the classes, autoguidance most
        assert rows["autoguidance"][1] <= rows[name][1] < rows["unguided"][1], rows


def check_inverse(lines, folder):
    d = {line[:17].strip(): float(line[17:]) for line in lines[:3]}
    assert d["exact likelihood"] < 0.002 < d["reconstruction"] < d["DPS"], d  # at the floor (~0.002 at n = 2000); in between; biased


CHECKS = [check_oracle_samplers, check_learned, check_guidance, check_rules, check_inverse, check_exact_clip,
          check_learned_clip, check_latent]
BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_every_fence_has_a_language_and_every_python_block_a_check():
    untagged = [code.splitlines()[0] for language, code in fenced_blocks(README.read_text(encoding="utf-8"))
                if not language]
    assert untagged == [], f"fenced blocks without a language (python or sh): {untagged}"
    assert len(BLOCKS) == len(CHECKS), f"{len(BLOCKS)} python blocks, {len(CHECKS)} checks: give a new block its check"


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """[(outcome, stdout lines, folder)] of every python block of the README, each run in its own empty folder."""
    folders = [tmp_path_factory.mktemp(check.__name__[6:]) for check in CHECKS]
    return [(outcome, lines, folder) for (outcome, lines), folder in zip(run_alone(BLOCKS, folders), folders)]


@pytest.mark.parametrize("index", range(len(CHECKS)), ids=[check.__name__[6:] for check in CHECKS])
def test_python_block_runs_alone_and_prints_what_it_says(index, readme_runs):
    code = BLOCKS[index]
    outcome, lines, folder = readme_runs[index]
    assert outcome == 0, outcome if isinstance(outcome, str) else f"exit {outcome}"
    assert in_order(claims(code), lines), f"claimed {claims(code)}, printed {lines}"
    CHECKS[index](lines, folder)


def test_run_alone_gives_each_code_its_namespace_folder_library_and_outcome(tmp_path):
    codes = ["import numpy, refdiff.schedule\nnumpy.random.seed(0)\nopen('mine', 'w').close()\nx = 1\nprint('ok')",
             "import os\nprint(os.listdir('.'))\nprint(x)",
             "import numpy, refdiff\nprint(numpy.random.rand() == 0.5488135039273248)\nrefdiff.schedule",
             "import sys\nprint('bye')\nsys.exit(3)",
             "import sys\nsys.exit()"]
    folders = [tmp_path / str(i) for i in range(len(codes))]
    for folder in folders:
        folder.mkdir()
    first, second, third, fourth, fifth = run_alone(codes, folders)
    assert first == (0, ["ok"]) and (folders[0] / "mine").is_file(), first
    assert second[1] == ["[]"] and "NameError: name 'x' is not defined" in second[0], second  # its folder, its names
    assert third[1] == ["False"], third  # numpy's global RNG reseeded, as in a new interpreter
    assert "has no attribute 'schedule'" in str(third[0]), third  # refdiff re-imported, without the first code's submodule
    assert fourth == (3, ["bye"]) and fifth == (0, []), (fourth, fifth)


def test_claims_and_fences_are_read_as_meant():
    text = "a\n```python\nprint(2.0)  # exact: prints 2.0\nx = 1  # no claim\n```\n```sh\nrefdiff demo\n```\n"
    assert fenced_blocks(text) == [("python", "print(2.0)  # exact: prints 2.0\nx = 1  # no claim\n"),
                                   ("sh", "refdiff demo\n")]
    assert claims(python_blocks(text)[0]) == ["2.0"]
    assert in_order(["1", "3"], ["1", "2", "3"]) and not in_order(["3", "1"], ["1", "2", "3"])
