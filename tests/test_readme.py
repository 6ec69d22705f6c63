"""Every ```python block of README.md runs as written (each in a fresh namespace, in a
temporary folder). A block that needs a GPU says so in its first line, ``# needs a GPU``,
and is skipped without one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
GPU_MARKER = "# needs a GPU"


def _blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    blocks = re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [(text[: match.start()].count("\n") + 1, match.group(1)) for match in blocks]


def test_the_readme_has_python_blocks():
    assert len(_blocks()) >= 5


@pytest.mark.parametrize(
    ("line", "code"), _blocks(), ids=[f"README.md:{line}" for line, _ in _blocks()]
)
def test_readme_block_runs(line, code, tmp_path, monkeypatch):
    import torch

    import gswfast as gsw

    if code.lstrip().startswith(GPU_MARKER) and not (
        torch.cuda.is_available() and gsw.cuda_available()
    ):
        pytest.skip("the block needs a GPU")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": f"readme_{line}"})
