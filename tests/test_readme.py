"""The README's Python examples run as written, in order, and print what their comments say."""
import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the second example writes a checkpoint
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 2
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("TwoSampleResult(") and "passed=True" in lines[0]
    assert float(lines[1]) == 2.0
    assert 0 <= float(lines[2]) < 1.0  # 300 small steps: well above the floor, far below 100%
    assert namespace["samples"].shape == (2000, 2) and (tmp_path / "three_gaussians.npz").exists()
