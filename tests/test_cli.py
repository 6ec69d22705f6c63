"""The gswfast command on real files: PNG/JPEG through Pillow, MP4 through PyAV."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_hf_vit

from gswfast.cli import main
from gswfast.demo import action_clips, shape_images
from gswfast.demo.models import ShapeNet, load
from gswfast.options import CAM_METHODS, UserError
from gswfast.viz import LEGEND_HEIGHT as LEGEND

pytest.importorskip("av")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    from PIL import Image

    from gswfast import viz
    from gswfast.video import write_mp4

    folder = tmp_path_factory.mktemp("media")
    shape = (shape_images(1, generator=torch.Generator().manual_seed(3)).images[0] * 255).to(
        torch.uint8
    )
    viz.save_png(shape, folder / "shape.png")
    Image.fromarray(shape.permute(1, 2, 0).numpy()).save(folder / "shape.jpg", quality=95)
    clip = (
        action_clips(1, frames=40, generator=torch.Generator().manual_seed(4)).images[0] * 255
    ).to(torch.uint8)
    write_mp4(clip, folder / "action.mp4", fps=8)
    short = (
        action_clips(1, frames=24, generator=torch.Generator().manual_seed(5)).images[0] * 255
    ).to(torch.uint8)
    write_mp4(short, folder / "short.mp4", fps=8)
    frames = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in clip[:, :20].unbind(1)]
    frames[0].save(
        folder / "action.gif", save_all=True, append_images=frames[1:], duration=125, loop=0
    )
    grey16 = (
        (shape.float().mean(0) / 255 * (49601 - 1028) + 1028)
        .round()
        .to(torch.int32)
        .numpy()
        .astype("uint16")
    )
    Image.fromarray(grey16).save(folder / "grey16.png")  # mode I;16: values 1028..49601
    wide = torch.nn.functional.interpolate(shape[None].float(), size=(97, 161), mode="bilinear")[0]
    viz.save_png(wide.round().clamp(0, 255).to(torch.uint8), folder / "wide 161x97 ü.png")
    for sub, suffix in (("a", ".png"), ("b", ".jpg")):
        (folder / sub).mkdir()
        Image.fromarray(shape.permute(1, 2, 0).numpy()).save(
            folder / sub / f"same{suffix}", quality=95
        )
    (folder / "empty.png").write_bytes(b"")
    (folder / "corrupt.png").write_bytes(b"not a png")
    (folder / "corrupt.mp4").write_bytes(bytes(1000))
    torch.save(load("shapes").state_dict(), folder / "shapes_state.pt")
    torch.jit.script(load("shapes")).save(str(folder / "shapes_script.pt"))
    return folder


def test_demo_writes_pictures_and_json(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert len(report["images"]) == 8
    assert len(report["clips"]) == 2
    first = report["images"][0]
    assert {
        "class",
        "predicted",
        "segment_scores",
        "ranking",
        "pointing_game",
        "relevance_mass",
    } <= set(first)
    assert sum(r["class"] == r["predicted"] for r in report["images"]) >= 7
    assert sum(r["pointing_game"] for r in report["images"]) >= 6
    # the demo detector on 4 scenes of 2 shapes: measured 8 boxes, all pointing at their shape
    assert len(report["detections"]) >= 6
    assert sum(r["pointing_game"] for r in report["detections"]) >= 6
    assert report["detection_method"] == "input_x_gradient"
    for row in report["images"] + report["clips"] + report["detections"]:
        for name in row["files"]:
            assert Path(name).stat().st_size > 0
    err = capsys.readouterr().err
    assert "demo images" in err
    assert "4 demo scenes: " in err


def test_explain_images(files, tmp_path):
    code = main(
        [
            "explain",
            str(files / "shape.png"),
            str(files / "shape.jpg"),
            "--model",
            "demo:shapes",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    results = json.loads((tmp_path / "explanations.json").read_text())
    assert [Path(r["input"]).name for r in results] == ["shape.png", "shape.jpg"]
    assert results[0]["target"] == results[1]["target"]
    from gswfast.video import read_image

    picture = read_image(tmp_path / "shape.png")
    assert picture.shape[0] == 3
    assert max(picture.shape[1:]) >= 400


def test_explain_video_in_windows(files, tmp_path):
    code = main(
        [
            "explain",
            str(files / "action.mp4"),
            "--model",
            "demo:actions",
            "--stride",
            "8",
            "--out",
            str(tmp_path),
            "--quiet",
            "--method",
            "gradcam",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    assert [w["first_frame"] for w in result["windows"]] == [0, 8, 16, 24]
    from gswfast.video import read_video

    frames, fps = read_video(tmp_path / "action.mp4")
    assert sum(1 for _ in frames) == 40
    assert fps == pytest.approx(8)
    assert (tmp_path / "action.gif").stat().st_size > 0


def test_stream_writes_every_frame_once_and_a_timeline(files, tmp_path):
    code = main(
        [
            "explain",
            str(files / "action.mp4"),
            "--model",
            "demo:actions",
            "--stream",
            "--stride",
            "4",
            "--method",
            "gradient",
            "--out",
            str(tmp_path),
            "--quiet",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    timeline = [json.loads(line) for line in Path(result["timeline"]).read_text().splitlines()]
    assert result["windows"] == 7
    assert [w["first_frame"] for w in timeline] == list(range(0, 25, 4))
    assert all(w["target"] == timeline[0]["target"] and w["latency_ms"] >= 0 for w in timeline)
    from gswfast.video import read_video

    frames, _ = read_video(tmp_path / "action.mp4")
    assert sum(1 for _ in frames) == 40


def test_model_files(files, tmp_path):
    image = str(files / "shape.png")
    assert (
        main(
            [
                "explain",
                image,
                "--model",
                str(files / "shapes_state.pt"),
                "--arch",
                "demo:shapes",
                "--out",
                str(tmp_path / "a"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "explain",
                image,
                "--model",
                str(files / "shapes_script.pt"),
                "--size",
                "64",
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            ]
        )
        == 0
    )
    a = json.loads((tmp_path / "a" / "explanations.json").read_text())[0]
    b = json.loads((tmp_path / "b" / "explanations.json").read_text())[0]
    assert a["target"] == b["target"]
    assert a["segment_scores"] == pytest.approx(b["segment_scores"], rel=1e-3, abs=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "missing.png"], "missing.png: no such file"),
        (["explain", "{corrupt_png}", "--model", "demo:shapes"], "cannot read it as an image"),
        (["explain", "{corrupt_mp4}", "--model", "demo:actions"], "cannot decode it as a video"),
        (["explain", "{png}", "--model", "torchvision:nonet"], "unknown torchvision model 'nonet'"),
        (["explain", "{png}", "--model", "demo:nonet"], "unknown demo model 'nonet'"),
        (
            ["explain", "{png}", "--model", "demo:shapes", "--weights", "{actions_weights}"],
            "does not fit demo:shapes",
        ),
        (
            ["explain", "{png}", "--model", "{state}"],
            "is a state_dict; give its architecture with --arch",
        ),
        (
            ["explain", "{png}", "--model", "demo:shapes", "--weights", "{corrupt_png}"],
            "cannot read it as a state_dict",
        ),
        (["explain", "{png}", "--model", "demo:shapes", "--device", "cuda:7"], "--device cuda:7"),
        (["explain", "{png}", "--model", "demo:shapes", "--device", "tpu"], "--device"),
        (
            ["explain", "{png}", "--model", "demo:shapes", "--method", "lrp"],
            "--method: expected one of",
        ),
        (
            ["explain", "{png}", "--model", "demo:shapes", "--target", "9"],
            "target: class 9 is out of range",
        ),
        (
            ["explain", "{mp4}", "--model", "demo:shapes"],
            "a video cannot go through the image model",
        ),
        (
            ["explain", "{mp4}", "--model", "demo:actions", "--frames", "100"],
            "shorter than one window",
        ),
    ],
)
def test_user_mistakes_get_one_line_and_exit_code_2(files, tmp_path, capsys, argv, message):
    names = {
        "corrupt_png": files / "corrupt.png",
        "corrupt_mp4": files / "corrupt.mp4",
        "png": files / "shape.png",
        "mp4": files / "action.mp4",
        "state": files / "shapes_state.pt",
        "actions_weights": Path(__file__).parents[1] / "gswfast/demo/weights/actions.pt",
    }
    args = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv] + [
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gswfast: error: ")
    assert message in err
    assert "\n" not in err


def test_the_console_script_and_python_m(files, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gswfast",
            "explain",
            str(files / "corrupt.png"),
            "--model",
            "demo:shapes",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot read it as an image" in done.stderr
    help_text = subprocess.run(
        [sys.executable, "-m", "gswfast", "explain", "--help"], capture_output=True, text=True
    )
    assert help_text.returncode == 0
    assert "--model" in help_text.stdout


def test_shape_net_loads_what_it_saves():
    shipped = load("shapes")
    net = ShapeNet().eval()
    net.load_state_dict(shipped.state_dict())  # strict: every key and shape must match
    for name, value in shipped.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), shipped(x))


# ---------------------------------------------------------------- issue 17: the command as users meet it


def _one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("gswfast: error: "), err
    assert "\n" not in err, err
    assert "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "argument"),
    [
        (["explain", "{png}", "--segments", "0"], "--segments"),
        (["explain", "{png}", "--segments", "-4"], "--segments"),
        (["explain", "{png}", "--top-k", "-1"], "--top-k"),
        (["explain", "{png}", "--size", "0"], "--size"),
        (["explain", "{mp4}", "--stride", "0"], "--stride"),
        (["explain", "{mp4}", "--frames", "0"], "--frames"),
        (["explain", "{png}", "--target", "-1"], "--target"),
        (["demo", "--segments", "0"], "--segments"),
        (["explain-dataset", "{png}", "--out", "{out}", "--batch-size", "0"], "--batch-size"),
        (["explain", "{mp4}", "--stream", "--frames", "4", "--stride", "8"], "--stride"),
        (["explain", "{png}", "--method", "gradient", "--layer", "features.6"], "--layer"),
        (
            ["explain", "{png}", "--layer", "features.6"],
            "--layer: only the CAM methods",
        ),  # images default to IG
    ],
)
def test_invalid_numbers_are_one_clear_error_before_any_work(
    files, tmp_path, capsys, argv, argument
):
    names = {"png": files / "shape.png", "mp4": files / "action.mp4", "out": tmp_path / "d"}
    args = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    args += [] if "--out" in args else ["--out", str(tmp_path / "out")]
    assert main([*args, "--model", "demo:shapes"] if args[0] != "demo" else args) == 2
    _one_line_error(capsys, argument)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("raft_small", "is an optical flow model"),
        ("quantized_resnet18", "is a quantized model"),
    ],
)
def test_models_that_are_not_classifiers_are_refused_and_nothing_downloads(
    files, tmp_path, capsys, monkeypatch, name, why
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                f"torchvision:{name}",
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 2
    )
    _one_line_error(capsys, why, "gswfast explains torchvision's classification, video")
    assert not (tmp_path / "torch_home").exists()
    assert not (tmp_path / "out").exists()


def test_builders_get_no_backbone_weights_either(tmp_path, monkeypatch):
    from gswfast.models import _build_torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = _build_torchvision(
        "fasterrcnn_mobilenet_v3_large_320_fpn"
    )  # would download a backbone otherwise
    assert isinstance(model, torch.nn.Module)
    assert not any(tmp_path.iterdir())


def test_torchscript_models_fail_in_one_line(files, tmp_path, capsys):
    script = str(files / "shapes_script.pt")
    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                script,
                "--method",
                "gradient",
                "--size",
                "64",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(
        capsys, "action.mp4: the model", "failed on an input of shape [1, 3, 16, 64, 64]", "conv2d"
    )
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                script,
                "--size",
                "64",
                "--quiet",
                "--method",
                "guided_backprop",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "guided_backprop hooks the model's modules")
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                script,
                "--size",
                "64",
                "--quiet",
                "--method",
                "gradcam",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "gradcam hooks the model's modules")
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                script,
                "--arch",
                "demo:shapes",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "is TorchScript")


def test_video_models_that_need_larger_inputs_say_so(files, tmp_path, capsys):
    from gswfast.models import default_size

    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                "torchvision:s3d",
                "--size",
                "112",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "too small for torchvision:s3d", "--size 224")
    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                "torchvision:mvit_v2_s",
                "--size",
                "112",
                "--quiet",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    _one_line_error(capsys, "exactly 16 frames of 224x224")
    assert default_size("torchvision:s3d", None, "video") == 224
    assert default_size("torchvision:r3d_18", None, "video") == 112


def test_no_empty_output_folder_after_errors(files, tmp_path, capsys):
    renamed = tmp_path / "clip.dat"
    renamed.write_bytes(
        (files / "action.mp4").read_bytes()
    )  # not an image, whatever its suffix says
    for argv, message in (
        (["explain", str(files / "corrupt.mp4"), "--model", "demo:actions"], "cannot decode it"),
        (["explain", str(renamed), "--model", "demo:shapes"], "cannot read it as an image"),
        (
            ["explain", str(files / "action.mp4"), "--model", "demo:actions", "--target", "99"],
            "out of range",
        ),
    ):
        assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        _one_line_error(capsys, message)
        assert not (tmp_path / "out").exists()


def test_out_naming_a_file(files, tmp_path, capsys):
    target = tmp_path / "taken"
    target.write_text("mine")
    assert (
        main(["explain", str(files / "shape.png"), "--model", "demo:shapes", "--out", str(target)])
        == 2
    )
    _one_line_error(capsys, "exists and is not a folder")
    assert target.read_text() == "mine"


def test_16_bit_pngs_are_read_in_their_range(files, tmp_path):
    from PIL import Image

    from gswfast.video import read_image

    with Image.open(files / "grey16.png") as image:
        assert image.mode.startswith("I;16") or image.mode == "I"
        raw = torch.from_numpy(__import__("numpy").asarray(image).astype("int64"))
    pixels = read_image(files / "grey16.png")
    assert pixels.shape == (3, 64, 64)
    assert int(raw.min()) >= 1028
    assert int(raw.max()) > 255
    assert torch.equal(pixels[0].long(), (raw.double() / 257).round().long())
    assert (
        main(
            [
                "explain",
                str(files / "grey16.png"),
                "--model",
                "demo:shapes",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    picture = read_image(tmp_path / "grey16.png").float()
    assert picture.std() > 20  # not a blank white image


def test_top_k_outline_is_closed():
    import gswfast as gsw
    from gswfast import render

    labels = torch.zeros(1, 12, 12, dtype=torch.int32)
    labels[0, 3:9, 4:10] = 1  # segment 1: rows 3-8, columns 4-9
    scores = torch.tensor([[0.0, 1.0]])
    expl = gsw.explain(
        None, torch.zeros(1, 3, 12, 12), segmentation=labels, attribution=gsw.paint(scores, labels)
    )
    picture = render.draw_picture(expl, torch.zeros(1, 3, 12, 12), k=1)[0]
    cyan = (picture == torch.tensor(render.TOP_K_COLOUR, dtype=torch.uint8).view(3, 1, 1)).all(0)
    ring = torch.zeros(12, 12, dtype=torch.bool)
    ring[3:9, 4:10] = True
    ring[4:8, 5:9] = False
    assert torch.equal(cyan, ring)  # all four sides, inside the segment


def test_outputs_with_the_same_stem_do_not_overwrite_each_other(files, tmp_path):
    paths = [files / "a" / "same.png", files / "b" / "same.jpg"]
    assert (
        main(
            [
                "explain",
                *map(str, paths),
                "--model",
                "demo:shapes",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "explanations.json").read_text())
    outputs = [Path(r["output"]) for r in results]
    assert [o.name for o in outputs] == ["same.png", "same-2.png"]
    assert all(o.is_file() for o in outputs)


def test_scores_keep_float32_precision(files, tmp_path):
    import numpy as np

    import gswfast as gsw
    from gswfast import render
    from gswfast.video import read_image

    script = files / "shapes_script.pt"
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                str(script),
                "--size",
                "64",
                "--out",
                str(tmp_path),
                "--quiet",
                "--method",
                "gradient",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "explanations.json").read_text())[0]["segment_scores"]
    model = torch.jit.load(str(script))
    image = render.resize_frames(read_image(files / "shape.png")[None], 64)
    expected = gsw.explain(model, image, method="gradient", channels_last=None).segment_scores[0]
    assert np.array_equal(
        np.array(saved, dtype=np.float32), expected.numpy()
    )  # exact float32 values
    assert any(v != round(v, 6) for v in saved)  # more than 6 decimals survive


def test_target_out_of_range_and_stream_path(files, tmp_path, capsys):
    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                "demo:actions",
                "--target",
                "99",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "class 99 is out of range")


def test_stream_explains_the_given_target(files, tmp_path, capsys):
    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                "demo:actions",
                "--stream",
                "--target",
                "1",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    timeline = [
        json.loads(line) for line in (tmp_path / "action.timeline.jsonl").read_text().splitlines()
    ]
    assert timeline
    assert all(w["target"] == 1 for w in timeline)
    assert (
        main(
            [
                "explain",
                str(files / "action.mp4"),
                "--model",
                "demo:actions",
                "--stream",
                "--target",
                "99",
                "--out",
                str(tmp_path / "b"),
                "--quiet",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "99", "out of range")


def test_random_weights_are_seeded_and_announced_once(files, tmp_path, capsys):
    runs = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"seed{seed}-{len(runs)}"
        assert (
            main(
                [
                    "explain",
                    str(files / "shape.png"),
                    str(files / "shape.jpg"),
                    "--size",
                    "32",
                    "--method",
                    "gradient",
                    "--seed",
                    seed,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        err = capsys.readouterr().err
        assert err.count("random weights") == 1
        assert "--weights" in err
        runs.append(
            torch.tensor(json.loads((out / "explanations.json").read_text())[0]["segment_scores"])
        )
    # the same weights (CPU kernels may round differently from run to run)
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(runs[0], runs[2], rtol=1e-2)
    assert main(["explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Default: torchvision:resnet18 with RANDOM weights" in help_text
    assert "gradcam for videos" in help_text


def test_video_tails_are_covered(files, tmp_path):
    assert (
        main(
            [
                "explain",
                str(files / "short.mp4"),
                "--model",
                "demo:actions",
                "--stride",
                "16",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    assert [w["first_frame"] for w in result["windows"]] == [
        0,
        8,
    ]  # 24 frames: the last window ends at 23
    assert result["method"] == "gradcam"  # the default for video
    from gswfast.video import read_video

    frames, _ = read_video(tmp_path / "short.mp4")
    assert sum(1 for _ in frames) == 24


def test_pictures_keep_the_aspect_ratio(files, tmp_path):
    from gswfast.video import read_image

    path = files / "wide 161x97 ü.png"
    assert (
        main(
            [
                "explain",
                str(path),
                "--model",
                "demo:shapes",
                "--out",
                str(tmp_path / "ü out"),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "ü out" / "explanations.json").read_text())[0]
    assert result["method"] == "integrated_gradients"  # the default for images
    # 97x161 scaled to a 448 long side, the legend strip under it
    assert tuple(read_image(result["output"]).shape) == (3, 270 + LEGEND, 448)


def test_animated_gifs_are_videos_everywhere(files, tmp_path):
    from gswfast.dataset import list_items

    assert (
        main(
            [
                "explain",
                str(files / "action.gif"),
                "--model",
                "demo:actions",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    assert [w["first_frame"] for w in result["windows"]] == [0, 4]
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files / 'action.gif'}\n")
    assert [i.start for i in list_items(listing)] == [0, 4]
    assert [i.start for i in list_items(files) if i.path.suffix == ".gif"] == [
        0,
        4,
    ]  # found in folders too


def test_one_bad_file_does_not_stop_the_others(files, tmp_path, capsys):
    paths = [files / "shape.png", files / "corrupt.png", files / "empty.png", files / "shape.jpg"]
    assert (
        main(
            [
                "explain",
                *map(str, paths),
                "--model",
                "demo:shapes",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 0  # explained what it could; --strict exits 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2
    assert all(line.startswith("gswfast: error: ") for line in err)
    results = json.loads((tmp_path / "explanations.json").read_text())
    assert ["error" in r for r in results] == [False, True, True, False]


def test_weight_mismatch_is_short_and_names_the_right_option(files, tmp_path, capsys):
    actions = Path(__file__).parents[1] / "gswfast/demo/weights/actions.pt"
    assert (
        main(
            [
                "explain",
                str(files / "shape.png"),
                "--model",
                str(actions),
                "--arch",
                "demo:shapes",
                "--out",
                str(tmp_path),
                "--quiet",
            ]
        )
        == 2
    )
    err = _one_line_error(
        capsys, f"--model: {actions} does not fit demo:shapes", "with another shape"
    )
    assert len(err) < 600


def test_grad_cam_layer_option(files, tmp_path, capsys):
    common = [str(files / "shape.png"), "--model", "demo:shapes", "--method", "gradcam", "--quiet"]
    assert main(["explain", *common, "--layer", "features.6", "--out", str(tmp_path / "a")]) == 0
    assert main(["explain", *common, "--out", str(tmp_path / "b")]) == 0
    a = json.loads((tmp_path / "a" / "explanations.json").read_text())[0]
    b = json.loads((tmp_path / "b" / "explanations.json").read_text())[0]
    assert a["segment_scores"] != b["segment_scores"]  # features.6 is not the default layer
    assert a["layer"] == "features.6"
    assert a["layout"] == b["layout"] == "[B, K, h, w]"
    assert b["layer"] != "features.6"
    assert b["degenerate"] is False
    assert main(["explain", *common, "--layer", "nope", "--out", str(tmp_path / "c")]) == 2
    _one_line_error(capsys, "no module named 'nope'")
    # several layers, comma-separated; and Score-CAM, a method like the others
    several = ["--layer", "features.6, features.10", "--out", str(tmp_path / "d")]
    assert main(["explain", *common, *several]) == 0
    d = json.loads((tmp_path / "d" / "explanations.json").read_text())[0]
    assert d["layer"] == ["features.6", "features.10"]
    assert d["layout"] == ["[B, K, h, w]", "[B, K, h, w]"]
    assert d["segment_scores"] != a["segment_scores"]
    score = [*common[:3], "--method", "scorecam", "--quiet", "--out", str(tmp_path / "e")]
    assert main(["explain", *score]) == 0
    e = json.loads((tmp_path / "e" / "explanations.json").read_text())[0]
    assert e["layer"] == b["layer"]
    assert e["segment_scores"] != b["segment_scores"]


def test_version_and_fast_argument_checks(tmp_path):
    (tmp_path / "f").write_text("a file")
    version = subprocess.run(
        [sys.executable, "-m", "gswfast", "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0
    assert version.stdout.startswith("gswfast ")
    # --help, --version and every option mistake that needs no model or file are answered
    # before torch (or numpy, torchvision, PyAV, Pillow, tqdm) is imported
    probe = (
        "import sys; from gswfast.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'numpy', 'torchvision', 'av', 'PIL', 'tqdm') if m in sys.modules]; "
        "print(code, heavy)"
    )
    cases = [
        (["--help"], 0, "explain-dataset"),
        (["--version"], 0, "gswfast 0.1.0"),
        (["explain", "--help"], 0, "--stream"),
        (["explain", "x.png", "--method", "lrp"], 2, "--method: expected one of"),
        (["explain", "x.png", "--segments", "0"], 2, "--segments: expected an int >= 1"),
        (["explain", "x.png", "--top-k", "-1"], 2, "--top-k: expected an int >= 0"),
        (["explain", "x.png", "--size", "0"], 2, "--size: expected an int from 1 to 4096"),
        (["explain", "x.png", "--method", "gradient", "--samples", "4"], 2, "--samples: only"),
        (["explain", "x.png", "--target", "1" + "0" * 20], 2, "--target: expected an int from"),
        (["explain", "x.png", "--out", str(tmp_path / "f" / "o")], 2, "f is not a folder"),
        (["demo", "--segments", "0"], 2, "--segments: expected an int >= 1"),
        (
            ["explain-dataset", "src", "--out", str(tmp_path), "--batch-size", "0"],
            2,
            "--batch-size",
        ),
        (
            ["explain", "x.png", "--method", "gradient", "--layer", "a"],
            2,
            f"only the CAM methods ({', '.join(CAM_METHODS)}) use a layer",
        ),
        (["nope"], 2, "invalid choice: 'nope'"),
    ]
    for argv, code, said in cases:
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60
        )
        assert done.stdout.split()[-2:] == [str(code), "[]"], (argv, done.stdout, done.stderr)
        assert said in done.stdout + done.stderr, (argv, done.stdout, done.stderr)
        if code == 2:
            assert done.stderr.count("\n") == 1, (argv, done.stderr)
            assert done.stderr.startswith("gswfast: error: "), (argv, done.stderr)


def test_the_method_names_of_the_fast_checks_are_the_methods():
    from gswfast.attribution import METHODS
    from gswfast.options import METHOD_NAMES

    assert METHOD_NAMES == METHODS


def test_progress_plain_lines_in_logs(files, tmp_path):
    inputs = [str(files / "action.mp4"), str(files / "shape.png")]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gswfast",
            "explain",
            *inputs,
            "--model",
            str(files / "shapes_script.pt"),
            "--size",
            "64",
            "--method",
            "gradient",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("gswfast explain: ")]
    assert lines
    assert lines[-1].startswith("gswfast explain: 4/4 items")
    assert "items/s" in lines[-1]
    assert done.returncode == 0  # the video failed on the image model, the image went through


def test_progress_bar_on_a_terminal():
    import io

    from gswfast.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    with Progress("work", 3, "item", stream=screen) as progress:
        for _ in range(3):
            progress.update()
    assert "3/3" in screen.getvalue()
    assert "items/s" in screen.getvalue()
    assert "\r" in screen.getvalue()
    quiet = Terminal()
    with Progress("work", 3, quiet=True, stream=quiet) as progress:
        progress.update(3)
    assert quiet.getvalue() == ""


def test_progress_lines_in_logs_print_each_count_once():
    # a failed input sets the count to where it would have ended: the same count again
    # printed its line twice, with two rates
    import io

    from gswfast.progress import Progress

    log = io.StringIO()
    with Progress("work", 2, "item", stream=log, every=0.0) as progress:
        progress.update()
        progress.set(1)  # unchanged
        progress.update()
        progress.set(2)
    lines = log.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["work: 1/2 items", "work: 2/2 items"]


def test_every_image_and_video_format_goes_through(files, tmp_path):
    import av
    from PIL import Image

    shape = Image.open(files / "shape.png").convert("RGB")
    made = tmp_path / "made"
    made.mkdir()
    shape.convert("L").save(made / "grey.png")
    shape.convert("RGBA").save(made / "rgba.png")
    shape.convert("CMYK").save(made / "cmyk.jpg")
    shape.resize((500, 1)).save(made / "strip.png")
    shape.resize((8, 8)).save(made / "tiny.png")
    images = sorted(made.iterdir())
    assert (
        main(
            [
                "explain",
                *map(str, images),
                "--model",
                "demo:shapes",
                "--method",
                "gradient",
                "--out",
                str(tmp_path / "out"),
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "out" / "explanations.json").read_text())
    from gswfast.video import read_image

    shapes = {Path(r["input"]).name: tuple(read_image(r["output"]).shape[1:]) for r in results}
    assert shapes == {  # each with the legend strip under it
        "cmyk.jpg": (448 + LEGEND, 448),
        "grey.png": (448 + LEGEND, 448),
        "rgba.png": (448 + LEGEND, 448),
        "strip.png": (1 + LEGEND, 448),
        "tiny.png": (448 + LEGEND, 448),
    }
    from gswfast.video import read_video

    frames = list(read_video(files / "short.mp4")[0])
    for suffix, codec in ((".webm", "libvpx-vp9"), (".mkv", "mpeg4")):
        with av.open(str(made / f"clip{suffix}"), mode="w") as container:
            stream = container.add_stream(codec, rate=8)
            stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
            for frame in frames[:12]:
                picture = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")
                for packet in stream.encode(picture):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    assert (
        main(
            [
                "explain",
                str(made / "clip.webm"),
                str(made / "clip.mkv"),
                "--model",
                "demo:actions",
                "--frames",
                "8",
                "--out",
                str(tmp_path / "video"),
                "--quiet",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "video" / "explanations.json").read_text())
    assert [[w["first_frame"] for w in r["windows"]] for r in results] == [
        [0, 4],
        [0, 4],
    ]  # 12 frames: tail at 4


# ---------------------------------------------------------------- a user session: what broke


def test_out_holding_the_inputs_never_overwrites_them(files, tmp_path):
    """``--out`` the inputs' own folder: the outputs take the next free name (as inputs
    with the same stem do), and the input files stay as they were."""
    import shutil

    for name in ("shape.png", "short.mp4", "action.gif"):
        shutil.copy(files / name, tmp_path / name)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for name, model in (
        ("shape.png", "demo:shapes"),
        ("short.mp4", "demo:actions"),
        ("action.gif", "demo:actions"),
    ):
        argv = ["explain", str(tmp_path / name), "--model", model, "--frames", "8"]
        assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
        assert json.loads((tmp_path / "explanations.json").read_text())[0]["output"] != str(
            tmp_path / name
        )
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert {"shape-2.png", "short-2.mp4", "short-2.gif", "action-2.mp4", "action-2.gif"} <= {
        p.name for p in tmp_path.iterdir()
    }


def test_an_out_that_cannot_be_made_is_one_line(files, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for argv in (
        ["explain", str(files / "shape.png"), "--model", "demo:shapes"],
        ["explain-dataset", str(files / "shape.png"), "--model", "demo:shapes"],
        ["demo"],
    ):
        assert main([*argv, "--out", str(taken / "sub"), "--quiet"]) == 2
        _one_line_error(capsys, f"--out: {taken / 'sub'}", f"{taken} is not a folder")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "99999999999999999999"], "argument --target: expected an int from 0 to"),
        (["--seed", "99999999999999999999"], "argument --seed: expected an int from -2**63 to"),
        (["--seed", "-99999999999999999999"], "argument --seed: expected an int from -2**63 to"),
        (["--frames", "99999999999999999999"], "argument --frames: expected an int from 1 to"),
        (["--size", "100000"], "argument --size: expected an int from 1 to 4096, got 100000"),
    ],
)
def test_huge_numbers_are_one_clear_error(files, tmp_path, capsys, argv, message):
    for command in (["explain", str(files / "action.mp4")], ["explain-dataset", str(files)]):
        out = ["--out", str(tmp_path / "out")]
        assert main([*command, "--model", "demo:actions", *argv, *out, "--quiet"]) == 2
        _one_line_error(capsys, message)
        assert not (tmp_path / "out").exists()


def test_arch_with_a_named_model_is_refused(files, tmp_path, capsys):
    for command in (
        ["explain", str(files / "shape.png")],
        ["explain-dataset", str(files / "shape.png")],
    ):
        argv = [*command, "--model", "demo:shapes", "--arch", "torchvision:resnet18"]
        assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
        _one_line_error(capsys, "--arch: only a state_dict .pt --model takes --arch", "demo:shapes")
        assert not (tmp_path / "out").exists()


def test_hooked_methods_on_torchscript_say_why_not(files, tmp_path, capsys):
    """Grad-CAM and guided backprop hook modules, which TorchScript does not allow: a
    clear refusal, not advice (``--layer``) that fails on the next run."""
    script = str(files / "shapes_script.pt")
    for extra, method in (
        (["--method", "gradcam"], "gradcam"),
        (["--method", "gradcam", "--layer", "features.6"], "gradcam"),
        (["--method", "guided_backprop"], "guided_backprop"),
    ):
        argv = ["explain", str(files / "shape.png"), "--model", script, *extra]
        assert main([*argv, "--size", "64", "--out", str(tmp_path), "--quiet"]) == 2
        _one_line_error(capsys, f"method: {method} hooks the model's modules", "TorchScript")


def test_weights_that_are_a_torchscript_model_say_so(files, tmp_path, capsys):
    script = str(files / "shapes_script.pt")
    argv = ["explain", str(files / "shape.png"), "--model", "demo:shapes", "--weights", script]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    _one_line_error(capsys, f"--weights: {script} is a TorchScript model", f"--model {script}")


def test_a_file_without_a_video_stream_says_so(files, tmp_path, capsys):
    import av
    import numpy as np

    sound = tmp_path / "sound.mp4"
    with av.open(str(sound), mode="w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    argv = ["explain", str(sound), "--model", "demo:actions", "--out", str(tmp_path / "out")]
    assert main([*argv, "--quiet"]) == 2
    _one_line_error(capsys, f"{sound}: cannot decode it as a video (no video stream)")


def test_a_stream_that_fails_leaves_no_partial_files(files, tmp_path, capsys):
    import av

    from gswfast.video import read_video

    whole = tmp_path / "whole.mp4"  # the index first (faststart): frames decode until the cut
    with av.open(str(whole), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for frame in read_video(files / "action.mp4")[0]:
            picture = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = whole.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    argv = ["explain", str(cut), str(files / "short.mp4"), "--model", "demo:actions", "--stream"]
    assert main([*argv, "--frames", "8", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    _one_line_error(capsys, f"{cut}: the video is corrupt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "explanations.json",
        "short.labels.npz",
        "short.mp4",
        "short.timeline.jsonl",
    ]


def test_float_images_are_refused_not_read_black(files, tmp_path, capsys):
    """Pillow's mode F (float TIFFs) has no fixed range: converted to RGB, values in 0..1
    became a black picture, explained without a word."""
    import numpy as np
    from PIL import Image

    grey = np.asarray(Image.open(files / "shape.png").convert("L"), np.float32) / 255
    Image.fromarray(grey).save(tmp_path / "float.tiff")
    argv = ["explain", str(tmp_path / "float.tiff"), "--model", "demo:shapes"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = _one_line_error(capsys, "float.tiff: a floating-point image", "8 or 16 bits")
    assert "cannot read it" not in err


def test_photos_are_read_the_way_up_their_exif_says(files, tmp_path):
    """A phone's JPEG stores its pixels sideways with an EXIF orientation; every viewer
    turns it upright, and so must the explanation (it explained the sideways pixels)."""
    import numpy as np
    from PIL import Image

    from gswfast.video import read_image

    stored = np.zeros((100, 200, 3), np.uint8)
    stored[:, :100] = (255, 0, 0)  # landscape as stored: the left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: portrait, the top half red
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    pixels = read_image(tmp_path / "phone.jpg")
    assert pixels.shape == (3, 200, 100)
    assert pixels[0, :90].float().mean() > 200
    assert pixels[0, 110:].float().mean() < 50
    argv = ["explain", str(tmp_path / "phone.jpg"), "--model", "demo:shapes"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert read_image(tmp_path / "out" / "phone.png").shape == (3, 448 + LEGEND, 224)


def test_a_model_that_gives_nan_fails_its_inputs(files, tmp_path, capsys):
    """NaN weights: explain crashed drawing the picture, explain-dataset wrote NaN scores
    and called the item done."""
    for name in ("shapes", "actions"):
        state = load(name).state_dict()
        state["classifier.weight"] = state["classifier.weight"] * float("nan")
        torch.save(state, tmp_path / f"{name}.pt")
    for path, name, extra in (
        ("shape.png", "shapes", []),
        ("short.mp4", "actions", ["--frames", "8"]),
        ("short.mp4", "actions", ["--frames", "8", "--stream"]),
    ):
        argv = ["explain", str(files / path), "--model", f"demo:{name}", *extra]
        argv += ["--weights", str(tmp_path / f"{name}.pt"), "--method", "gradient"]
        assert main([*argv, "--out", str(tmp_path / "a"), "--quiet"]) == 2
        _one_line_error(capsys, f"{path}: the model demo:{name} failed", "segment_scores: NaN")
        assert not (tmp_path / "a").exists()
    argv = ["explain-dataset", str(files / "shape.png"), "--model", "demo:shapes", "--quiet"]
    argv += ["--weights", str(tmp_path / "shapes.pt"), "--method", "gradient"]
    assert main([*argv, "--out", str(tmp_path / "b")]) == 2
    (row,) = json.loads((tmp_path / "b" / "manifest.json").read_text())["items"]
    assert row["status"] == "failed"
    assert "segment_scores: NaN or infinite for sample(s) [0]" in row["reason"]


def test_inputs_with_names_near_the_limit_get_outputs_that_fit(files, tmp_path):
    """A 250-byte file name (the limit is 255) made ``<name>-2.png`` and
    ``<name>.timeline.jsonl`` too long: OSError, with a traceback."""
    image, video = tmp_path / f"i{'é' * 125}.png", tmp_path / f"{'v' * 246}.mp4"
    image.write_bytes((files / "shape.png").read_bytes())
    video.write_bytes((files / "short.mp4").read_bytes())
    out = tmp_path / "out"
    argv = ["explain", str(image), str(image), "--model", "demo:shapes", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    argv = ["explain", str(video), "--model", "demo:actions", "--stream", "--frames", "8"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    assert (
        len(list(out.iterdir())) == 2 + 2 + 3 + 1
    )  # 2 PNGs + labels, MP4 + timeline + labels, JSON
    assert all(len(p.name.encode()) <= 255 for p in out.iterdir())  # UTF-8: whole characters


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes: Linux")
def test_a_file_name_that_is_not_utf8_is_explained_and_listed(files, tmp_path):
    """``caf\\xe9.png`` (Latin-1): writing explanations.json raised UnicodeEncodeError and
    left it empty."""
    import os

    name = os.fsdecode(b"caf\xe9.png")
    (tmp_path / name).write_bytes((files / "shape.png").read_bytes())
    argv = ["explain", str(tmp_path / name), "--model", "demo:shapes"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (result,) = json.loads((tmp_path / "out" / "explanations.json").read_bytes())
    assert os.fsencode(result["input"]) == os.fsencode(tmp_path / name)
    assert Path(result["output"]).is_file()


def test_an_empty_model_or_layer_is_named_as_such(files, tmp_path, capsys):
    argv = ["explain", str(files / "shape.png"), "--out", str(tmp_path), "--quiet"]
    assert main([*argv, "--model", ""]) == 2
    _one_line_error(
        capsys,
        "--model: expected torchvision:NAME, timm:NAME, hf:FOLDER or demo:NAME or a .pt file, got ''",
    )
    assert main([*argv, "--model", "demo:shapes", "--method", "gradcam", "--layer", ""]) == 2
    _one_line_error(capsys, "layer: expected a module name such as 'features.")


def test_hugging_face_folders_in_the_command(files, tmp_path, capsys):
    # hf:FOLDER: a save_pretrained folder loaded offline with its own weights, its
    # preprocessor's size and normalisation; Grad-CAM on the last layer's first norm.
    transformers = pytest.importorskip("transformers")
    from gswfast.models import default_size, load_model, normaliser

    model = tiny_hf_vit(image_size=64, patch_size=16, width=64)
    folder = tmp_path / "vit"
    model.save_pretrained(folder)
    processor = transformers.ViTImageProcessor(
        size={"height": 64, "width": 64}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]
    )
    processor.save_pretrained(folder)
    capsys.readouterr()  # save_pretrained's progress bar
    spec = f"hf:{folder}"
    args = ["explain", str(files / "shape.png"), "--model", spec, "--quiet"]
    assert (
        main([*args, "--method", "gradcam", "--segments", "20", "--out", str(tmp_path / "o")]) == 0
    )
    assert capsys.readouterr().err == ""  # no loading progress bars in --quiet
    result = json.loads((tmp_path / "o" / "explanations.json").read_text())[0]
    assert (result["layer"], result["layout"]) == (
        "vit.layers.1.layernorm_before",
        "[B, 1 + 4*4, D]",
    )
    assert default_size(spec, None, "image") == 64
    loaded = load_model(spec)
    assert loaded.normalisation == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    assert not loaded.random_weights
    x = torch.rand(2, 3, 64, 64)
    normalise = normaliser("auto", loaded.normalisation, "cpu")
    assert normalise is not None
    with torch.no_grad():  # its own weights, not fresh random ones
        torch.testing.assert_close(loaded.module(normalise(x)).logits, model(normalise(x)).logits)
    (folder / "preprocessor_config.json").unlink()
    assert load_model(spec).normalisation == "imagenet"
    assert default_size(spec, None, "image") == 64  # the config's image_size
    assert main(["explain", str(files / "shape.png"), "--model", f"hf:{tmp_path}"]) == 2
    _one_line_error(capsys, "expected a folder holding a Hugging Face model's config.json")
    for weights in folder.glob("model.safetensors"):
        weights.unlink()
    assert main(["explain", str(files / "shape.png"), "--model", spec]) == 2
    _one_line_error(capsys, "cannot load it as an image classifier")


def test_timm_models_in_the_command(files, tmp_path, capsys):
    # timm:NAME: random weights from --seed, its own input size and normalisation, and
    # Grad-CAM on the layer the probe finds (the last block's norm1 of a ViT).
    timm = pytest.importorskip("timm")
    name = "vit_tiny_patch16_224"
    args = ["explain", str(files / "shape.png"), "--model", f"timm:{name}", "--quiet"]
    assert main([*args, "--method", "gradcam", "--segments", "20", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "explanations.json").read_text())[0]
    assert result["layer"] == "blocks.11.norm1"
    assert result["layout"] == "[B, 1 + 14*14, D]"
    from gswfast.models import default_size, load_model, normaliser

    assert default_size(f"timm:{name}", None, "image") == 224
    loaded = load_model(f"timm:{name}")
    config = timm.create_model(name, pretrained=False).pretrained_cfg
    assert loaded.normalisation == (tuple(config["mean"]), tuple(config["std"]))
    x = torch.rand(1, 3, 8, 8)
    normalise = normaliser("auto", loaded.normalisation, "cpu")
    assert normalise is not None
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(normalise(x), (x - mean) / std)
    assert main(["explain", str(files / "shape.png"), "--model", "timm:no_such_net"]) == 2
    _one_line_error(capsys, "unknown timm model 'no_such_net'")


class _Picky(torch.nn.Module):
    """Refuses bright inputs with its own exception: a TorchScript ``raise`` surfaces as
    ``torch.jit.Error``, which is neither a ValueError nor a RuntimeError."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.mean() > 0.5):
            raise ValueError("too bright for this model")
        return self.fc(x.mean((2, 3)))


