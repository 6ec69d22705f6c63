"""Every ```python block of README.md and of the user guide (docs/guide/*.md) runs as
written (each in a fresh namespace, in a temporary folder). A block that needs a GPU says
so in its first line, ``# needs a GPU``, and is skipped without one. The README stays short
enough to read in one go: the guide holds the rest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide"
PAGES = [README, *sorted(GUIDE.glob("*.md"))]
GPU_MARKER = "# needs a GPU"
README_MAX_LINES = 300


def _blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text()
    blocks = re.finditer(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    return [(text[: match.start()].count("\n") + 1, match.group(1)) for match in blocks]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


BLOCKS = [(_name(page), line, code) for page in PAGES for line, code in _blocks(page)]


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail into "
        "a page of docs/guide/ and link it"
    )


def test_the_readme_and_the_guide_have_python_blocks():
    assert len(_blocks(README)) >= 2
    assert len(list(GUIDE.glob("*.md"))) >= 10
    assert len(BLOCKS) - len(_blocks(README)) >= 5


@pytest.mark.parametrize(
    ("page", "line", "code"), BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS]
)
def test_block_runs(page, line, code, tmp_path, monkeypatch):
    import torch

    import gswfast as gsw

    if code.lstrip().startswith(GPU_MARKER) and not (
        torch.cuda.is_available() and gsw.cuda_available()
    ):
        pytest.skip("the block needs a GPU")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": f"doc_block_{line}"})
