"""benchmarks/quality_report.py --quick: the evidence table's shape, and every value finite."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_report.py"


def _report():
    spec = importlib.util.spec_from_file_location("quality_report", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_report"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_report_has_every_column_and_finite_values(tmp_path):
    pytest.importorskip("lime")
    report = _report()
    out = tmp_path / "report.md"
    table = report.main(["--quick", "--sections", "shapes", "--out", str(out)])
    written = out.read_text()
    # the file: a title naming the command, the date and the machine, then the table printed
    assert written.startswith("# The evidence table\n\n`")
    assert "python benchmarks/quality_report.py --quick --sections shapes --out " in written
    assert written.endswith("\n\n" + table)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert tuple(header) == report.COLUMNS
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert names == [m.name for m in report.METHODS]
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        assert len(cells) == len(report.COLUMNS) - 1
        for cell in cells:
            if cell != "—":
                assert math.isfinite(float(cell.split(" ")[0])), row
    lime_row = rows[1 + names.index("lime package")]
    assert "| 1.000 | 1.00 | 1.00 |" in lime_row


def test_quick_transformer_section_marks_what_does_not_apply():
    # The ViT (random weights; the Swin section is built the same way): every method that
    # applies gives finite numbers, the lime package agrees with itself, and guided
    # backprop (no ReLU) is a row of dashes, not an error.
    pytest.importorskip("lime")
    report = _report()
    table = report.main(["--quick", "--sections", "vit"])
    titles = [line for line in table.splitlines() if line.startswith("**")]
    assert [t.split("**")[1] for t in titles] == ["vit"]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[0] == "guided_backprop":
            assert set(cells[1:]) == {"—"}, row
        elif cells[0] != "method":
            assert math.isfinite(float(cells[-1])), row
    assert sum(row.startswith("| lime package | 1.000 |") for row in rows) == 1


def _detection_report():
    sys.path.insert(0, str(SCRIPT.parent))  # it reads quality_report's helpers
    try:
        spec = importlib.util.spec_from_file_location(
            "detection_report", SCRIPT.parent / "detection_report.py"
        )
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_quick_detection_report_has_every_method_and_finite_values(tmp_path):
    report = _detection_report()
    out = tmp_path / "report.md"
    table = report.main(["--quick", "--out", str(out)])
    written = out.read_text()
    assert written.startswith("# The detector's evidence table\n\n`")
    assert written.endswith("\n\n" + table)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert tuple(cell.strip() for cell in rows[0].strip("|").split("|")) == report.COLUMNS
    assert [row.split("|")[1].strip() for row in rows[1:]] == [name for name, _ in report.METHODS]
    for row in rows[1:]:
        values = [float(cell) for cell in row.strip("|").split("|")[1:]]
        assert all(math.isfinite(v) for v in values)
        assert 0 <= values[0] <= 1  # pointing game
