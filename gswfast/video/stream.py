"""Explaining a video stream window by window, as its frames arrive.

``StreamExplainer(model, window=16, stride=4)`` takes frames one at a time (``push``) or
many (``push_many``), keeps the last ``window`` of them in a ring buffer on the device,
and explains every ``stride``-th complete window: class scores, supervoxel scores, and
per-frame heatmaps. Each window's supervoxels are warm-started from the previous window's
(``slic(init=...)``), so labels stay stable over time and SLIC needs fewer passes.

With ``background=True`` a worker thread explains while the caller keeps pushing. When it
falls behind, ``policy="block"`` makes ``push`` wait, ``policy="drop_oldest"`` drops the
oldest waiting window (counted in ``dropped``); at most ``max_pending`` windows wait, so
memory never grows with the stream.

A window that fails (the model raises, say) breaks the stream: the call that reports it and
every later ``push``, ``push_many`` and ``flush`` raise ``RuntimeError`` at once, chained to
the original error, with or without a worker; ``close`` still stops the worker. Windows
after a failure are not explained: make a new ``StreamExplainer`` to go on.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import numbers
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from gswfast.attribution._model import Target
from gswfast.checks import check_input_values, unit_float
from gswfast.explain import DEFAULT_SEGMENTS, Explainer, Explanation
from gswfast.options import failure_line
from gswfast.segmentation import Segmentation, slic

POLICIES: tuple[str, ...] = ("block", "drop_oldest")
# target: None (the predicted class), a class, or a function of the window's logits [classes]
StreamTarget = int | Callable[[Tensor], Any] | None
_STREAM_SLIC_KEYWORDS = ("init", "validate")  # set by the stream itself
# A window to explain: (index, first frame, clip [1, C, T, H, W], arrival time, the CUDA event
# marking the clip's copy, the caller's CUDA stream); the last two are None on the CPU.
_Job = tuple[int, int, Tensor, float, torch.cuda.Event | None, torch.cuda.Stream | None]


@dataclass(frozen=True)
class WindowResult:
    """One explained window.

    Attributes:
        index: the window's number in the stream (0, 1, ...; dropped ones leave gaps).
        first_frame, last_frame: the stream indices of its frames (inclusive).
        logits: float32 ``[classes]``: the model's output on the window.
        explanation: ``Explanation`` of the window as a batch of one (``labels [1, T, H, W]``).
        latency: seconds from the window's last frame arriving to its result being ready.
        clip: the window's frames ``[1, C, T, H, W]`` as explained (for drawing them).
    """

    index: int
    first_frame: int
    last_frame: int
    logits: Tensor
    explanation: Explanation
    latency: float
    clip: Tensor

    @property
    def heatmaps(self) -> Tensor:
        """float32 ``[T, H, W]``: each frame's pixels carry their supervoxel's score."""
        return self.explanation.heatmap()[0]

    @property
    def target(self) -> int:
        return int(self.explanation.target[0])


class StreamExplainer:
    """Explains a stream of frames ``[C, H, W]`` in windows of ``window`` frames.

    Args:
        model: a video model taking ``[B, C, T, H, W]`` clips (float 0..1 after
            ``preprocess``) and returning ``[B, classes]``.
        window, stride: frames per window and frames between window starts.
        method: any ``gsw.explain`` method (default ``integrated_gradients``, as
            ``gsw.explain``; ``gradcam`` or ``gradient`` keep up with live video).
        target: the class to explain in every window: None (the window's predicted class),
            an int, or a function of the window's logits, a float32 tensor ``[classes]``,
            returning a class (an int or an integer tensor of one element). A function costs
            one extra forward pass per window.
        policy, max_pending, background: see the module docstring. ``background=False``
            explains inside ``push`` (no thread, no drops).
        warm_start: start each window's SLIC from the previous window's supervoxels (not
            with ``swag=True``, whose supervoxels follow each window's attribution).
        n_segments, compactness: supervoxels per window (default 200) and SLIC's
            compactness (default 10).
        slic_options: more ``gsw.slic`` keywords (``max_iter``, ``spacing``, ``mode``,
            ``enforce_connectivity``...); ``n_segments`` and ``compactness`` may go here too.
        device: where the ring buffer and the work live (default: the first frame's).
        explain_options: more ``Explainer`` options (``preprocess``, ``autocast``,
            ``swag``, the method's options...).
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 16,
        stride: int = 1,
        method: str = "integrated_gradients",
        *,
        target: StreamTarget = None,
        policy: str = "block",
        max_pending: int = 2,
        background: bool = False,
        warm_start: bool = True,
        n_segments: int | None = None,
        compactness: float | None = None,
        slic_options: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        **explain_options: Any,
    ) -> None:
        for name, value in (("window", window), ("stride", stride), ("max_pending", max_pending)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        self.target = _check_stream_target(target)
        self.window, self.stride, self.policy, self.max_pending = (
            window,
            stride,
            policy,
            max_pending,
        )
        self.warm_start = warm_start
        self.slic_options = _slic_options(n_segments, compactness, slic_options)
        rest = {
            k: v for k, v in self.slic_options.items() if k not in ("n_segments", "compactness")
        }
        self.explainer = Explainer(
            model,
            method,
            n_segments=self.slic_options["n_segments"],
            compactness=self.slic_options["compactness"],
            slic_options=rest,
            **explain_options,
        )
        self.device = torch.device(device) if device is not None else None
        self.frames_seen = 0
        self.windows_seen = 0
        self.dropped = 0
        self._ring: Tensor | None = None  # [window, C, H, W]: each frame slot contiguous
        self._previous: tuple[int, Segmentation] | None = None  # (first frame, supervoxels)
        self._pending: collections.deque[_Job] = collections.deque()
        self._done: collections.deque[WindowResult] = collections.deque()
        self._lock = threading.Condition()
        self._error: BaseException | None = None  # set once: the stream is broken
        self._failed_window = -1
        self._closed = False
        self._busy = False  # the worker holds a window (popped from pending, not yet done)
        self._cuda_stream: Any = None
        self._worker = threading.Thread(target=self._work, daemon=True) if background else None
        if self._worker is not None:
            self._worker.start()

    # ------------------------------------------------------------------ frames in

    def push(self, frame: Any) -> list[WindowResult]:
        """Adds one frame ``[C, H, W]`` (uint8 or float 0..1; a tensor on any device, or any
        ``__dlpack__`` object such as a CuPy array, taken without a copy). Returns the
        results finished since the last call."""
        self._check_usable()
        frame = self._as_frame(frame)
        self._store(frame)
        self.frames_seen += 1
        if self.frames_seen >= self.window and (self.frames_seen - self.window) % self.stride == 0:
            self._submit(self._snapshot())
        return self._collect()

    def push_many(self, frames: Any) -> list[WindowResult]:
        """Adds frames ``[T, C, H, W]`` (or an iterable of frames), in order."""
        self._check_usable()
        results: list[WindowResult] = []
        for frame in frames:
            results.extend(self.push(frame))
        return results

    def flush(self) -> list[WindowResult]:
        """Waits for every submitted window and returns the results not yet returned."""
        self._raise_if_broken()
        if self._worker is not None:
            with self._lock:
                self._lock.wait_for(
                    lambda: (not self._pending and not self._busy) or self._error is not None
                )
        return self._collect()

    def close(self) -> None:
        """Stops the worker thread after the windows it holds (their results are dropped);
        never raises the stream's error."""
        if self._worker is not None and not self._closed:
            with self._lock:
                self._closed = True
                self._lock.notify_all()
            self._worker.join()
        self._closed = True

    def __enter__(self) -> StreamExplainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        self._raise_if_broken()
        if self._closed:
            raise RuntimeError("the stream is closed; make a new StreamExplainer")

    def _as_frame(self, given: Any) -> Tensor:
        if isinstance(given, Tensor):
            frame = given
        else:
            if not hasattr(given, "__dlpack__"):
                raise TypeError(
                    f"frame: expected a tensor or a __dlpack__ array, got {type(given).__name__}"
                )
            frame = torch.utils.dlpack.from_dlpack(given)  # what torch.from_dlpack is
        if frame.dim() != 3:
            raise ValueError(f"frame: expected [C, H, W], got shape {tuple(frame.shape)}")
        if frame.dtype != torch.uint8 and not frame.is_floating_point():
            raise TypeError(f"frame: expected uint8 or float, got {frame.dtype}")
        if self._ring is not None and (
            frame.shape != self._ring.shape[1:] or frame.dtype != self._ring.dtype
        ):
            raise ValueError(
                f"frame: expected {tuple(self._ring.shape[1:])} {self._ring.dtype} "
                f"like the stream's first frame, got {tuple(frame.shape)} {frame.dtype}"
            )
        return frame

    def _store(self, frame: Tensor) -> None:
        if self._ring is None:
            device = self.device or frame.device
            self._ring = torch.empty((self.window, *frame.shape), dtype=frame.dtype, device=device)
        if self._ring.is_cuda and not frame.is_cuda:
            # Through pinned memory the copy runs asynchronously; torch's caching host
            # allocator keeps the pinned block alive until the copy is done.
            frame = frame.pin_memory()
        self._ring[self.frames_seen % self.window].copy_(frame, non_blocking=True)  # no host sync

    def _snapshot(self) -> _Job:
        """The window in time order, copied out of the ring (which the next frames overwrite)
        and transposed to ``[1, C, T, H, W]`` in the same copy, without a host sync; on CUDA
        also an event marking the copy, which the worker's stream waits for, and the
        caller's stream, on which the results will be used."""
        start = self.frames_seen - self.window
        oldest = self.frames_seen % self.window  # the slot the next frame overwrites
        ring = self._ring
        assert ring is not None  # made by _store, which every frame goes through first
        clip = torch.empty(
            (ring.shape[1], self.window, *ring.shape[2:]), dtype=ring.dtype, device=ring.device
        )
        by_time = clip.transpose(0, 1)  # [T, C, H, W] view of the clip
        by_time[: self.window - oldest].copy_(ring[oldest:])
        by_time[self.window - oldest :].copy_(ring[:oldest])
        ready: torch.cuda.Event | None = None
        caller: torch.cuda.Stream | None = None
        if clip.is_cuda:
            caller = torch.cuda.current_stream(clip.device)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]  # Event.__new__ is unannotated in torch
            ready.record(caller)
        index = self.windows_seen
        self.windows_seen += 1
        return index, start, clip.unsqueeze(0), time.perf_counter(), ready, caller

    def _submit(self, job: _Job) -> None:
        if self._worker is None:
            try:
                result = self._explain(*job)
            except BaseException as error:
                self._error, self._failed_window = error, job[0]
                self._raise_if_broken()
            self._done.append(result)
            return
        with self._lock:
            self._raise_if_broken()
            if self.policy == "block":
                self._lock.wait_for(
                    lambda: len(self._pending) < self.max_pending or self._error is not None
                )
                self._raise_if_broken()
            elif len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(job)
            self._lock.notify_all()

    def _collect(self) -> list[WindowResult]:
        with self._lock:
            self._raise_if_broken()
            results = list(self._done)
            self._done.clear()
        return results

    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                job = self._pending.popleft()
                self._busy = True
                self._lock.notify_all()
            try:
                result = self._explain(*job)
            except BaseException as error:  # the stream is broken: every later call raises it
                with self._lock:
                    self._error, self._failed_window, self._busy = error, job[0], False
                    self._pending.clear()
                    self._lock.notify_all()
                return
            with self._lock:
                self._done.append(result)
                self._busy = False
                self._lock.notify_all()

    def _explain(
        self,
        index: int,
        start: int,
        clip: Tensor,
        arrived: float,
        ready: Any = None,
        caller: Any = None,
    ) -> WindowResult:
        if ready is None or threading.current_thread() is not self._worker:
            return self._explain_window(index, start, clip, arrived)
        # The worker explains on its own CUDA stream, after the window's copy is done, so
        # frames keep flowing into the ring on the caller's stream meanwhile.
        if self._cuda_stream is None:
            self._cuda_stream = torch.cuda.Stream(clip.device)  # type: ignore[no-untyped-call]  # Stream.__new__ is unannotated in torch
        self._cuda_stream.wait_event(ready)
        clip.record_stream(self._cuda_stream)  # made on the caller's stream, used on this one
        with torch.cuda.stream(self._cuda_stream):
            result = self._explain_window(index, start, clip, arrived)
        # Made on the worker's stream, used on the caller's: the allocator must not hand
        # their memory to the next window before the caller's kernels are done with them.
        for tensor in _tensors(result):
            if tensor.is_cuda:
                tensor.record_stream(caller)
        return result

    def _explain_window(self, index: int, start: int, clip: Tensor, arrived: float) -> WindowResult:
        target: Target
        logits = None
        if clip.is_floating_point():  # as explain checks its inputs (0..255 floats, NaN)
            check_input_values(clip, needs_unit_range=True)
        if callable(self.target):
            logits = self._logits(clip)
            target = _chosen_class(self.target(logits[0]))
        else:
            target = self.target
        if self.explainer.swag:  # SWAG builds each window's supervoxels from its attribution
            expl = self.explainer(clip, target)
        else:
            seg = slic(clip, **self.slic_options, init=self._warm_start_from(start), validate=False)
            expl = self.explainer(clip, target, segmentation=seg)
            self._previous = (start, seg)
        if logits is None:
            logits = expl.info.get("logits")
        if logits is None:  # methods that never ran the model on the window itself
            logits = self._logits(clip)
        if clip.is_cuda:
            torch.cuda.current_stream(
                clip.device
            ).synchronize()  # per window: latency means "result ready"
        return WindowResult(
            index,
            start,
            start + self.window - 1,
            logits[0].float(),
            expl,
            time.perf_counter() - arrived,
            clip,
        )

    def _logits(self, clip: Tensor) -> Tensor:
        """float ``[1, classes]``: the model's output on the window."""
        attributor = self.explainer._attributor
        assert attributor is not None  # the stream's Explainer always has a model
        with torch.no_grad():
            return attributor.forward.logits(unit_float(clip))

    def _warm_start_from(self, start: int) -> Segmentation | None:
        """The previous window's k-means state moved back in time by the frames the window
        slid (its first frames left, the new last ones start as copies of its last frame),
        or None (cold start) without a previous window within reach."""
        if not self.warm_start or self._previous is None:
            return None
        previous_start, seg = self._previous
        shift = start - previous_start
        if shift == 0:
            return seg
        if shift >= self.window:
            return None
        if seg.mode == "per_frame":  # one k-means state per frame: rows [T, ...]

            def slide(rows: Tensor) -> Tensor:
                return torch.cat(
                    [rows[shift:], rows[-1:].expand(shift, *rows.shape[1:])]
                ).contiguous()

            return replace(
                seg,
                clusters=slide(seg.clusters),
                cluster_counts=slide(seg.cluster_counts),
                cluster_labels=slide(seg.cluster_labels),
            )
        n, frames = seg.cluster_labels.shape[0], self.window
        labels = seg.cluster_labels.view(n, frames, -1)
        labels = torch.cat([labels[:, shift:], labels[:, -1:].expand(-1, shift, -1)], 1).reshape(
            n, -1
        )
        clusters = seg.clusters.clone()
        clusters[..., 0] = (clusters[..., 0] - shift).clamp(min=0)  # (t, y, x, features...)
        return replace(seg, clusters=clusters, cluster_labels=labels.contiguous())

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise RuntimeError(
                f"the stream is broken: its explainer failed on window {self._failed_window} "
                f"({failure_line(self._error)}); make a new StreamExplainer to go on"
            ) from self._error


def _check_stream_target(target: object) -> StreamTarget:
    if target is None or callable(target):
        return target
    if not isinstance(target, bool) and isinstance(target, numbers.Integral) and int(target) >= 0:
        return int(target)
    raise TypeError(
        f"target: expected None, a class (an int >= 0) or a function of the window's logits "
        f"[classes] returning a class, got {target!r}"
    )


def _chosen_class(value: Any) -> int | Tensor:
    """What a target function returned, as a class: an int, or an int64 tensor ``[1]``
    (left on its device: no host sync)."""
    if (
        isinstance(value, Tensor)
        and value.numel() == 1
        and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    ):
        return value.reshape(1).to(torch.int64)
    if not isinstance(value, bool) and isinstance(value, numbers.Integral):
        return int(value)
    raise TypeError(
        f"target: the function must return a class (an int or an integer tensor of one element), "
        f"got {value!r}"
    )


def _slic_options(
    n_segments: int | None, compactness: float | None, given: dict[str, Any] | None
) -> dict[str, Any]:
    if given is not None and not isinstance(given, dict):
        raise TypeError(
            f"slic_options: expected a dict of gsw.slic keywords, got {type(given).__name__}"
        )
    options = dict(given or {})
    known = set(inspect.signature(slic).parameters) - {"images", *_STREAM_SLIC_KEYWORDS}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"slic_options: unexpected keyword(s) {unknown}; gsw.slic takes {sorted(known)}"
        )
    for name, value in (("n_segments", n_segments), ("compactness", compactness)):
        if value is not None and name in options:
            raise ValueError(f"{name}: given twice, as {name}= and in slic_options")
        if value is not None:
            options[name] = value
    options.setdefault("n_segments", DEFAULT_SEGMENTS[5])
    options.setdefault("compactness", 10.0)
    return options


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor in a result: its fields, the explanation's, the segmentation's, info's."""
    if isinstance(value, Tensor):
        yield value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
