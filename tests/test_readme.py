"""The README runs as written: every fenced ```python block runs on its own, in a fresh interpreter
in an empty folder, exits 0 and prints what its comments say.

A comment ending in "prints VALUE" claims that the output holds VALUE as a line; the claims of a
block must appear in its output in their order. What a comment says in words ("rises with w",
"round-off") is checked by the block's entry in CHECKS. Every fence carries a language, so a
Python block cannot hide in an untagged one.
"""
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


def run_alone(code, folder):
    """Run code with ``python -c`` in ``folder`` (this checkout's refdiff first on the path; the
    suite's environment, hence its one BLAS thread); its stdout lines, after asserting exit 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stderr}"
    return done.stdout.splitlines()


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


@pytest.mark.parametrize("index", range(len(CHECKS)), ids=[check.__name__[6:] for check in CHECKS])
def test_python_block_runs_alone_and_prints_what_it_says(index, tmp_path):
    code = BLOCKS[index]
    lines = run_alone(code, tmp_path)
    assert in_order(claims(code), lines), f"claimed {claims(code)}, printed {lines}"
    CHECKS[index](lines, tmp_path)


def test_claims_and_fences_are_read_as_meant():
    text = "a\n```python\nprint(2.0)  # exact: prints 2.0\nx = 1  # no claim\n```\n```sh\nrefdiff demo\n```\n"
    assert fenced_blocks(text) == [("python", "print(2.0)  # exact: prints 2.0\nx = 1  # no claim\n"),
                                   ("sh", "refdiff demo\n")]
    assert claims(python_blocks(text)[0]) == ["2.0"]
    assert in_order(["1", "3"], ["1", "2", "3"]) and not in_order(["3", "1"], ["1", "2", "3"])
