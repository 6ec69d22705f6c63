"""State between calls: a sequence of calls in one process gives what each call gives alone.

The CPU kernels keep scratch buffers between calls on each thread (slic_cpu.cpp:
Workspace, ConnectivityScratch), sized by the call that uses them. A call "alone, in a
fresh state" is the same call on a new thread, whose thread-local scratch starts empty.
`make sanitize` runs this file and test_state_machine.py (random sequences) under
AddressSanitizer and UBSan: an overflow is reported there even where the result happens to
come out right.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import torch

import gswfast as gsw

T = TypeVar("T")


def on_fresh_thread(fn: Callable[[], T]) -> T:
    """fn() on a new thread: fresh thread-local scratch (and its own OpenMP team)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised on the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


# ------------------------------------------------------------------------ inputs


def make_images(
    seed: int, batch: int, channels: int, spatial: tuple[int, ...], dtype: torch.dtype, kind: str
) -> torch.Tensor:
    """``[B, C, H, W]`` or ``[B, C, T, H, W]`` in ``dtype``'s nominal range: noise, or
    blocks of colour (long runs, few components) with a little noise."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, *spatial)
    if kind == "noise":
        x = torch.rand(shape, generator=g)
    else:
        coarse = torch.rand((batch, channels, *[max(1, s // 6) for s in spatial]), generator=g)
        mode = "nearest"
        x = torch.nn.functional.interpolate(coarse, size=spatial, mode=mode)
        x = (x + 0.05 * torch.rand(shape, generator=g)).clamp(0, 1)
    if dtype == torch.uint8:
        return (x * 255).round().to(torch.uint8)
    if dtype == torch.uint16:
        return (x * 65535).round().to(torch.int32).to(torch.uint16)
    return x.to(dtype)


def make_mask(seed: int, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """bool ``[B, (T), H, W]``: a random box per sample (every sample, every frame, holds
    a True pixel), sometimes the whole extent."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros((batch, *spatial), dtype=torch.bool)
    h, w = spatial[-2:]
    for b in range(batch):
        y0 = int(torch.randint(0, h, (1,), generator=g))
        x0 = int(torch.randint(0, w, (1,), generator=g))
        y1 = int(torch.randint(y0 + 1, h + 1, (1,), generator=g))
        x1 = int(torch.randint(x0 + 1, w + 1, (1,), generator=g))
        mask[b, ..., y0:y1, x0:x1] = True
    return mask


@dataclass(frozen=True)
class SlicCall:
    """One ``gsw.slic`` call, made again from its description (a fresh state gets the same
    input tensors, not the caller's)."""

    seed: int
    batch: int
    channels: int
    spatial: tuple[int, ...]  # (H, W) or (T, H, W)
    dtype: torch.dtype = torch.float32
    kind: str = "blocks"
    masked: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def images(self) -> torch.Tensor:
        return make_images(
            self.seed, self.batch, self.channels, self.spatial, self.dtype, self.kind
        )

    def mask(self) -> torch.Tensor | None:
        return make_mask(self.seed + 1, self.batch, self.spatial) if self.masked else None

    def run(self, init: gsw.Segmentation | None = None, device: str = "cpu") -> gsw.Segmentation:
        mask = self.mask()
        return gsw.slic(
            self.images().to(device),
            mask=None if mask is None else mask.to(device),
            init=None if init is None else init.to(device),
            **self.options,
        )


