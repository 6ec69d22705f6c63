"""The gswfast command on real files: PNG/JPEG through Pillow, MP4 through PyAV."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gswfast.cli import main
from gswfast.demo import action_clips, shape_images
from gswfast.demo.models import ShapeNet, load

pytest.importorskip("av")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from PIL import Image

    from gswfast import viz
    from gswfast.video import write_mp4

    folder = tmp_path_factory.mktemp("media")
    shape = (shape_images(1, generator=torch.Generator().manual_seed(3)).images[0] * 255).to(torch.uint8)
    viz.save_png(shape, folder / "shape.png")
    Image.fromarray(shape.permute(1, 2, 0).numpy()).save(folder / "shape.jpg", quality=95)
    clip = (action_clips(1, frames=40, generator=torch.Generator().manual_seed(4)).images[0] * 255).to(torch.uint8)
    write_mp4(clip, folder / "action.mp4", fps=8)
    (folder / "corrupt.png").write_bytes(b"not a png")
    (folder / "corrupt.mp4").write_bytes(bytes(1000))
    torch.save(load("shapes").state_dict(), folder / "shapes_state.pt")
    torch.jit.script(load("shapes")).save(str(folder / "shapes_script.pt"))
    return folder


def test_demo_writes_pictures_and_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert len(report["images"]) == 8 and len(report["clips"]) == 2
    first = report["images"][0]
    assert {"class", "predicted", "segment_scores", "ranking", "pointing_game", "relevance_mass"} <= set(first)
    assert sum(r["class"] == r["predicted"] for r in report["images"]) >= 7
    assert sum(r["pointing_game"] for r in report["images"]) >= 6
    for row in report["images"] + report["clips"]:
        for name in row["files"]:
            assert Path(name).stat().st_size > 0
    assert "demo images" in capsys.readouterr().err


def test_explain_images(files, tmp_path):
    code = main(["explain", str(files / "shape.png"), str(files / "shape.jpg"), "--model", "demo:shapes",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    results = json.loads((tmp_path / "explanations.json").read_text())
    assert [Path(r["input"]).name for r in results] == ["shape.png", "shape.jpg"]
    assert results[0]["target"] == results[1]["target"]
    from gswfast.video import read_image

    picture = read_image(tmp_path / "shape.png")
    assert picture.shape[0] == 3 and max(picture.shape[1:]) >= 400


def test_explain_video_in_windows(files, tmp_path):
    code = main(["explain", str(files / "action.mp4"), "--model", "demo:actions", "--stride", "8",
                 "--out", str(tmp_path), "--quiet", "--method", "gradcam"])
    assert code == 0
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    assert [w["first_frame"] for w in result["windows"]] == [0, 8, 16, 24]
    from gswfast.video import read_video

    frames, fps = read_video(tmp_path / "action.mp4")
    assert sum(1 for _ in frames) == 40 and fps == pytest.approx(8)  # every frame once
    assert (tmp_path / "action.gif").stat().st_size > 0


def test_stream_writes_every_frame_once_and_a_timeline(files, tmp_path):
    code = main(["explain", str(files / "action.mp4"), "--model", "demo:actions", "--stream", "--stride", "4",
                 "--method", "gradient", "--out", str(tmp_path), "--quiet"])
    assert code == 0
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    timeline = [json.loads(line) for line in Path(result["timeline"]).read_text().splitlines()]
    assert result["windows"] == 7 and [w["first_frame"] for w in timeline] == list(range(0, 25, 4))
    assert all(w["target"] == timeline[0]["target"] and w["latency_ms"] >= 0 for w in timeline)
    from gswfast.video import read_video

    frames, _ = read_video(tmp_path / "action.mp4")
    assert sum(1 for _ in frames) == 40


def test_model_files(files, tmp_path):
    image = str(files / "shape.png")
    assert main(["explain", image, "--model", str(files / "shapes_state.pt"), "--arch", "demo:shapes",
                 "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["explain", image, "--model", str(files / "shapes_script.pt"), "--size", "64",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    a = json.loads((tmp_path / "a" / "explanations.json").read_text())[0]
    b = json.loads((tmp_path / "b" / "explanations.json").read_text())[0]
    assert a["target"] == b["target"]
    assert a["segment_scores"] == pytest.approx(b["segment_scores"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("argv,message", [
    (["explain", "missing.png"], "missing.png: no such file"),
    (["explain", "{corrupt_png}", "--model", "demo:shapes"], "cannot read it as an image"),
    (["explain", "{corrupt_mp4}", "--model", "demo:actions"], "cannot decode it as a video"),
    (["explain", "{png}", "--model", "torchvision:nonet"], "unknown torchvision model 'nonet'"),
    (["explain", "{png}", "--model", "demo:nonet"], "unknown demo model 'nonet'"),
    (["explain", "{png}", "--model", "demo:shapes", "--weights", "{actions_weights}"], "does not fit demo:shapes"),
    (["explain", "{png}", "--model", "{state}"], "is not TorchScript; give its architecture with --arch"),
    (["explain", "{png}", "--model", "demo:shapes", "--weights", "{corrupt_png}"], "cannot read it as a state_dict"),
    (["explain", "{png}", "--model", "demo:shapes", "--device", "cuda:7"], "--device cuda:7"),
    (["explain", "{png}", "--model", "demo:shapes", "--device", "tpu"], "--device"),
    (["explain", "{png}", "--model", "demo:shapes", "--method", "lrp"], "--method: expected one of"),
    (["explain", "{png}", "--model", "demo:shapes", "--target", "9"], "target: class 9 is out of range"),
    (["explain", "{mp4}", "--model", "demo:shapes"], "a video cannot go through the image model"),
    (["explain", "{mp4}", "--model", "demo:actions", "--frames", "100"], "shorter than one window"),
])
def test_user_mistakes_get_one_line_and_exit_code_2(files, tmp_path, capsys, argv, message):
    names = {"corrupt_png": files / "corrupt.png", "corrupt_mp4": files / "corrupt.mp4", "png": files / "shape.png",
             "mp4": files / "action.mp4", "state": files / "shapes_state.pt",
             "actions_weights": Path(__file__).parents[1] / "gswfast/demo/weights/actions.pt"}
    args = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv] + ["--out", str(tmp_path), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gswfast: error: ") and message in err and "\n" not in err


def test_the_console_script_and_python_m(files, tmp_path):
    done = subprocess.run([sys.executable, "-m", "gswfast", "explain", str(files / "corrupt.png"), "--model",
                           "demo:shapes", "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "cannot read it as an image" in done.stderr
    help_text = subprocess.run([sys.executable, "-m", "gswfast", "explain", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--model" in help_text.stdout


def test_shape_net_loads_what_it_saves():
    net = ShapeNet()
    net.load_state_dict(load("shapes").state_dict())