def test_any_exception_of_the_model_fails_one_input_in_one_line(tmp_path, capsys):
    import warnings

    from gswfast import viz

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(_Picky()).save(str(tmp_path / "picky.pt"))
    folder = tmp_path / "in"
    folder.mkdir()
    viz.save_png(torch.full((3, 32, 32), 250, dtype=torch.uint8), folder / "a_bright.png")
    viz.save_png(torch.full((3, 32, 32), 20, dtype=torch.uint8), folder / "b_dark.png")
    paths = sorted(map(str, folder.iterdir()))
    argv = ["explain", *paths, "--model", str(tmp_path / "picky.pt"), "--method", "gradient"]
    argv += ["--segments", "4", "--normalize", "none", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0  # b was explained after a failed
    _one_line_error(capsys, "a_bright.png: the model", "torch.jit.Error: builtins.ValueError: too")
    records = json.loads((tmp_path / "o" / "explanations.json").read_text())
    assert [("error" in r, Path(r["input"]).name) for r in records] == [
        (True, "a_bright.png"),
        (False, "b_dark.png"),
    ]
    assert main([*argv, "--out", str(tmp_path / "s"), "--strict"]) == 1
    capsys.readouterr()
    # explain-dataset: the same, with the reason in failed.json
    data = ["explain-dataset", str(folder), "--model", str(tmp_path / "picky.pt")]
    data += ["--method", "gradient", "--segments", "4", "--normalize", "none", "--quiet"]
    data += ["--out", str(tmp_path / "d")]  # one batch: the bright image fails it alone
    assert main(data) == 0
    failed = json.loads(next((tmp_path / "d" / "items").glob("*.failed.json")).read_text())
    assert failed["reason"] == "torch.jit.Error: builtins.ValueError: too bright for this model"
    assert len(list((tmp_path / "d" / "items").glob("*.npz"))) == 1
    assert main([*data, "--strict"]) == 1


def test_messages_say_what_a_file_or_name_is_and_what_to_do(files, tmp_path, capsys):
    import torchvision

    model = torchvision.models.resnet18()  # --arch torchvision:resnet18 has 1000 classes
    torch.save(model, tmp_path / "pickled.pt")  # a whole pickled module
    wrapped = {f"module.{k}": v for k, v in model.state_dict().items()}  # DataParallel's names
    torch.save(wrapped, tmp_path / "wrapped.pt")
    png = str(files / "shape.png")
    common = ["--method", "gradient", "--segments", "8", "--quiet", "--out", str(tmp_path / "o")]
    assert main(["explain", png, "--model", str(tmp_path / "pickled.pt"), *common]) == 2
    _one_line_error(capsys, "is a pickled Python object (torch.save(model))", "state_dict()")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert (
        main(["explain", png, "--model", str(tmp_path / "weights.pt"), "--arch", "resnet18"]) == 2
    )
    err = _one_line_error(capsys, "--arch: expected torchvision:NAME")
    assert ".pt" not in err.split("got")[0]  # --arch cannot take a file
    arch = ["--arch", "torchvision:resnet18", "--model", str(tmp_path / "wrapped.pt")]
    assert main(["explain", png, *arch, *common]) == 0  # module. prefixes are dropped
    capsys.readouterr()
    assert main(["explain", str(files), "--model", "demo:shapes"]) == 2
    _one_line_error(capsys, "is a folder", f"gswfast explain-dataset {files} --out")


def _with_display_matrix(data: bytes, a: int, b: int, c: int, d: int) -> bytes:
    """An MP4's bytes with the 2x2 part of its video track's display matrix (the ``tkhd``
    box's, in 16.16 fixed point) set, as a phone writes it for a portrait clip."""
    import struct

    start = data.find(b"tkhd") + 4
    offset = start + (40 if data[start] == 0 else 52)  # version 0 or 1 of the box
    matrix = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    return data[:offset] + matrix + data[offset + 36 :]


@pytest.mark.parametrize(
    ("matrix", "turns"),
    [((0, 1, -1, 0), -1), ((-1, 0, 0, -1), 2), ((0, -1, 1, 0), 1), ((1, 0, 0, 1), 0)],
)
def test_videos_are_read_upright(tmp_path, matrix, turns):
    # A 64x32 clip whose left quarter is white, stored with the display matrix of a phone
    # held upright (a quarter turn clockwise: frame.rotation -90), upside down, the other
    # way, and none: the frames come as a player shows them.
    from gswfast.video import read_video, write_mp4

    clip = torch.zeros(3, 4, 32, 64, dtype=torch.uint8)
    clip[:, :, :, :16] = 255
    write_mp4(clip, tmp_path / "plain.mp4", fps=8)
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(_with_display_matrix((tmp_path / "plain.mp4").read_bytes(), *matrix))
    frames = list(read_video(rotated)[0])
    expected = torch.rot90(clip[:, 0], k=turns, dims=(-2, -1))
    assert len(frames) == 4
    assert frames[0].shape == expected.shape
    assert (frames[0].float() - expected.float()).abs().mean() < 8  # lossy H.264


def test_no_pictures_writes_the_json_alone(files, tmp_path):
    for name, extra in (
        ("shape.png", ["--model", "demo:shapes"]),
        ("short.mp4", ["--model", "demo:actions", "--frames", "8"]),
        ("short.mp4", ["--model", "demo:actions", "--frames", "8", "--stream"]),
    ):
        out = tmp_path / f"out{len(extra)}"
        argv = ["explain", str(files / name), *extra, "--method", "gradient", "--quiet"]
        assert main([*argv, "--no-pictures", "--out", str(out)]) == 0
        written = sorted("".join(p.suffixes) for p in out.iterdir())
        assert written == (
            [".json", ".labels.npz", ".timeline.jsonl"]
            if "--stream" in extra
            else [".json", ".labels.npz"]
        )
        (record,) = json.loads((out / "explanations.json").read_text())
        assert record["output"] is None


def test_pictures_equal_a_float_reference_within_one():
    # draw_picture looks colours up per segment and blends in int16; the reference paints
    # the heatmap, colours every pixel and blends in float32, as pictures were drawn before.
    import torch.nn.functional as F

    import gswfast as gsw
    from gswfast import render

    torch.manual_seed(0)
    clip = (torch.rand(1, 3, 4, 20, 28) * 255).to(torch.uint8)
    expl = gsw.explain(
        None,
        clip,
        segmentation=gsw.slic(clip, n_segments=12).labels,
        attribution=torch.randn(1, 4, 20, 28),
    )
    ours = render.draw_picture(expl, clip, k=2, shape=(60, 84), grey=False).int()
    # grey (the default): the same picture drawn over the grey copy, 0.299 R + 0.587 G + 0.114 B
    grey = (clip.double() * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1, 1)).sum(1)
    grey_clip = grey.round().to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1, -1)
    on_grey = render.draw_picture(expl, clip, k=2, shape=(60, 84)).int()
    expected = render.draw_picture(expl, grey_clip, k=2, shape=(60, 84), grey=False).int()
    assert (on_grey - expected).abs().max() <= 2  # luma in 1/256ths, resized once more
    rows, cols = torch.arange(60) * 20 // 60, torch.arange(84) * 28 // 84
    labels = expl.labels[..., rows, :][..., cols]
    assert torch.equal(labels, F.interpolate(expl.labels.float(), size=(60, 84)).int())
    rgb = render.resize_frames(clip, (60, 84)).float()
    heat = render.color_scores(gsw.paint(expl.segment_scores, labels)).movedim(-1, 1)
    reference = rgb * 0.5 + heat * 0.5
    yellow = torch.tensor(render.BOUNDARY_COLOUR).view(1, 3, 1, 1, 1).float()
    edge = render.boundaries(labels).unsqueeze(1)
    reference = torch.where(edge, 0.5 * reference + 0.5 * yellow, reference)
    top = render.outline(expl.top_k(2)[..., rows, :][..., cols]).unsqueeze(1)
    cyan = torch.tensor(render.TOP_K_COLOUR).view(1, 3, 1, 1, 1).float()
    reference = torch.where(top, cyan, reference).round()
    assert (ours - reference.int()).abs().max() <= 1
    last = render.draw_picture(expl, clip, k=2, shape=(60, 84), last=1, grey=False)
    assert torch.equal(last, ours[:, :, -1:].to(torch.uint8))


