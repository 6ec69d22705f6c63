"""explain-dataset, launched for real: one process, and two with torchrun (gloo, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gswfast.dataset import explain_dataset, list_items

pytest.importorskip("av")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from gswfast import viz
    from gswfast.demo import action_clips, shape_images
    from gswfast.video import write_mp4

    folder = tmp_path_factory.mktemp("dataset")
    images = shape_images(12, generator=torch.Generator().manual_seed(1)).images
    for i, image in enumerate(images):
        viz.save_png((image * 255).to(torch.uint8), folder / f"shape{i:02d}.png")
    clip = action_clips(1, frames=40, generator=torch.Generator().manual_seed(2)).images[0]
    write_mp4((clip * 255).to(torch.uint8), folder / "clip.mp4", fps=8)
    (folder / "corrupt.png").write_bytes(b"junk")
    return folder


def _run(argv, env_threads=True, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1") if env_threads else None
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, **kwargs)


def _outputs(out: Path) -> dict[str, dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {row["item"]: row for row in manifest["items"]}


def test_items_are_listed_deterministically(dataset):
    items = list_items(dataset, frames=16, stride=8)
    assert [i.key for i in items] == [i.key for i in list_items(dataset, frames=16, stride=8)]
    windows = [i.start for i in items if i.is_video]
    assert windows == [0, 8, 16, 24]
    assert len(items) == 12 + 1 + 4
    tail = [i.start for i in list_items(dataset, frames=16) if i.is_video]
    assert tail == [0, 16, 24]  # 40 frames: the last window is aligned to the end


@pytest.mark.paths
def test_two_processes_equal_one(dataset, tmp_path):
    common = [
        "explain-dataset",
        str(dataset),
        "--model",
        "demo:shapes",
        "--method",
        "gradient",
        "--quiet",
        "--batch-size",
        "3",
    ]
    single = _run([sys.executable, "-m", "gswfast", *common, "--out", str(tmp_path / "one")])
    double = _run([*TORCHRUN, "-m", "gswfast", *common, "--out", str(tmp_path / "two")])
    # exit 0: some items failed (the corrupt image, the video windows given to an image
    # model), each recorded and named in the summary; torchrun reports no crashed worker
    assert single.returncode == 0, single.stderr[-2000:]
    assert double.returncode == 0, double.stderr[-2000:]
    assert "ChildFailedError" not in double.stderr
    assert "4 items failed: their reasons are in" in single.stdout + single.stderr
    one, two = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert list(one) == list(two)
    assert len(two) == 16
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["totals"]["processes"] == 2
    for key, row in one.items():
        assert row["status"] == two[key]["status"]
        if row["status"] == "done":
            a, b = np.load(row["output"]), np.load(two[key]["output"])
            assert np.array_equal(a["labels"], b["labels"])
            assert int(a["target"]) == int(b["target"])
            np.testing.assert_allclose(
                a["segment_scores"], b["segment_scores"], rtol=1e-4, atol=1e-6
            )
    assert two["corrupt.png"]["status"] == "failed"
    assert "cannot read it as an image" in two["corrupt.png"]["reason"]
    assert "cannot go through the image model" in two["clip.mp4@0000016"]["reason"]


@pytest.mark.cuda
def test_a_cuda_job_writes_what_a_cpu_job_writes(dataset, tmp_path):
    # Images only (the demo image model): SLIC of uint8 pictures is the same bits on both
    # backends, so labels and targets must match; scores only to rounding (the GPU's
    # convolutions round differently, TF32 included).
    common = {"method": "gradient", "batch_size": 4, "quiet": True}
    explain_dataset(dataset, tmp_path / "cpu", "demo:shapes", device="cpu", **common)
    explain_dataset(dataset, tmp_path / "cuda", "demo:shapes", device="cuda", **common)
    cpu, cuda = _outputs(tmp_path / "cpu"), _outputs(tmp_path / "cuda")
    done = [key for key, row in cpu.items() if row["status"] == "done"]
    assert len(done) == 12
    for key in done:
        assert cuda[key]["status"] == "done", cuda[key]
        a, b = np.load(cpu[key]["output"]), np.load(cuda[key]["output"])
        assert np.array_equal(a["labels"], b["labels"])
        assert int(a["target"]) == int(b["target"])
        scale = np.abs(a["segment_scores"]).max()
        np.testing.assert_allclose(
            b["segment_scores"], a["segment_scores"], rtol=1e-2, atol=1e-2 * scale
        )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the workers in /proc")
def test_a_killed_worker_loses_only_its_items_in_flight(dataset, tmp_path):
    out = tmp_path / "out"
    argv = [
        *TORCHRUN,
        "-m",
        "gswfast",
        "explain-dataset",
        str(dataset),
        "--model",
        "torchvision:resnet18",
        "--size",
        "64",
        "--batch-size",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    launcher = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    items = out / "items"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(items.glob("*.npz"))) < 3:
        time.sleep(0.02)
    workers = _children(launcher.pid)
    assert workers, "no worker processes found"
    os.kill(workers[0], signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0
    before = {p.name: p.stat().st_mtime_ns for p in items.glob("*.npz")}
    assert 3 <= len(before) < 12
    for name in before:
        np.load(items / name)["segment_scores"]  # every finished file is whole
    rerun = _run(argv)
    assert rerun.returncode == 0, rerun.stderr[-2000:]  # corrupt.png failed: recorded
    rows = _outputs(out)
    assert sorted(rows) == sorted(i.key for i in list_items(dataset))
    assert sum(r["status"] == "done" for r in rows.values()) == 12
    assert rows["corrupt.png"]["status"] == "failed"
    assert all(
        items.joinpath(n).stat().st_mtime_ns == t for n, t in before.items()
    )  # not recomputed
    assert not list(items.glob(".*.tmp"))


def test_videos_are_explained_in_windows(dataset, tmp_path):
    manifest = explain_dataset(
        dataset, tmp_path / "out", "demo:actions", method="gradient", stride=8, quiet=True
    )
    rows = {row["item"]: row for row in manifest["items"]}
    windows = [key for key in rows if key.startswith("clip.mp4@")]
    assert windows == [f"clip.mp4@{s:07d}" for s in (0, 8, 16, 24)]
    assert all(rows[w]["status"] == "done" for w in windows)
    labels = np.load(rows[windows[0]]["output"])["labels"]
    assert labels.shape == (16, 64, 64)
    assert "cannot go through the video model" in rows["shape00.png"]["reason"]


def test_python_function_and_missing_files(dataset, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(
        f"{dataset / 'shape00.png'}\n{dataset / 'nowhere.png'}\n# a comment\n{dataset / 'corrupt.png'}\n"
    )
    manifest = explain_dataset(
        listing, tmp_path / "out", "demo:shapes", method="gradient", quiet=True
    )
    statuses = [(row["item"].split("__")[-1], row["status"]) for row in manifest["items"]]
    assert statuses == [
        ("shape00.png", "done"),
        ("nowhere.png", "failed"),
        ("corrupt.png", "failed"),
    ]
    assert manifest["totals"]["done"] == 1
    assert manifest["totals"]["failed"] == 2
    again = explain_dataset(listing, tmp_path / "out", "demo:shapes", method="gradient", quiet=True)
    assert (
        again["items"][0]["seconds"] == manifest["items"][0]["seconds"]
    )  # finished: skipped, not redone


# ---------------------------------------------------------------- issues 16 and 17: jobs that finish right


def test_uneven_ranks_wait_at_barriers_and_progress_ends_at_the_total(dataset, tmp_path):
    """Rank 0 gets every image, rank 1 only missing files (done at once). The default
    process-group timeout is cut to 2 s here (a stand-in for NCCL's 10 minutes against a
    long job): the ranks must still meet at the barriers."""
    images = sorted(dataset.glob("shape*.png"))[:6]
    listing = tmp_path / "list.txt"
    listing.write_text(
        "".join(f"{image}\n{tmp_path / f'missing{i}.png'}\n" for i, image in enumerate(images))
    )
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import datetime\nimport torch.distributed.distributed_c10d as c10d\n"
        "c10d.default_pg_timeout = datetime.timedelta(seconds=2)\n"
    )
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=f"{patch}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    out = tmp_path / "out"
    done = subprocess.run(
        [
            *TORCHRUN,
            "-m",
            "gswfast",
            "explain-dataset",
            str(listing),
            "--out",
            str(out),
            "--model",
            "torchvision:resnet18",
            "--size",
            "96",
            "--batch-size",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # the missing files failed: recorded
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    assert totals["done"] == 6
    assert totals["failed"] == 6
    assert totals["processes"] == 2
    progress = [
        line for line in done.stderr.splitlines() if line.startswith("gswfast explain-dataset: ")
    ]
    assert progress, done.stderr[-3000:]
    assert progress[-1].startswith("gswfast explain-dataset: 12/12 items"), done.stderr[-3000:]
    assert (
        json.loads((out / ".progress" / "rank1").read_text()) == 6
    )  # each rank counts its own items


def test_settings_are_recorded_and_a_rerun_with_others_refuses(dataset, tmp_path, capsys):
    from gswfast.cli import main

    listing = tmp_path / "list.txt"
    listing.write_text(f"{dataset / 'shape00.png'}\n{dataset / 'shape01.png'}\n")
    out = tmp_path / "out"
    common = [
        "explain-dataset",
        str(listing),
        "--out",
        str(out),
        "--model",
        "demo:shapes",
        "--quiet",
    ]
    assert main([*common, "--method", "gradient", "--target", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["method"] == "gradient"
    assert manifest["settings"]["target"] == 2
    first = np.load(manifest["items"][0]["output"])
    assert int(first["target"]) == 2
    assert json.loads(str(first["settings"]))["method"] == "gradient"
    assert main([*common, "--method", "gradcam"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gswfast: error: --out:")
    assert "method 'gradient' -> 'gradcam'" in err
    assert "\n" not in err
    assert main([*common, "--method", "gradcam", "--overwrite"]) == 0
    again = json.loads((out / "manifest.json").read_text())
    assert again["settings"]["method"] == "gradcam"
    assert all(r["status"] == "done" for r in again["items"])
    assert json.loads(str(np.load(again["items"][0]["output"])["settings"]))["method"] == "gradcam"


def test_a_damaged_settings_file_is_one_line(dataset, tmp_path, capsys):
    from gswfast.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "settings.json").write_text("{half")
    argv = ["explain-dataset", str(dataset / "shape00.png"), "--out", str(out)]
    argv += ["--model", "demo:shapes", "--method", "gradient", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gswfast: error: --out: {out / 'settings.json'} is not")
    assert "--overwrite" in err
    assert "\n" not in err
    assert main([*argv, "--overwrite"]) == 0


def test_an_out_inside_the_source_is_not_explained_again(dataset, tmp_path):
    """``--out`` inside the source folder (or the folder itself): a rerun skips everything;
    the pictures the first run wrote there are outputs, not new items."""
    from gswfast.cli import main

    for case, inside in (("below", "audit"), ("itself", "")):
        source = tmp_path / case
        source.mkdir()
        for name in ("shape00.png", "shape01.png"):
            (source / name).write_bytes((dataset / name).read_bytes())
        out = source / inside
        argv = ["explain-dataset", str(source), "--out", str(out), "--pictures"]
        argv += ["--model", "demo:shapes", "--method", "gradient", "--quiet"]
        for _ in range(2):
            assert main(argv) == 0
            assert list(_outputs(out)) == ["shape00.png", "shape01.png"]
        assert len(list_items(source)) == 4  # without exclude: the two pictures too
        assert [i.key for i in list_items(source, exclude=out / "items")] == list(_outputs(out))


def test_listed_files_with_the_same_folder_and_name_keep_their_own_results(dataset, tmp_path):
    """``d1/cats/x.png`` and ``d2/cats/x.png`` listed from elsewhere were both item
    ``cats__x.png``: one result file, and a manifest that called both done. A file listed
    twice is one item."""
    from gswfast.cli import main

    for folder, name in (("d1", "shape00.png"), ("d2", "shape01.png")):
        (tmp_path / folder / "cats").mkdir(parents=True)
        (tmp_path / folder / "cats" / "x.png").write_bytes((dataset / name).read_bytes())
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "list.txt"
    listed = [tmp_path / "d1/cats/x.png", tmp_path / "d2/cats/x.png", tmp_path / "d1/cats/x.png"]
    listing.write_text("".join(f"{path}\n" for path in listed))
    out = tmp_path / "out"
    argv = ["explain-dataset", str(listing), "--out", str(out), "--model", "demo:shapes"]
    assert main([*argv, "--method", "gradient", "--quiet"]) == 0
    rows = _outputs(out)
    assert [row["path"] for row in rows.values()] == [str(p) for p in listed[:2]]
    for i, row in enumerate(rows.values()):  # each result is its own file's
        alone = ["explain-dataset", row["path"], "--out", str(tmp_path / f"alone{i}")]
        assert main([*alone, *argv[4:], "--method", "gradient", "--quiet"]) == 0
        (expected,) = _outputs(tmp_path / f"alone{i}").values()
        with np.load(row["output"]) as mine, np.load(expected["output"]) as single:
            np.testing.assert_allclose(mine["segment_scores"], single["segment_scores"], 1e-5)


def test_deep_folders_and_long_names_get_item_files_that_fit(dataset, tmp_path):
    """Three folders of 90 characters made ``d..__d..__d..__x.png.npz`` longer than the
    255 bytes a file name can have: OSError, with a traceback."""
    from gswfast.cli import main

    deep = tmp_path / "source" / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    for name in ("x.png", f"{'é' * 120}.png"):
        (deep / name).write_bytes((dataset / "shape00.png").read_bytes())
    out = tmp_path / "out"
    argv = ["explain-dataset", str(tmp_path / "source"), "--out", str(out), "--pictures"]
    assert main([*argv, "--model", "demo:shapes", "--method", "gradient", "--quiet"]) == 0
    rows = _outputs(out)
    assert len(rows) == 2
    assert all(len(p.name.encode()) <= 255 for p in (out / "items").iterdir())  # UTF-8
    assert len(set(rows)) == 2


def test_a_rerun_with_pictures_draws_them(dataset, tmp_path):
    """A rerun that adds --pictures skipped every finished item: no picture, exit 0."""
    from gswfast.cli import main

    out = tmp_path / "out"
    argv = ["explain-dataset", str(dataset / "shape00.png"), "--out", str(out), "--quiet"]
    argv += ["--model", "demo:shapes", "--method", "gradient"]
    assert main(argv) == 0
    assert not (out / "items" / "shape00.png.png").exists()
    assert main([*argv, "--pictures"]) == 0
    assert (out / "items" / "shape00.png.png").stat().st_size > 0


def test_exit_codes_when_items_fail(dataset, tmp_path, capsys):
    from gswfast.cli import main

    listing = tmp_path / "list.txt"
    listing.write_text(f"{dataset / 'corrupt.png'}\n{tmp_path / 'nowhere.png'}\n")
    assert (
        main(
            [
                "explain-dataset",
                str(listing),
                "--out",
                str(tmp_path / "a"),
                "--model",
                "demo:shapes",
                "--quiet",
            ]
        )
        == 2
    )  # every item failed
    assert (
        main(
            [
                "explain-dataset",
                str(dataset / "shape00.png"),
                "--out",
                str(tmp_path / "b"),
                "--model",
                "demo:shapes",
                "--target",
                "99",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "target: class 99 is out of range" in err
    assert "\n" not in err


def test_auto_device_on_a_build_without_cuda_kernels_is_the_cpu(monkeypatch):
    from gswfast import models
    from gswfast.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU is visible...
    monkeypatch.setattr(
        models, "cuda_available", lambda: False
    )  # ...but gswfast has no CUDA kernels
    assert resolve_device("auto", local_rank=1) == torch.device("cpu")


def test_each_rank_counts_only_its_share_of_the_videos(dataset, tmp_path):
    import shutil

    from gswfast.video import frame_count

    for name in ("a", "b", "c"):
        shutil.copy(dataset / "clip.mp4", tmp_path / f"{name}.mp4")
    counted: list[dict] = []

    def share(mine: dict) -> list[dict]:  # the all-gather, with the other rank's part counted here
        counted.append(mine)
        return [mine, {str(tmp_path / "b.mp4"): frame_count(tmp_path / "b.mp4")}]

    items = list_items(tmp_path, frames=16, rank=0, world=2, share=share)
    assert sorted(Path(p).name for p in counted[0]) == ["a.mp4", "c.mp4"]
    assert [i.key for i in items] == [f"{v}.mp4@{s:07d}" for v in "abc" for s in (0, 16, 24)]
    assert frame_count(dataset / "clip.mp4") == 40  # from the MP4 header, no demuxing


def test_imports_flow_one_way():
    """models below dataset below cli; no module of these imports one above it, at any depth
    of a function (no imports inside functions to dodge a cycle)."""
    import ast

    root = Path(__file__).parents[1] / "gswfast"
    above = {
        "models.py": {"gswfast.cli", "gswfast.dataset", "gswfast.viz"},
        "dataset.py": {"gswfast.cli"},
        "render.py": {"gswfast.viz", "gswfast.cli", "gswfast.dataset"},
        "viz.py": {"gswfast.cli", "gswfast.dataset"},
    }
    for name, forbidden in above.items():
        tree = ast.parse((root / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {
            f"{n.module}.{a.name}"
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names
        }
        assert not imported & forbidden, (name, imported & forbidden)


def test_pictures_keep_the_aspect_ratio_as_explain_does(tmp_path):
    # One picture rule for both commands: the input's aspect ratio, the longer side 448;
    # the records say what was stretched to what.
    from PIL import Image

    from gswfast import viz
    from gswfast.cli import main
    from gswfast.demo import shape_images

    folder = tmp_path / "in"
    folder.mkdir()
    image = (shape_images(1, size=64).images[0] * 255).to(torch.uint8)
    viz.save_png(torch.cat([image, image], dim=2)[:, :40], folder / "wide.png")  # 40 x 128
    manifest = explain_dataset(
        folder, tmp_path / "d", "demo:shapes", method="gradient", pictures=True, quiet=True
    )
    (row,) = manifest["items"]
    assert row["input_size"] == [40, 128]
    assert row["model_size"] == [64, 64]
    with Image.open(next((tmp_path / "d" / "items").glob("*.png"))) as picture:
        dataset_size = picture.size
    argv = ["explain", str(folder / "wide.png"), "--model", "demo:shapes", "--method", "gradient"]
    assert main([*argv, "--quiet", "--out", str(tmp_path / "e")]) == 0
    with Image.open(tmp_path / "e" / "wide.png") as picture:
        assert picture.size == dataset_size == (448, 140 + 40)  # and the legend strip