def assert_same_segmentation(a: gsw.Segmentation, b: gsw.Segmentation) -> None:
    for name in ("labels", "num_segments", "centers", "iterations", "clusters", "cluster_labels"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


# Where a GPU is present the machine also calls the CUDA kernels, whose answers must equal
# the CPU's bit for bit (slic.h: exact parity for uint8 input and floats in 0..1, which is
# all this file makes); `benchmarks/device_check.sh` runs it under compute-sanitizer.
DEVICES = ["cpu", "cuda"] if gsw.cuda_available() else ["cpu"]


def connected(labels: torch.Tensor) -> bool:
    """Every id of ``[H, W]`` or ``[T, H, W]`` one 4- (6-) connected region; -1 (outside a
    mask) is no region. scikit-image's labelling, independent of ours."""
    from skimage.measure import label as components

    array = labels.cpu().numpy() + 1  # -1 -> 0: background
    found = int(components(array, background=0, connectivity=1).max())
    return found == len(set(array[array > 0].tolist()))


def check_contract(call: SlicCall, seg: gsw.Segmentation) -> None:
    """Ids 0..n-1 all present, -1 exactly outside the mask, each segment connected when
    connectivity is asked for."""
    mask = call.mask()
    labels = seg.labels
    per_frame = seg.mode == "per_frame"
    for b in range(call.batch):
        lab = labels[b]
        inside = mask[b] if mask is not None else torch.ones_like(lab, dtype=torch.bool)
        assert torch.equal(lab < 0, ~inside), "label -1 exactly outside the mask"
        n = int(seg.num_segments[b])
        assert torch.equal(lab[inside].unique(), torch.arange(n, dtype=lab.dtype)), "ids 0..n-1"
        if call.options.get("enforce_connectivity", True):
            frames = list(lab) if per_frame else [lab]  # per frame: 2-D components
            assert all(connected(frame) for frame in frames), "connected segments"


# ------------------------------------------------------------------------ regression family

# Each sequence runs in order on one new thread (so its first call meets a fresh state);
# every call must equal the same call made alone on another new thread. The first is the
# case that aborted Python ("corrupted size vs. prev_size"): the runs' feature sums kept
# from a 1-channel call were too short for a 3-channel one.
GREY_THEN_COLOUR = [
    SlicCall(0, 1, 1, (224, 224), kind="noise", options=dict(n_segments=50, convert_lab=False)),
    SlicCall(1, 1, 3, (224, 224), kind="noise", options=dict(n_segments=50, convert_lab=False)),
]
SEQUENCES = {
    "1->3 channels": GREY_THEN_COLOUR,
    "1->3 channels, 480x640": [
        SlicCall(0, 1, 1, (480, 640), kind="noise", options=dict(n_segments=50)),
        SlicCall(1, 1, 3, (480, 640), kind="noise", options=dict(n_segments=50, convert_lab=False)),
    ],
    "1->3 channels, 20x21 then 64x64": [
        SlicCall(0, 1, 1, (20, 21), kind="noise", options=dict(n_segments=50)),
        SlicCall(1, 1, 3, (64, 64), kind="noise", options=dict(n_segments=50, convert_lab=False)),
    ],
    "3->1 channels": [
        SlicCall(0, 2, 3, (96, 80), options=dict(n_segments=40)),
        SlicCall(1, 1, 1, (96, 80), options=dict(n_segments=40)),
    ],
    "2->5 channels": [
        SlicCall(0, 1, 2, (64, 96), kind="noise", options=dict(n_segments=30)),
        SlicCall(1, 1, 5, (64, 96), kind="noise", options=dict(n_segments=30)),
    ],
    "small->large": [
        SlicCall(0, 1, 3, (9, 7), options=dict(n_segments=10)),
        SlicCall(1, 1, 3, (256, 320), kind="noise", options=dict(n_segments=200)),
        SlicCall(2, 1, 3, (1, 50), options=dict(n_segments=5)),
    ],
    "image->volume->per_frame": [
        SlicCall(0, 1, 1, (64, 64), options=dict(n_segments=20)),
        SlicCall(1, 1, 3, (4, 48, 40), options=dict(n_segments=30, mode="volume")),
        SlicCall(2, 2, 2, (3, 40, 48), options=dict(n_segments=12, mode="per_frame")),
    ],
    "masked->unmasked": [
        SlicCall(0, 2, 1, (80, 96), masked=True, options=dict(n_segments=40)),
        SlicCall(1, 2, 3, (80, 96), options=dict(n_segments=40)),
        SlicCall(2, 1, 3, (4, 30, 40), masked=True, options=dict(n_segments=20, mode="volume")),
    ],
    "subsample and sizes": [
        SlicCall(0, 1, 3, (120, 160), options=dict(n_segments=60, subsample=3)),
        SlicCall(1, 1, 1, (120, 160), options=dict(n_segments=60, max_size_factor=2.0)),
        SlicCall(2, 1, 4, (33, 17), dtype=torch.float64, options=dict(enforce_connectivity=False)),
    ],
    # 2^20 pixels and more take the threaded path: bands of rows, scratch per band.
    "large 1->3 channels": [
        SlicCall(0, 1, 1, (1024, 1024), kind="noise", options=dict(n_segments=400)),
        SlicCall(1, 1, 3, (1024, 1024), options=dict(n_segments=400, convert_lab=False)),
    ],
}


def run_sequence(calls: list[SlicCall], threads: list[int] | None = None) -> list[Any]:
    def body() -> list[Any]:
        out = []
        for i, call in enumerate(calls):
            if threads is not None:
                torch.set_num_threads(threads[i])
            out.append(call.run())
        return out

    return on_fresh_thread(body)


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_a_sequence_of_calls_equals_each_call_alone(name: str) -> None:
    calls = SEQUENCES[name]
    together = run_sequence(calls)
    for call, seg in zip(calls, together, strict=True):
        assert_same_segmentation(seg, on_fresh_thread(call.run))
        check_contract(call, seg)


def test_grey_then_colour_in_the_calling_thread() -> None:
    # The two lines, as a user types them (the calling thread, whatever ran before).
    gsw.slic(torch.rand(1, 1, 224, 224), n_segments=50, convert_lab=False)
    seg = gsw.slic(torch.rand(1, 3, 224, 224), n_segments=50, convert_lab=False)
    assert int(seg.num_segments[0]) > 1


def test_one_thread_then_many() -> None:
    before = torch.get_num_threads()
    calls = SEQUENCES["large 1->3 channels"] + [GREY_THEN_COLOUR[0]]
    try:
        together = run_sequence(calls, threads=[1, max(2, before), 1])
    finally:
        torch.set_num_threads(before)
    for call, seg in zip(calls, together, strict=True):
        assert_same_segmentation(seg, on_fresh_thread(call.run))


def test_an_empty_frame_first_on_a_fresh_thread() -> None:
    # A per-frame clip whose first frame is wholly outside its mask: no component, on a
    # thread whose connectivity scratch was never used (it read id[0] of an empty list).
    images = make_images(0, 1, 3, (2, 30, 40), torch.float32, "blocks")
    mask = torch.zeros(1, 2, 30, 40, dtype=torch.bool)
    mask[0, 1, 5:25, 8:30] = True
    seg = on_fresh_thread(lambda: gsw.slic(images, 20, mode="per_frame", mask=mask))
    assert bool((seg.labels[0, 0] == -1).all())
    assert int(seg.num_segments[0]) >= 1