@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_grey_pictures_by_lookup_equal_the_blend_pixel_by_pixel(alpha):
    # The grey base draws through one table lookup per pixel; the colour path blends each
    # channel. Over a grey copy given as three equal channels they must agree exactly, for
    # every sample of a batch (different segment counts), boundaries and outlines included.
    import gswfast as gsw
    from gswfast import render

    torch.manual_seed(3)
    clip = (torch.rand(2, 3, 3, 18, 26) * 255).to(torch.uint8)
    segmentation = torch.stack([gsw.slic(clip[:1], n_segments=n).labels[0] for n in (6, 20)])
    expl = gsw.explain(None, clip, segmentation=segmentation, attribution=torch.randn(2, 3, 18, 26))
    assert expl.num_segments[0] != expl.num_segments[1]
    grey = render.luma(clip).expand(-1, 3, -1, -1, -1)
    for shape in [(54, 78), (31, 40)]:
        looked_up = render.draw_picture(expl, clip, k=2, shape=shape, alpha=alpha)
        blended = render.draw_picture(expl, grey, k=2, shape=shape, alpha=alpha, grey=False)
        assert torch.equal(looked_up, blended)


def test_mp4_writer_in_the_background_writes_the_same_and_reports_failures(tmp_path):
    from gswfast.video import Mp4Writer, read_video

    clip = (torch.rand(3, 6, 32, 48) * 255).to(torch.uint8)
    for background in (False, True):
        with Mp4Writer(tmp_path / f"{background}.mp4", 8, background=background) as movie:
            movie.write(clip[:, :3])
            movie.write(clip[:, 3:])
    plain = torch.stack(list(read_video(tmp_path / "False.mp4")[0]))
    threaded = torch.stack(list(read_video(tmp_path / "True.mp4")[0]))
    assert plain.shape == threaded.shape == (6, 3, 32, 48)
    assert (plain.float() - threaded.float()).abs().mean() < 4  # H.264 is lossy
    movie = Mp4Writer(tmp_path / "bad.mp4", 8, background=True)
    movie.write(clip[:, :2])
    movie.write(torch.rand(3, 2, 32, 48))  # float frames: PyAV refuses them on the thread
    with pytest.raises(RuntimeError, match="writing the MP4 failed"):
        movie.close()


