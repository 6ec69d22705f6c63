"""The streaming explainer: equal to gsw.explain per window, warm starts, back-pressure,
bounded memory, DLPack input, a failing window, targets, SLIC options, SWAG, slow consumers
and CUDA streams."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import gswfast as gsw
from gswfast.demo import action_clips, load
from gswfast.metrics import explained_variation
from gswfast.options import CAM_METHODS
from gswfast.video import StreamExplainer


@pytest.fixture(scope="module")
def model():
    return load("actions")


def _frames(count: int = 40, seed: int = 4) -> torch.Tensor:
    clip = action_clips(1, frames=count, generator=torch.Generator().manual_seed(seed)).images[0]
    return (clip * 255).round().to(torch.uint8).permute(1, 0, 2, 3).contiguous()  # [T, 3, H, W]


@pytest.mark.parametrize("method", ["gradient", *CAM_METHODS, "integrated_gradients"])
@pytest.mark.paths
def test_cold_windows_equal_explain(model, method):
    frames = _frames()
    options = {"n_steps": 4} if method == "integrated_gradients" else {}
    stream = StreamExplainer(
        model, window=16, stride=8, method=method, warm_start=False, n_segments=60, **options
    )
    results = stream.push_many(frames)
    assert [(r.first_frame, r.last_frame) for r in results] == [
        (0, 15),
        (8, 23),
        (16, 31),
        (24, 39),
    ]
    for r in results:
        clip = frames[r.first_frame : r.last_frame + 1].permute(1, 0, 2, 3)[None]
        seg = gsw.slic(clip, n_segments=60)
        expected = gsw.explain(model, clip, method=method, segmentation=seg, **options)
        assert torch.equal(r.explanation.labels, seg.labels)
        torch.testing.assert_close(r.explanation.segment_scores, expected.segment_scores)
        with torch.no_grad():
            torch.testing.assert_close(r.logits, model(clip.float() / 255)[0], rtol=1e-4, atol=1e-5)
        assert r.heatmaps.shape == (16, 64, 64)
        assert r.latency >= 0


def test_warm_start_keeps_a_static_scene_still(model):
    frame = _frames(1)[0]
    stream = StreamExplainer(model, window=8, stride=2, method="gradient", n_segments=40)
    results = stream.push_many(frame.expand(20, -1, -1, -1))
    iterations = [int(r.explanation.segmentation.iterations[0]) for r in results]
    assert iterations[0] > 1
    assert all(i == 1 for i in iterations[1:])
    for before, after in itertools.pairwise(results):
        assert torch.equal(before.explanation.labels, after.explanation.labels)


def test_warm_start_converges_on_a_moving_scene(model):
    frames = _frames(48, seed=7)
    warm = StreamExplainer(model, window=16, stride=4, method="gradient", n_segments=60).push_many(
        frames
    )
    cold = StreamExplainer(
        model, window=16, stride=4, method="gradient", n_segments=60, warm_start=False
    ).push_many(frames)
    warm_iterations = sum(int(r.explanation.segmentation.iterations[0]) for r in warm[1:])
    cold_iterations = sum(int(r.explanation.segmentation.iterations[0]) for r in cold[1:])
    assert warm_iterations < 0.6 * cold_iterations  # measured: 37 against 80
    for w, c in zip(warm, cold, strict=True):
        clip = (
            frames[w.first_frame : w.last_frame + 1].permute(1, 0, 2, 3).float() / 255
        )  # [3, T, H, W]
        quality_warm = explained_variation(w.explanation.labels[0], clip)
        quality_cold = explained_variation(c.explanation.labels[0], clip)
        assert quality_warm > quality_cold - 0.02  # the shifted warm start even did better here


class _Slow(torch.nn.Module):
    def __init__(self, inner, seconds):
        super().__init__()
        self.inner, self.seconds = inner, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.inner(x)


def test_drop_oldest_counts_and_block_keeps_all(model):
    frames = _frames(30)
    with StreamExplainer(
        _Slow(model, 0.05),
        window=8,
        stride=1,
        background=True,
        policy="drop_oldest",
        max_pending=1,
        n_segments=20,
        method="gradient",
    ) as stream:
        results = stream.push_many(frames) + stream.flush()
        assert stream.windows_seen == 23
        assert stream.dropped > 0
        assert len(results) + stream.dropped == 23
        assert [r.index for r in results] == sorted(r.index for r in results)
    with StreamExplainer(
        _Slow(model, 0.01),
        window=8,
        stride=1,
        background=True,
        policy="block",
        max_pending=2,
        n_segments=20,
        method="gradient",
    ) as stream:
        results = stream.push_many(frames) + stream.flush()
        assert stream.dropped == 0
        assert [r.index for r in results] == list(range(23))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_memory_stays_bounded_over_a_long_stream(model):
    def resident_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20

    frames = _frames(16)
    stream = StreamExplainer(
        model,
        window=16,
        stride=1,
        method="gradient",
        n_segments=20,
        background=True,
        policy="drop_oldest",
    )
    for _ in range(3):
        stream.push_many(frames)
    before = resident_mb()
    for _ in range(30):  # 480 more frames
        stream.push_many(frames)
        assert len(stream._pending) <= stream.max_pending
        assert not stream._done
    stream.close()
    assert stream.frames_seen == 33 * 16
    assert stream._ring.shape[0] == 16
    assert resident_mb() - before < 64


def test_dlpack_frames_are_taken_without_a_copy(model):
    array = np.ascontiguousarray(_frames(1)[0].numpy())
    stream = StreamExplainer(model, window=2, stride=1, method="gradient", n_segments=10)
    frame = stream._as_frame(array)
    assert frame.data_ptr() == array.__array_interface__["data"][0]
    assert len(stream.push_many([array, array])) == 1


@pytest.mark.cuda
@pytest.mark.parametrize("background", [False, True])
def test_cuda_stream_equals_the_cpu_stream(model, background):
    # Host frames through pinned memory into the CUDA ring; with background=True the worker
    # explains on its own CUDA stream after an event.
    frames = _frames(28)
    cpu = StreamExplainer(model, window=16, stride=4, method="gradient", n_segments=60).push_many(
        frames
    )
    with StreamExplainer(
        load("actions", "cuda"),
        window=16,
        stride=4,
        method="gradient",
        n_segments=60,
        device="cuda",
        background=background,
        policy="block",
    ) as stream:
        cuda = stream.push_many(frames) + stream.flush()
    assert [r.first_frame for r in cuda] == [r.first_frame for r in cpu]
    for c, g in zip(cpu, cuda, strict=True):
        assert g.explanation.labels.is_cuda
        assert torch.equal(g.clip.cpu(), c.clip)  # the same frames, through the CUDA ring
        torch.testing.assert_close(g.logits.cpu(), c.logits, rtol=1e-3, atol=1e-4)
        # SLIC's float32 distances may round differently on the GPU (fused multiply-adds,
        # slic.h), so a near-tie pixel can change supervoxel: the same bound as test_slic's
        # CUDA parity test, then the per-pixel scores must agree as a whole.
        same = g.explanation.labels.cpu() == c.explanation.labels
        assert same.float().mean() >= 0.99
        assert abs(int(g.explanation.num_segments) - int(c.explanation.num_segments)) <= 2
        gpu_heat, cpu_heat = g.heatmaps.cpu().flatten(), c.heatmaps.flatten()
        assert torch.corrcoef(torch.stack([gpu_heat, cpu_heat]))[0, 1] >= 0.99
        torch.testing.assert_close(
            gpu_heat[same.flatten()],
            cpu_heat[same.flatten()],
            rtol=0.05,
            atol=1e-3 * float(cpu_heat.abs().max()),
        )


@pytest.mark.cuda
def test_cupy_frames_on_cuda(model):
    cupy = pytest.importorskip("cupy")
    frames = cupy.asarray(_frames(20).numpy())
    stream = StreamExplainer(
        load("actions", "cuda"), window=16, stride=4, method="gradient", n_segments=60
    )
    results = stream.push_many(frames)
    assert len(results) == 2
    assert results[0].explanation.labels.is_cuda


def test_bad_input(model):
    with pytest.raises(ValueError, match="window: expected an int >= 1"):
        StreamExplainer(model, window=0)
    with pytest.raises(ValueError, match="policy: expected one of"):
        StreamExplainer(model, policy="drop_newest")
    stream = StreamExplainer(model, window=4, n_segments=10)
    with pytest.raises(ValueError, match=r"frame: expected \[C, H, W\]"):
        stream.push(torch.zeros(1, 3, 8, 8))
    with pytest.raises(TypeError, match="frame: expected uint8 or float"):
        stream.push(torch.zeros(3, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="frame: expected a tensor or a __dlpack__ array"):
        stream.push([[1, 2]])
    stream.push(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="like the stream's first frame"):
        stream.push(torch.zeros(3, 9, 8, dtype=torch.uint8))


# ------------------------------------------------------------------ a failing window


class _FailsOnSecondCall(torch.nn.Module):
    """The demo model, except that its second call raises (a ValueError: not retried)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 2:
            raise ValueError("boom on the second call")
        return self.inner(x)


def _run_with_timeout(work, seconds: float = 120.0):
    """Runs ``work()`` in a thread so that a hang fails the test instead of the suite."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"hung for {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.parametrize("background", [True, False])
def test_a_failed_window_breaks_the_stream(model, background):
    frames = _frames(40)
    stream = StreamExplainer(
        _FailsOnSecondCall(model),
        window=8,
        stride=2,
        method="gradient",
        n_segments=10,
        background=background,
        policy="block",
        max_pending=1,
    )

    def feed():
        errors = []
        for frame in frames:  # window 1 fails; every call after the failure is reported must raise
            try:
                stream.push(frame)
            except RuntimeError as error:
                errors.append(error)
        with pytest.raises(RuntimeError, match="the stream is broken"):
            stream.flush()
        with pytest.raises(RuntimeError, match="the stream is broken"):
            stream.push_many(frames[:3])
        stream.close()
        return errors

    errors = _run_with_timeout(feed)
    assert errors
    assert all("the stream is broken: its explainer failed on window 1 (" in str(e) for e in errors)
    assert all("second call" in str(e) for e in errors)  # the cause, in the error's own text
    assert all(
        isinstance(e.__cause__, ValueError) and "second call" in str(e.__cause__) for e in errors
    )
    first = len(frames) - len(errors)  # the push that reported the failure, then every later one
    assert first <= 8 + 2 * 1 + 2 * 2 + 1  # reported within a few windows of window 1
    assert stream.windows_seen <= first // 2 + 1  # nothing queued once it is broken


def test_float_frames_are_checked_as_explain_checks_inputs(model):
    # 0..255 floats (logits hundreds of times off, another class) are refused as
    # gsw.explain refuses them, with the cause in the stream's error
    stream = StreamExplainer(model, window=4, stride=4, method="gradient", n_segments=10)
    with pytest.raises(RuntimeError, match=r"0..255 pixel values"):
        stream.push_many(_frames(4).float())
    unit = StreamExplainer(model, window=4, stride=4, method="gradient", n_segments=10)
    (result,) = unit.push_many(_frames(4).float() / 255)
    assert torch.isfinite(result.explanation.segment_scores).all()


def test_close_after_a_failure_does_not_hang(model):
    stream = StreamExplainer(
        _FailsOnSecondCall(model),
        window=4,
        stride=1,
        method="gradient",
        n_segments=10,
        background=True,
        max_pending=2,
    )

    def feed():
        with pytest.raises(RuntimeError, match="the stream is broken"):  # noqa: PT012 (whichever call sees the failure first raises)
            for frame in _frames(30):
                stream.push(frame)
                time.sleep(0.01)
            stream.flush()
        stream.close()
        stream.close()
        with pytest.raises(RuntimeError, match="the stream is broken"):
            stream.push(_frames(1)[0])

    _run_with_timeout(feed)


def test_push_after_close_raises(model):
    stream = StreamExplainer(model, window=4, method="gradient", n_segments=10, background=True)
    stream.close()
    with pytest.raises(RuntimeError, match="the stream is closed"):
        stream.push(_frames(1)[0])


# ------------------------------------------------------------------ targets, SLIC options, SWAG


def _clip_of(frames, result):
    return frames[result.first_frame : result.last_frame + 1].permute(1, 0, 2, 3)[
        None
    ]  # [1, C, T, H, W]


def test_target_none_int_or_a_function_of_the_logits(model):
    frames = _frames(24)
    seen = []

    def least_likely(logits):
        seen.append(tuple(logits.shape))
        return int(logits.argmin())

    for target in (None, 3, np.int64(2), least_likely, lambda logits: logits.argmin()):
        stream = StreamExplainer(
            model,
            window=8,
            stride=8,
            method="gradient",
            n_segments=20,
            warm_start=False,
            target=target,
        )
        results = stream.push_many(frames)
        assert len(results) == 3
        for r in results:
            clip = _clip_of(frames, r)
            with torch.no_grad():
                logits = model(clip.float() / 255)[0]
            wanted = {None: int(logits.argmax()), 3: 3}.get(
                target, 2 if isinstance(target, np.integer) else int(logits.argmin())
            )
            assert r.target == wanted
            expected = gsw.explain(
                model, clip, wanted, method="gradient", segmentation=r.explanation.labels
            )
            torch.testing.assert_close(r.explanation.segment_scores, expected.segment_scores)
    assert seen == [(6,)] * 3  # 6 actions; the function gets the window's logits [classes]


def test_bad_targets():
    model = load("actions")
    with pytest.raises(TypeError, match="target: expected None, a class"):
        StreamExplainer(model, target="cat")
    with pytest.raises(TypeError, match="target: expected None, a class"):
        StreamExplainer(model, target=-1)
    stream = StreamExplainer(
        model, window=4, method="gradient", n_segments=10, target=lambda logits: logits
    )
    with pytest.raises(RuntimeError, match="the stream is broken") as info:
        stream.push_many(_frames(4))
    assert "the function must return a class" in str(info.value.__cause__)


def test_slic_options_are_honoured(model):
    frames = _frames(16)
    options = {"max_iter": 1, "enforce_connectivity": False, "spacing": (3.0, 1.0, 1.0)}
    stream = StreamExplainer(
        model,
        window=8,
        stride=8,
        method="gradient",
        warm_start=False,
        n_segments=30,
        compactness=5.0,
        slic_options=options,
    )
    for r in stream.push_many(frames):
        expected = gsw.slic(_clip_of(frames, r), n_segments=30, compactness=5.0, **options)
        assert torch.equal(r.explanation.labels, expected.labels)
    default = StreamExplainer(
        model, window=8, stride=8, method="gradient", warm_start=False, n_segments=30
    )
    assert not torch.equal(default.push_many(frames[:8])[0].explanation.labels, expected.labels)
    with pytest.raises(TypeError, match="slic_options: unexpected keyword"):
        StreamExplainer(model, slic_options={"n_segment": 3})
    with pytest.raises(ValueError, match="n_segments: given twice"):
        StreamExplainer(model, n_segments=3, slic_options={"n_segments": 4})


def test_per_frame_supervoxels_warm_start(model):
    frames = _frames(1)[0].expand(16, -1, -1, -1)  # a static scene
    stream = StreamExplainer(
        model,
        window=8,
        stride=2,
        method="gradient",
        n_segments=12,
        slic_options={"mode": "per_frame"},
    )
    results = stream.push_many(frames)
    assert results[0].explanation.segmentation.mode == "per_frame"
    assert all(int(r.explanation.segmentation.iterations.max()) == 1 for r in results[1:])


def test_swag_works_for_every_window(model):
    frames = _frames(24)
    stream = StreamExplainer(model, window=8, stride=4, method="gradient", n_segments=20, swag=True)
    results = stream.push_many(frames)
    assert len(results) == 5
    for r in results:
        expected = gsw.explain(
            model, _clip_of(frames, r), method="gradient", swag=True, n_segments=20
        )
        assert torch.equal(r.explanation.labels, expected.labels)
        torch.testing.assert_close(r.explanation.segment_scores, expected.segment_scores)


# ------------------------------------------------------------------ ring, slow consumers


def test_ring_slots_are_contiguous_frames(model):
    frames = _frames(11)
    stream = StreamExplainer(model, window=4, stride=3, method="gradient", n_segments=10)
    results = stream.push_many(frames)
    assert stream._ring.shape == (4, 3, 64, 64)
    assert stream._ring[1].is_contiguous()
    assert [r.first_frame for r in results] == [0, 3, 6]
    for r in results:  # snapshots in time order, [1, C, T, H, W], contiguous
        assert r.clip.is_contiguous()
        assert torch.equal(r.clip, _clip_of(frames, r))


def test_a_slow_consumer_gets_every_window_unchanged(model):
    frames = _frames(30)
    expected = StreamExplainer(
        model, window=8, stride=2, method="gradient", n_segments=20
    ).push_many(frames)
    held = []

    def consume():
        with StreamExplainer(
            model,
            window=8,
            stride=2,
            method="gradient",
            n_segments=20,
            background=True,
            policy="block",
            max_pending=1,
        ) as stream:
            for frame in frames:
                held.extend(stream.push(frame))
                time.sleep(0.03)  # the consumer is slower than the worker
            held.extend(stream.flush())

    _run_with_timeout(consume)
    assert [r.index for r in held] == list(range(12))
    for got, want in zip(
        held, expected, strict=True
    ):  # held results were not overwritten by later windows
        assert torch.equal(got.clip, _clip_of(frames, got))
        assert torch.equal(got.explanation.labels, want.explanation.labels)
        torch.testing.assert_close(got.explanation.segment_scores, want.explanation.segment_scores)


@pytest.mark.cuda
def test_cuda_snapshots_do_not_sync():
    frames = _frames(12).cuda()
    stream = StreamExplainer(
        load("actions", "cuda"), window=8, stride=2, method="gradient", n_segments=20
    )
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for frame in frames:
            stream._store(frame)
            stream.frames_seen += 1
        _index, start, clip, *_ = stream._snapshot()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert start == 4
    assert torch.equal(clip[0].cpu(), frames[4:12].permute(1, 0, 2, 3).cpu())


@pytest.mark.cuda
def test_cuda_results_are_safe_on_the_callers_stream():
    # The caller reads each result on its own stream, behind a long kernel, after dropping
    # it, while the worker makes the next windows on its stream: without record_stream the
    # allocator would hand the result's memory to the worker before the read.
    model = load("actions", "cuda")
    frames = _frames(40)
    expected = StreamExplainer(
        model, window=8, stride=1, method="gradient", n_segments=20, device="cuda"
    ).push_many(frames)
    caller = torch.cuda.Stream()
    copies = []
    with (
        torch.cuda.stream(caller),
        StreamExplainer(
            model,
            window=8,
            stride=1,
            method="gradient",
            n_segments=20,
            device="cuda",
            background=True,
            policy="block",
        ) as stream,
    ):
        for frame in frames:
            for result in stream.push(frame):
                torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time on the caller's stream
                copies.append(
                    (result.index, result.explanation.segment_scores * 1, result.logits * 1)
                )
                del result
        copies.extend(
            (result.index, result.explanation.segment_scores * 1, result.logits * 1)
            for result in stream.flush()
        )
    caller.synchronize()
    assert [i for i, *_ in copies] == list(range(len(expected)))
    for (_, scores, logits), want in zip(
        copies, expected, strict=True
    ):  # cuDNN may sum in another order: float32 slack
        torch.testing.assert_close(scores, want.explanation.segment_scores, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(logits, want.logits, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_results_are_recorded_on_the_callers_stream(monkeypatch):
    recorded = []
    original = torch.Tensor.record_stream
    monkeypatch.setattr(
        torch.Tensor, "record_stream", lambda t, s: (recorded.append((t, s)), original(t, s))[1]
    )
    caller = torch.cuda.Stream()
    with (
        torch.cuda.stream(caller),
        StreamExplainer(
            load("actions", "cuda"),
            window=8,
            stride=4,
            method="gradient",
            n_segments=20,
            device="cuda",
            background=True,
        ) as stream,
    ):
        results = stream.push_many(_frames(12)) + stream.flush()
    on_caller = {id(t) for t, s in recorded if s == caller}
    for r in results:
        for t in (
            r.logits,
            r.explanation.segment_scores,
            r.explanation.labels,
            r.explanation.pixel_scores,
        ):
            assert id(t) in on_caller
