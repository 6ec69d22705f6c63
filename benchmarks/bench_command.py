"""``gswfast explain`` on a video with its pictures against the same run without them.

Issue 30's goal: pictures (the MP4, the GIF preview) cost at most 1.3x the command without
them (``--no-pictures``), for ``--stream`` and for whole videos. Each case runs the whole
command in this process (model loading, decoding, segmentation, explanation, JSON), on a
64-frame clip of 112x112 written once per session; the group's ``x gswfast time`` column
(``benchmarks/summarize.py``) is the ratio, the run without pictures being the baseline
(role ``gswfast``).

Cases. The goal is measured with torchvision's r2plus1d_18 (random weights, Grad-CAM: the
command's default for videos) as a stream at the command's default ``--stride 4`` and as
whole videos (windows of 16 frames, every frame drawn). The demo action model's cases are
kept to show the floor: it explains a 16-frame window in about 40 ms on 2 cores, less than
x264 takes to encode those 16 frames at 448x448 (about 80 ms), so no drawing makes its
pictures cost 1.3x; drawing at the clip's own 112 pixels would, but pictures that small
cannot carry their legend (a decision, written in the docs' performance page).
"""

from __future__ import annotations

import pytest
import torch

from gswfast.cli import main
from gswfast.demo import action_clips
from gswfast.video import write_mp4

pytest.importorskip("av")

R2PLUS1D = ["--model", "torchvision:r2plus1d_18"]
CASES = {
    "stream-r2plus1d_18-stride4": [*R2PLUS1D, "--stream", "--stride", "4"],
    "stream-demo_actions-stride1": ["--model", "demo:actions", "--stream", "--stride", "1"],
    "whole-r2plus1d_18": [*R2PLUS1D, "--frames", "16"],
    "whole-demo_actions": ["--model", "demo:actions", "--frames", "16"],
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_command") / "clip.mp4"
    frames = action_clips(1, frames=64, size=112, generator=torch.Generator().manual_seed(1))
    write_mp4((frames.images[0] * 255).round().to(torch.uint8), path, fps=8)
    return path


@pytest.mark.parametrize("pictures", [True, False], ids=["pictures", "no_pictures"])
@pytest.mark.parametrize("case", list(CASES))
def bench_cpu_explain_video_pictures(benchmark, clip, tmp_path, case, pictures):
    benchmark.group = f"cpu-command-{case}-64x112x112"
    argv = ["explain", str(clip), *CASES[case], "--method", "gradcam", "--quiet"]
    argv += [] if pictures else ["--no-pictures"]
    outs = iter(range(1000))

    def run() -> int:
        return main([*argv, "--out", str(tmp_path / f"out{next(outs)}")])

    code = benchmark.pedantic(run, rounds=2, warmup_rounds=0)
    benchmark.extra_info.update(
        role="with_pictures" if pictures else "gswfast", threads=torch.get_num_threads()
    )
    assert code == 0
    written = {p.suffix for p in (tmp_path / "out0").iterdir()}
    assert (".mp4" in written) == pictures
