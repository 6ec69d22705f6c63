"""Random sequences of native calls in one process (Hypothesis's stateful testing): each
answer equals the same call alone in a fresh state, or the plain-torch reference, and keeps
the label contract. See test_state.py for the fixed sequences and the helpers."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from helpers import TinyCNN

pytest.importorskip("hypothesis")  # a GPU machine may lack it (device_check.sh carries .whl/)

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_state import (
    DEVICES,
    SlicCall,
    assert_same_segmentation,
    check_contract,
    on_fresh_thread,
)

import gswfast as gsw
from gswfast.testing import reference_pool

# Bounded and seeded in `make test`; `make sanitize` sets GSWFAST_HYPOTHESIS_EXAMPLES higher.
EXAMPLES = int(os.environ.get("GSWFAST_HYPOTHESIS_EXAMPLES", "40"))
SHAPES_2D = [(1, 1), (1, 37), (29, 1), (5, 4), (17, 23), (48, 64), (61, 47), (120, 90)]
SHAPES_3D = [(1, 9, 11), (3, 1, 25), (4, 20, 24), (2, 33, 31), (5, 16, 16)]
LARGE_2D = (1024, 1040)  # above 2^20 pixels: threads, bands of rows
DTYPES = [torch.uint8, torch.uint16, torch.float16, torch.float32, torch.float64]


@st.composite
def slic_calls(draw: st.DrawFn, seed: int) -> SlicCall:
    volume = draw(st.booleans())
    channels = draw(st.integers(1, 5))
    if volume:
        spatial = draw(st.sampled_from(SHAPES_3D))
        mode = draw(st.sampled_from(["volume", "per_frame"]))
        batch = draw(st.integers(1, 2))
    else:
        spatial = draw(st.sampled_from([*SHAPES_2D, LARGE_2D]))
        mode = "image"
        batch = 1 if spatial == LARGE_2D else draw(st.integers(1, 3))
    connectivity = draw(st.booleans())
    options: dict[str, Any] = dict(
        n_segments=draw(st.sampled_from([1, 3, 10, 40, 300])),
        mode=mode,
        enforce_connectivity=connectivity,
        subsample=draw(st.sampled_from([1, 1, 2, 3])),
        max_iter=draw(st.sampled_from([1, 3, 10])),
    )
    if channels == 3:
        options["convert_lab"] = draw(st.booleans())
    if connectivity:
        options["min_size_factor"] = draw(st.sampled_from([0.0, 0.25, 0.5]))
        options["max_size_factor"] = draw(st.sampled_from([None, 0.5, 3.0]))
    return SlicCall(
        seed=seed,
        batch=batch,
        channels=channels,
        spatial=spatial,
        dtype=draw(st.sampled_from(DTYPES)),
        kind=draw(st.sampled_from(["noise", "blocks"])),
        masked=draw(st.booleans()),
        options=options,
    )


class NativeCalls(RuleBasedStateMachine):
    """Random sequences of slic (cold and warm), segment_pool, paint and explain calls on
    the calling thread at 1 or 2 ATen threads; each answer is checked against the same
    call alone on a fresh thread (or the plain-torch reference) and the label contract."""

    segmentations = Bundle("segmentations")

    @initialize()
    def remember_threads(self) -> None:
        self.threads_before = torch.get_num_threads()
        self.step = 0

    def next_seed(self) -> int:
        self.step += 1
        return 1000 * self.step

    @rule(threads=st.sampled_from([1, 2]))
    def set_threads(self, threads: int) -> None:
        torch.set_num_threads(threads)

    @rule(target=segmentations, data=st.data(), device=st.sampled_from(DEVICES))
    def slic(self, data: st.DataObject, device: str) -> tuple[SlicCall, gsw.Segmentation]:
        call = data.draw(slic_calls(self.next_seed()))
        seg = call.run(device=device)
        assert_same_segmentation(seg, on_fresh_thread(call.run))  # the CPU, alone
        check_contract(call, seg.to("cpu"))
        return call, seg.to("cpu")

    @rule(previous=segmentations, device=st.sampled_from(DEVICES))
    def warm_start(self, previous: tuple[SlicCall, gsw.Segmentation], device: str) -> None:
        call, seg = previous
        warm = call.run(init=seg, device=device)
        assert_same_segmentation(warm, on_fresh_thread(lambda: call.run(init=seg)))
        check_contract(call, warm.to("cpu"))

    @rule(
        previous=segmentations,
        channels=st.integers(0, 3),
        reduce=st.sampled_from(["sum", "mean", "max", "min", "count"]),
        dtype=st.sampled_from([torch.float32, torch.float64]),
    )
    def pool_and_paint(
        self,
        previous: tuple[SlicCall, gsw.Segmentation],
        channels: int,
        reduce: str,
        dtype: torch.dtype,
    ) -> None:
        _, seg = previous
        g = torch.Generator().manual_seed(self.next_seed())
        labels = seg.labels
        values = torch.randn((labels.shape[0], channels, *labels.shape[1:]), generator=g)
        values = values.to(dtype)
        pooled = gsw.segment_pool(values, labels, seg.num_segments, reduce)
        k = int(seg.num_segments.max())
        flat_values = values.reshape(values.shape[0], channels, labels[0].numel())
        expected = reference_pool(flat_values, labels.reshape(labels.shape[0], -1), k, reduce)
        torch.testing.assert_close(pooled.double() if reduce != "count" else pooled, expected)
        painted = gsw.paint(torch.randn(labels.shape[0], k, generator=g), labels)
        assert painted.shape == labels.shape

    @precondition(lambda self: self.step < 40)
    @rule(previous=segmentations)
    def explain(self, previous: tuple[SlicCall, gsw.Segmentation]) -> None:
        call, seg = previous
        if seg.mode != "image" or call.channels != 3 or call.masked:
            return  # explain takes colour images and segmentations without -1
        model = TinyCNN(channels=3).eval()
        images = call.images()
        images = images.float() / 255 if images.dtype == torch.uint8 else images.float()

        def explained() -> gsw.Explanation:
            torch.manual_seed(0)
            return gsw.explain(model, images, method="gradient", segmentation=seg)

        here = explained()
        alone = on_fresh_thread(explained)
        assert torch.equal(here.labels, alone.labels)
        # Thread counts differ between the two threads: float sums may be ordered apart.
        torch.testing.assert_close(here.segment_scores, alone.segment_scores)

    @invariant()
    def threads_are_valid(self) -> None:
        assert torch.get_num_threads() >= 1

    def teardown(self) -> None:
        torch.set_num_threads(getattr(self, "threads_before", torch.get_num_threads()))


def test_random_sequences_of_native_calls() -> None:
    run_state_machine_as_test(
        NativeCalls,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=12,
            deadline=None,
            database=None,  # no example database in the repository
            derandomize=True,  # a fixed seed: the same sequences every run
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )
