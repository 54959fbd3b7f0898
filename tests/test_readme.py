"""The README's Python examples run as written, in order, and print what their comments say."""
import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the second example writes a checkpoint
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 4
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("TwoSampleResult(") and "passed=True" in lines[0]
    assert float(lines[1]) == 2.0
    assert 0 <= float(lines[2]) < 1.0  # 300 small steps: well above the floor, far below 100%
    assert namespace["samples"].shape == (2000, 2) and (tmp_path / "three_gaussians.npz").exists()
    # The guidance example: per w, CFG's and classifier guidance's fidelity (equal on exact models),
    # rising with w, and the mean class spread, falling (numbers: docs/guidance.md).
    table = [[float(v) for v in line.split()] for line in lines[3:6]]
    assert [row[0] for row in table] == [0.0, 1.0, 3.0]
    assert all(row[1] == row[2] for row in table)
    assert table[0][1] < table[1][1] < table[2][1] and table[0][3] > table[1][3] > table[2][3]
    assert namespace["x"].shape == (2000, 2)
    # The CLIP example: guidance by the exact log-likelihood ratio is classifier guidance (G13);
    # after 50 DDIM steps from |x_T| ~ 3 the two paths differ by float64 round-off only.
    assert float(lines[6]) < 1e-9