def test_warnings_are_one_line_and_quiet_silences_them(files, tmp_path, capsys):
    # a model whose output ignores the input: every segment ties, which warns
    state = load("shapes").state_dict()
    state["classifier.weight"] = state["classifier.weight"] * 0
    torch.save(state, tmp_path / "flat.pt")
    argv = ["explain", str(files / "shape.png"), "--model", "demo:shapes", "--method", "gradient"]
    argv += ["--weights", str(tmp_path / "flat.pt")]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any(line.startswith("gswfast: warning: every segment scores the same") for line in err)
    assert all(line.startswith(("gswfast", "wrote ")) for line in err), err  # no source lines
    (record,) = json.loads((tmp_path / "a" / "explanations.json").read_text())
    assert record["tied"] is True
    assert main([*argv, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("method", ["lime", "occlusion", "kernel_shap", "rise"])
def test_region_methods_in_the_command_equal_the_api(files, tmp_path, method):
    import gswfast as gsw
    from gswfast import render
    from gswfast.video import read_image

    samples = [] if method == "occlusion" else ["--samples", "32"]
    design = ["--design", "sobol"] if method == "lime" else []
    argv = ["explain", str(files / "shape.png"), "--model", "demo:shapes", "--method", method]
    argv += [*samples, *design, "--segments", "12", "--quiet", "--out", str(tmp_path)]
    assert main(argv) == 0
    (record,) = json.loads((tmp_path / "explanations.json").read_text())
    assert record["method"] == method
    image = render.resize_frames(read_image(files / "shape.png")[None], 64)
    options = {} if method == "occlusion" else {"n_samples": 32}
    options.update({"design": "sobol"} if method == "lime" else {})
    expected = getattr(gsw, method)(load("shapes"), image, None, None, n_segments=12, **options)
    assert record["segment_scores"] == pytest.approx(
        expected.segment_scores[0].tolist(), rel=1e-4, abs=1e-6
    )


def test_swag_samples_and_design_reach_the_methods_or_are_refused(files, tmp_path, capsys):
    png, clip = str(files / "shape.png"), str(files / "short.mp4")
    base = ["--model", "demo:shapes", "--quiet", "--out", str(tmp_path / "o")]
    assert main(["explain", png, *base, "--method", "gradient", "--swag"]) == 0
    assert main(["explain", png, *base, "--method", "lime", "--samples", "8", "--stream"]) == 0
    assert (
        main(
            ["explain", png, *base, "--method", "banzhaf", "--samples", "4", "--design", "uniform"]
        )
        == 0
    )
    for argv, message in (
        ([png, *base, "--method", "gradient", "--samples", "4"], "--samples: only lime"),
        ([png, *base, "--method", "rise", "--design", "sobol"], "--design: only lime and banzhaf"),
        ([png, *base, "--method", "lime", "--swag"], "--swag: SWAG builds segments"),
        ([png, *base, "--method", "lime", "--design", "zigzag"], "design: expected one of"),
        (
            [
                clip,
                "--model",
                "demo:actions",
                "--method",
                "lime",
                "--stream",
                "--out",
                str(tmp_path),
            ],
            "--stream: the streaming explainer runs",
        ),
    ):
        assert main(["explain", *argv]) == 2, argv
        _one_line_error(capsys, message)


def test_explain_dataset_takes_the_region_methods(files, tmp_path):
    from gswfast.dataset import explain_dataset

    manifest = explain_dataset(
        files / "shape.png", tmp_path, "demo:shapes", method="lime", n_samples=16, quiet=True
    )
    assert manifest["totals"]["done"] == 1
    assert manifest["settings"]["method"] == "lime"


def test_the_json_names_the_class_and_points_to_the_labels(files, tmp_path):
    import numpy as np

    from gswfast.demo import ACTIONS, SHAPES

    argv = ["explain", str(files / "shape.png"), str(files / "short.mp4"), "--frames", "8"]
    assert main([*argv, "--model", "demo:shapes", "--quiet", "--out", str(tmp_path / "i")]) == 0
    image, _ = json.loads((tmp_path / "i" / "explanations.json").read_text())
    assert image["class"] == SHAPES[image["target"]]
    with np.load(image["labels"]) as saved:
        labels = saved["labels"]
    assert labels.shape == (64, 64)
    assert labels.max() + 1 == len(image["segment_scores"])  # the ids the scores index
    assert main([*argv, "--model", "demo:actions", "--quiet", "--out", str(tmp_path / "v")]) == 0
    _, video = json.loads((tmp_path / "v" / "explanations.json").read_text())
    with np.load(video["labels"]) as saved:
        assert sorted(saved.files) == sorted(f"window_{w['first_frame']}" for w in video["windows"])
        first = video["windows"][0]
        window = saved[f"window_{first['first_frame']}"]
    assert window.shape == (8, 64, 64)  # the demo model's size
    assert window.max() + 1 == len(first["segment_scores"])
    assert first["class"] == ACTIONS[first["target"]]
    # --stream: each window's labels as it finishes, beside the timeline
    stream = [*argv[:1], str(files / "short.mp4"), "--frames", "8", "--stream"]
    assert main([*stream, "--model", "demo:actions", "--quiet", "--out", str(tmp_path / "s")]) == 0
    (record,) = json.loads((tmp_path / "s" / "explanations.json").read_text())
    timeline = [json.loads(line) for line in Path(record["timeline"]).read_text().splitlines()]
    with np.load(record["labels"]) as saved:
        assert sorted(saved.files) == sorted(f"window_{w['first_frame']}" for w in timeline)
        last = saved[f"window_{timeline[-1]['first_frame']}"]
    assert last.dtype == np.int32
    assert last.max() + 1 == len(timeline[-1]["segment_scores"])


class _FeaturesFirst(torch.nn.Module):
    """Returns (features [B, 4, H, W], logits): the first item is no [B, classes] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.conv(x)
        return features, features.mean((2, 3))


def test_an_output_the_command_cannot_read_gets_a_command_hint(files, tmp_path, capsys):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
        torch.jit.script(_FeaturesFirst()).save(str(tmp_path / "features.pt"))
    argv = ["explain", str(files / "shape.png"), "--model", str(tmp_path / "features.pt")]
    assert main([*argv, "--method", "gradient", "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys, "expected logits [B, classes]", "the command explains")
    assert "pass target=" not in err


def test_pictures_carry_the_class_the_score_and_the_colour_scale(files, tmp_path):
    from gswfast.demo import SHAPES
    from gswfast.video import read_image

    argv = ["explain", str(files / "shape.png"), "--model", "demo:shapes", "--method", "gradient"]
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 0
    (record,) = json.loads((tmp_path / "explanations.json").read_text())
    picture = read_image(tmp_path / "shape.png")
    assert picture.shape == (3, 448 + LEGEND, 448)  # the legend strip under the picture
    strip = picture[:, 448:]
    assert strip[:, 16:26].float().std(dim=2).mean() > 10  # the colour ramp varies
    assert record["class"] in SHAPES


def test_draw_picture_refuses_what_it_cannot_draw():
    import gswfast as gsw
    from gswfast import render

    clip = torch.zeros(1, 3, 2, 8, 8)
    labels = torch.zeros(1, 2, 8, 8, dtype=torch.int32)
    expl = gsw.explain(None, clip, segmentation=labels, attribution=torch.ones(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0, 1\], got 1.5"):
        render.draw_picture(expl, clip, alpha=1.5)
    with pytest.raises(ValueError, match="last: expected an int >= 1 or None, got 0"):
        render.draw_picture(expl, clip, last=0)


# ------------------------------------------------------------------ detectors and segmenters

DETECTOR = "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn"


def test_a_detector_explains_its_best_boxes_with_a_picture_per_box(files, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    argv = ["explain", str(files / "shape.png"), str(files / "shape.jpg"), "--model", DETECTOR]
    argv += ["--boxes", "2", "--box-threshold", "0", "--size", "128", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = json.loads((out / "explanations.json").read_text())
    assert [Path(r["input"]).name for r in records] == ["shape.png", "shape.jpg"]
    for record in records:
        assert record["method"] == "input_x_gradient"
        assert len(record["boxes"]) == 2
        scores = [box["score"] for box in record["boxes"]]
        assert scores == sorted(scores, reverse=True)
        for box in record["boxes"]:
            x1, y1, x2, y2 = box["box"]  # in the file's pixels (64 x 64)
            assert 0 <= x1 <= x2 <= 64
            assert 0 <= y1 <= y2 <= 64
            assert isinstance(box["class"], str)  # COCO's names, from torchvision's metadata
            assert len(box["segment_scores"]) == len(box["ranking"])
            with Image.open(box["picture"]) as picture:
                assert picture.size == (448, 448 + 40)
        with Image.open(record["output"]) as sheet:  # the boxes side by side
            assert sheet.size == (2 * 448 + 4, 448 + 40)
        labels = np.load(record["labels"])["labels"]
        assert labels.shape == (128, 128)


def test_a_detector_with_no_box_above_the_threshold_says_so(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(files / "shape.png"), "--model", DETECTOR, "--size", "128"]
    assert main([*argv, "--box-threshold", "1", "--out", str(out)]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert record["boxes"] == []
    assert 0 <= record["best_score"] < 1
    assert "no box scored 1.0 or more" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--boxes", "0", "argument --boxes: expected an int >= 1, got 0"),
        ("--box-threshold", "1.5", "argument --box-threshold: expected a number from 0 to 1"),
        ("--box-threshold", "nan", "argument --box-threshold: expected a number from 0 to 1"),
        ("--classes", "1,x", "argument --classes: expected classes >= 0 separated by commas"),
        ("--classes", "0,0", "argument --classes: expected distinct classes, got '0,0'"),
    ],
)
def test_bad_box_and_class_options_are_one_line(files, tmp_path, capsys, flag, value, message):
    argv = ["explain", str(files / "shape.png"), "--model", DETECTOR, flag, value]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, message)


def test_a_segmenter_explains_classes_over_their_pixels(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain", str(files / "shape.png"), "--model", "torchvision:lraspp_mobilenet_v3_large"]
    argv += ["--size", "96", "--out", str(out), "--quiet"]
    assert main(argv) == 0  # the class given the most pixels
    ((given,),) = [r["classes"] for r in json.loads((out / "explanations.json").read_text())]
    assert given["pixels"] > 0
    assert any(score != 0 for score in given["segment_scores"])
    assert main([*argv, "--classes", "0,5"]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert [c["target"] for c in record["classes"]] == [0, 5]
    assert [c["class"] for c in record["classes"]] == ["__background__", "bottle"]  # VOC
    assert sum(c["pixels"] for c in record["classes"]) <= 96 * 96
    assert all(Path(c["picture"]).name.startswith("shape.class") for c in record["classes"])
    assert main([*argv, "--classes", "21"]) == 2
    _one_line_error(capsys, "--classes 21: out of range for a model with 21 classes")


@pytest.fixture(scope="module")
def moving_scene(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """A 12-frame MP4 of a demo detection scene sliding right one pixel per frame (its
    shapes wrap around the edge), and its true boxes at frame 0 ``[2, 4]``."""
    from gswfast.demo.data import detection_scenes
    from gswfast.video import write_mp4

    scene = detection_scenes(1, generator=torch.Generator().manual_seed(2))
    frames = [torch.roll(scene.images[0], shifts=t, dims=-1) for t in range(12)]
    path = tmp_path_factory.mktemp("scene") / "scene.mp4"
    write_mp4((torch.stack(frames, 1) * 255).round().to(torch.uint8), path, fps=8)
    return path, scene.boxes[0]


def test_a_detector_explains_a_video_frame_by_frame_with_warm_started_superpixels(
    moving_scene, tmp_path
):
    import av

    import gswfast as gsw
    from gswfast.video import read_video

    path, truth = moving_scene
    out = tmp_path / "out"
    argv = ["explain", str(path), "--model", "demo:detector", "--boxes", "3", "--stride", "4"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert (record["stride"], record["frames_seen"], record["frames_explained"]) == (4, 12, 3)
    assert [f["frame"] for f in record["frames"]] == [0, 4, 8]
    for frame in record["frames"]:  # both shapes found in every frame, moved with the scene
        for true_box in truth.tolist():
            moved = [true_box[0] + frame["frame"], true_box[1], true_box[2] + frame["frame"]]
            moved.append(true_box[3])
            nearest = min(
                max(abs(a - b) for a, b in zip(box["box"], moved, strict=True))
                for box in frame["boxes"]
            )
            assert nearest <= 4
        for box in frame["boxes"]:
            assert len(box["segment_scores"]) == len(box["ranking"])
    with av.open(record["output"]) as movie:  # the explained frames at fps / stride
        stream = movie.streams.video[0]
        assert (stream.frames, float(stream.average_rate)) == (3, 2.0)
        assert (stream.width, stream.height) == (3 * 448 + 2 * 4, 448 + 40)  # 3 columns
    assert (out / "scene.gif").exists()
    # Each frame's superpixels are SLIC's warm-started from the last explained frame's:
    # frame 8's labels are those of the chain 0 -> 4 -> 8 (a cold start on frame 8 differs)
    labels = np.load(record["labels"])
    assert sorted(labels.files) == ["frame_0", "frame_4", "frame_8"]
    frames, _ = read_video(path)
    kept = [frame[None] for index, frame in enumerate(frames) if index % 4 == 0]
    seg = None
    for frame in kept:
        seg = gsw.slic(frame, n_segments=50, compactness=10.0, init=seg)
    assert np.array_equal(labels["frame_8"], seg.labels[0].numpy())
    cold = gsw.slic(kept[-1], n_segments=50, compactness=10.0).labels[0].numpy()
    assert not np.array_equal(labels["frame_8"], cold)


def test_a_stream_stride_past_the_window_is_refused_for_classifiers_only(files, tmp_path, capsys):
    # a classifier's stream explains windows of --frames, --stride apart: a stride past the
    # window would skip frames; a detector explains single frames, so any stride is fine
    argv = ["explain", str(files / "action.mp4"), "--stream", "--frames", "4", "--stride", "10"]
    assert main([*argv, "--model", "demo:actions", "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "--stride 10: --stream needs --stride <= --frames (4)")


def test_a_detector_streams_a_video_with_a_region_method(moving_scene, tmp_path):
    path, _ = moving_scene
    out = tmp_path / "out"
    argv = ["explain", str(path), "--model", "demo:detector", "--boxes", "2", "--stream"]
    argv += ["--stride", "6", "--method", "occlusion", "--no-pictures", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    # --frames (a classifier's window) does not bound a detector's stride
    assert main([*argv, "--stride", "20", "--out", str(tmp_path / "far"), "--quiet"]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert "frames" not in record  # streamed: a line per frame in the timeline
    lines = Path(record["timeline"]).read_text().splitlines()
    assert record["frames_explained"] == len(lines) == 2
    for line, frame in zip(lines, [0, 6], strict=True):
        entry = json.loads(line)
        assert entry["frame"] == frame
        assert len(entry["boxes"]) == 2
        assert all(any(v != 0 for v in box["segment_scores"]) for box in entry["boxes"])
    assert not (out / "scene.mp4").exists()


def test_a_segmenter_explains_a_video_frame_by_frame(files, tmp_path, capsys):
    import fractions

    import av
    from PIL import Image

    out = tmp_path / "out"
    argv = ["explain", str(files / "short.mp4"), "--model", "torchvision:lraspp_mobilenet_v3_large"]
    argv += ["--size", "64", "--classes", "0,5", "--stride", "10", "--out", str(out)]
    assert main(argv) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [0, 10, 20]
    for frame in record["frames"]:
        assert [c["target"] for c in frame["classes"]] == [0, 5]
        assert [c["class"] for c in frame["classes"]] == ["__background__", "bottle"]
    with Image.open(out / "short.gif") as preview:  # half the sheet of 2 columns
        assert preview.size == ((2 * 448 + 4) // 2, (448 + 40) // 2)
    with av.open(record["output"]) as movie:  # 8 fps at stride 10: 4/5 fps, not rounded
        assert movie.streams.video[0].average_rate == fractions.Fraction(4, 5)
    notes = [line for line in capsys.readouterr().err.splitlines() if "gswfast: note:" in line]
    empty = {c["target"] for f in record["frames"] for c in f["classes"] if c["pixels"] == 0}
    assert len(notes) == len(empty)  # a line per class given no pixel, not one per frame
    for c in empty:
        assert sum(f"class {c} no pixel" in note for note in notes) == 1


def test_too_many_columns_for_a_videos_pictures_are_refused(moving_scene, files, tmp_path, capsys):
    path, _ = moving_scene
    argv = ["explain", str(files / "shape.png"), str(path), "--model", "demo:detector"]
    argv += ["--boxes", "107", "--box-threshold", "0"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "107 columns do not fit a video's pictures (at most 106)")
    assert not (tmp_path / "out").exists()  # refused before the image's pictures were written
    argv = ["explain", str(path), "--model", "demo:detector", "--boxes", "107"]
    argv[-1] = "106"  # the most that fit: each column 32 pixels wide
    assert main([*argv, "--box-threshold", "0.9", "--out", str(tmp_path / "out"), "--quiet"]) == 0


def test_explain_dataset_takes_detectors_and_segmenters(moving_scene, files, tmp_path, capsys):
    import shutil

    from PIL import Image

    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(moving_scene[0], source / "scene.mp4")
    shutil.copy(files / "shape.png", source / "shape.png")
    out = tmp_path / "out"
    argv = ["explain-dataset", str(source), "--model", "demo:detector", "--boxes", "2"]
    assert main([*argv, "--stride", "5", "--pictures", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    keys = [item["item"] for item in manifest["items"]]
    assert keys == [
        "scene.mp4@0000000",
        "scene.mp4@0000005",
        "scene.mp4@0000010",
        "shape.png",
    ]  # frames 5 apart from 0, as gswfast explain picks them
    assert manifest["settings"]["boxes"] == 2
    assert manifest["settings"]["box_threshold"] == 0.5
    assert all(item["status"] == "done" for item in manifest["items"])
    first = np.load(out / "items" / "scene.mp4@0000000.npz")
    rows = len(first["rows"])
    assert rows == 2
    assert first["segment_scores"].shape[0] == first["boxes"].shape[0] == rows
    assert first["labels"].shape == (96, 96)
    assert first["ranking"].shape == first["segment_scores"].shape
    assert manifest["items"][0]["target"] == first["target"].tolist()
    with Image.open(out / "items" / "scene.mp4@0000000.png") as sheet:
        assert sheet.size == (2 * 448 + 4, 448 + 40)
    # a rerun with another --boxes refuses: the results were made with 2
    assert main([*argv[:-1], "3", "--out", str(out)]) == 2
    _one_line_error(capsys, "boxes 2 -> 3")
    out = tmp_path / "segmenter"  # the same folder through a segmenter
    argv = ["explain-dataset", str(source), "--model", "torchvision:lraspp_mobilenet_v3_large"]
    argv += ["--size", "64", "--stride", "6", "--classes", "0,5"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [item["item"] for item in manifest["items"]] == [
        "scene.mp4@0000000",
        "scene.mp4@0000006",
        "shape.png",
    ]
    for item in manifest["items"]:
        result = np.load(item["output"])
        assert result["target"].tolist() == item["target"] == [0, 5]
        assert list(result["rows"]) == ["class0", "class5"]
        assert result["pixels"].sum() <= 64 * 64
        assert result["labels"].shape == (64, 64)
    # a class the segmenter lacks stops the job before it records its settings, so the
    # corrected rerun is not refused as "made with other settings"
    out = tmp_path / "wrong_class"
    argv[-1] = "50"
    assert main([*argv, "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "--classes 50: out of range for a model with 21 classes")
    assert not (out / "settings.json").exists()
    argv[-1] = "5"
    assert main([*argv, "--out", str(out), "--quiet"]) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"boxes": 0}, "--boxes: expected an int >= 1, got 0"),
        ({"box_threshold": 1.5}, "--box-threshold: expected a number from 0 to 1, got 1.5"),
        ({"classes": [-1]}, "--classes: expected a list of distinct classes >= 0, got [-1]"),
        ({"classes": [1, 1]}, "--classes: expected a list of distinct classes >= 0, got [1, 1]"),
    ],
)
def test_explain_dataset_checks_row_options_from_python(files, tmp_path, options, message):
    from gswfast.dataset import explain_dataset

    model = "demo:detector" if "classes" not in options else "torchvision:lraspp_mobilenet_v3_large"
    with pytest.raises(UserError, match=re.escape(message)):
        explain_dataset(files / "shape.png", tmp_path / "out", model, quiet=True, **options)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--boxes", "0", "argument --boxes: expected an int >= 1, got 0"),
        ("--box-threshold", "-1", "argument --box-threshold: expected a number from 0 to 1"),
        ("--classes", "2", "--classes: not for a detection model"),
        ("--target", "2", "--target: not for a detection model"),
    ],
)
def test_explain_dataset_refuses_bad_row_options_in_one_line(
    files, tmp_path, capsys, flag, value, message
):
    argv = ["explain-dataset", str(files / "shape.png"), "--model", "demo:detector", flag, value]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, message)


def test_the_demo_detector_finds_and_draws_the_true_boxes_of_a_wide_scene(tmp_path):
    # a demo scene enlarged 2x and padded to 192 x 240 (the model sees 96 x 120, its own
    # scale): the boxes come back in the file's pixels, on the true ones (within 8 pixels)
    from PIL import Image

    from gswfast.demo import SHAPES
    from gswfast.demo.data import detection_scenes

    scene = detection_scenes(1, generator=torch.Generator().manual_seed(2))
    wide = torch.full((3, 192, 240), 0.5)
    wide[:, :, :192] = torch.nn.functional.interpolate(scene.images, scale_factor=2)[0]
    Image.fromarray((wide.permute(1, 2, 0) * 255).byte().numpy()).save(tmp_path / "wide.png")
    out = tmp_path / "out"
    argv = ["explain", str(tmp_path / "wide.png"), "--model", "demo:detector", "--boxes", "2"]
    assert main([*argv, "--size", "120", "--out", str(out), "--quiet"]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    found = sorted(record["boxes"], key=lambda box: box["box"][0])
    assert len(found) == 2
    for box, truth in zip(found, scene.boxes[0] * 2, strict=True):
        assert max(abs(a - b) for a, b in zip(box["box"], truth.tolist(), strict=True)) <= 8
        assert box["class"] == ("__background__", *SHAPES)[box["target"]]
        assert box["score"] >= 0.5
    with Image.open(record["output"]) as sheet:
        assert sheet.size == (2 * 448 + 4, 358 + 40)  # 448 x 358: the file's aspect ratio


@pytest.mark.parametrize(
    ("model", "flag", "value"),
    [
        ("demo:detector", "--target", "1"),
        ("demo:detector", "--classes", "1"),
        ("demo:shapes", "--boxes", "2"),
        ("demo:shapes", "--box-threshold", "0.2"),
        ("torchvision:lraspp_mobilenet_v3_large", "--boxes", "2"),
    ],
)
def test_options_of_another_kind_of_model_are_refused(files, tmp_path, capsys, model, flag, value):
    argv = ["explain", str(files / "shape.png"), "--model", model, flag, value]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, f"{flag}: not for a ")


def test_box_pictures_never_overwrite_an_input_and_swag_keeps_each_boxs_segments(files, tmp_path):
    import shutil

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(files / "shape.png", out / "shape.box0.png")  # named like a box picture of shape
    before = (out / "shape.box0.png").read_bytes()
    argv = ["explain", str(files / "shape.png"), str(out / "shape.box0.png")]
    argv += ["--model", DETECTOR, "--box-threshold", "0", "--boxes", "2", "--size", "96"]
    assert main([*argv, "--swag", "--out", str(out), "--quiet"]) == 0
    assert (out / "shape.box0.png").read_bytes() == before
    records = json.loads((out / "explanations.json").read_text())
    first = records[0]
    assert Path(first["output"]).name == "shape-2.png"
    labels = np.load(first["labels"])
    if "labels" not in labels:  # SWAG's segments differ from box to box: one array each
        assert sorted(labels.files) == ["box0", "box1"]
        for box, name in zip(first["boxes"], ["box0", "box1"], strict=True):
            assert len(box["segment_scores"]) == int(labels[name].max()) + 1


def test_a_torchvision_detector_explains_a_short_video(files, tmp_path):
    out = tmp_path / "out"
    argv = ["explain", str(files / "short.mp4"), "--model", DETECTOR, "--box-threshold", "0"]
    argv += ["--boxes", "1", "--stride", "12", "--size", "96", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert [f["frame"] for f in record["frames"]] == [0, 12]
    for frame in record["frames"]:
        (box,) = frame["boxes"]
        assert isinstance(box["class"], str)  # COCO's names
        assert all(0 <= v <= 64 for v in box["box"])  # the file's pixels (64 x 64)
    assert np.load(record["labels"])["frame_12"].shape == (96, 96)


def test_a_detectors_notes_on_a_video_come_once_per_kind(moving_scene, tmp_path, capsys):
    path, _ = moving_scene
    argv = ["explain", str(path), "--model", "demo:detector", "--box-threshold", "1"]
    assert main([*argv, "--stride", "1", "--out", str(tmp_path / "out")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "gswfast: note:" in line]
    assert len(notes) == 1, notes  # 12 frames, no box above 1 in any: one line
    assert notes[0].endswith("(and 11 more frame(s) alike)")
    (record,) = json.loads((tmp_path / "out" / "explanations.json").read_text())
    assert all(frame["boxes"] == [] for frame in record["frames"])


def test_a_slow_gif_never_overflows_a_frames_delay(tmp_path):
    # Pillow merges identical frames and adds their delays: 12 frames of 60 s each would
    # pass the 16-bit delay of a GIF frame
    from PIL import Image

    from gswfast import viz

    viz.save_gif(torch.full((3, 12, 8, 8), 100, dtype=torch.uint8), tmp_path / "s.gif", 1 / 60)
    with Image.open(tmp_path / "s.gif") as gif:
        assert gif.info["duration"] <= 655_350


def test_a_video_without_a_decodable_frame_fails_through_a_detector(
    moving_scene, tmp_path, capsys, monkeypatch
):
    # a container whose stream yields no frame (a cut MKV, say): stands in for the decoder
    import gswfast.video

    monkeypatch.setattr(gswfast.video, "read_video", lambda path: (iter(()), 8.0))
    out = tmp_path / "out"
    argv = ["explain", str(moving_scene[0]), "--model", "demo:detector", "--out", str(out)]
    assert main(argv) == 2  # its only input failed
    assert "scene.mp4: no frame could be decoded" in capsys.readouterr().err
    assert not out.exists()  # no MP4, labels or GIF left behind


@pytest.mark.cuda
@pytest.mark.parametrize("model", ["demo:detector", "torchvision:lraspp_mobilenet_v3_large"])
def test_detector_and_segmenter_videos_run_on_cuda(moving_scene, tmp_path, model):
    # the frames' warm-started superpixels and a segmenter's rows (the image's segments
    # selected once per class) stay on the GPU: no tensor of the CPU meets them
    out = tmp_path / "out"
    argv = ["explain", str(moving_scene[0]), "--model", model, "--device", "cuda"]
    argv += (
        ["--size", "96", "--box-threshold", "0"] if model == "demo:detector" else ["--size", "96"]
    )
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    (record,) = json.loads((out / "explanations.json").read_text())
    assert "error" not in record
    assert record["frames_explained"] == 3
