"""Explaining whole datasets, on one process or across ranks with ``torchrun``.

``explain_dataset(source, out, ...)`` (and ``gswfast explain-dataset``) lists the work
items of ``source`` (a folder of images/videos, or a text file of paths): one per image,
one per window of each video (one per ``stride``-th frame for detectors and segmenters).
Under ``torchrun`` rank ``r`` of ``W`` takes items ``r, r + W, r + 2W, ...`` of the sorted
list, on ``cuda:LOCAL_RANK`` or the CPU (``auto`` on a build without CUDA kernels). Frame
counts come from each video's header where it has one; videos without one are counted by
one rank each and shared.

Every item's result is written atomically (a temporary file, then a rename) to
``out/items/<key>.npz`` (or ``<key>.failed.json`` with the reason), with the job's
settings, so a rerun skips finished items made with the same settings and a killed worker
loses only the items it had in flight. ``out/settings.json`` records the settings: a rerun
with others refuses unless ``overwrite``. After a barrier, rank 0 writes
``out/manifest.json``, which lists every item exactly once. The ranks meet only in
barriers on a gloo group whose timeout is sized for the job (days), so a rank that
finishes long before the others waits instead of timing out.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from gswfast import render, viz
from gswfast.detections import Rows, find_rows
from gswfast.explain import Explainer, Explanation
from gswfast.models import (
    check_video_input,
    command_explainer,
    default_size,
    layer_option,
    load_model,
    normaliser,
    resolve_device,
)
from gswfast.options import (
    DEFAULT_BOX_THRESHOLD,
    DEFAULT_BOXES,
    DEFAULT_METHODS,
    PICTURE_SIDE,
    ROW_KINDS,
    ROW_STRIDE,
    UserError,
    check_kind_options,
    check_method,
    failure_line,
    make_out_folder,
)
from gswfast.progress import Progress
from gswfast.regions import RegionExplainer
from gswfast.video.io import (
    MEDIA_SUFFIXES,
    MediaError,
    frame_count,
    media_kind,
    read_image,
    read_video,
    remember_shape,
    window_starts,
    windows,
)

# Item names past this many bytes are shortened: with "@<window>", ".failed.json" and a
# temporary name's ".<pid>.tmp", a file name stays within 255 bytes.
KEY_BYTES = 200
BARRIER_TIMEOUT = datetime.timedelta(days=7)  # ranks wait for each other however uneven the shards
# All-gather across ranks: each rank's value in, every rank's values (in rank order) out.
Share = Callable[[dict[str, int]], list[dict[str, int]]]


@dataclass(frozen=True)
class Item:
    """One unit of work: an image, or one window (``start``) of a video, or with ``still``
    one frame (``start``) of a video (a detector's or a segmenter's items)."""

    key: str
    path: Path
    start: int | None = None
    still: bool = False

    @property
    def is_video(self) -> bool:
        return self.start is not None


def list_items(
    source: str | Path,
    frames: int = 16,
    stride: int | None = None,
    rank: int = 0,
    world: int = 1,
    share: Share | None = None,
    exclude: str | Path | None = None,
    stills: bool = False,
) -> list[Item]:
    """The work items of ``source``, in a deterministic order (sorted paths, then windows;
    the last window of a video is aligned to its end). A video that cannot be opened, or
    is shorter than a window, becomes one item, which fails with its reason. A folder's
    files under ``exclude`` (the job's ``out/items``, when it lies inside ``source``) are
    left out. ``stills``: a video's items are single frames ``stride`` apart (``frames``
    is then 1), as a detector's or a segmenter's.

    ``rank``/``world``/``share``: under torchrun each rank counts the frames of its share
    of the videos without a frame count in their header, and ``share`` (all-gather) gives
    every rank all counts."""
    paths, root = _source_paths(Path(source), None if exclude is None else Path(exclude))
    kinds = [media_kind(path) or "image" for path in paths]
    counts = _frame_counts(
        [p for p, k in zip(paths, kinds, strict=True) if k == "video"], rank, world, share
    )
    items: list[Item] = []
    for path, kind in zip(paths, kinds, strict=True):
        name = _key(path, root)
        if kind != "video":
            items.append(Item(name, path))
            continue
        # a detector's frames: every stride-th from 0 (as gswfast explain picks them)
        starts = window_starts(counts[path], frames, stride or frames, tail=not stills) or [0]
        items.extend(Item(f"{name}@{start:07d}", path, start, stills) for start in starts)
    return items


def explain_dataset(
    source: str | Path,
    out: str | Path,
    model: str = "torchvision:resnet18",
    *,
    arch: str | None = None,
    weights: Path | None = None,
    method: str | None = None,
    segments: int | None = None,
    size: int | None = None,
    normalize: str = "auto",
    batch_size: int = 16,
    frames: int = 16,
    stride: int | None = None,
    target: int | None = None,
    seed: int = 0,
    layer: str | None = None,
    boxes: int | None = None,
    box_threshold: float | None = None,
    classes: list[int] | None = None,
    pictures: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    quiet: bool = False,
    **method_options: Any,
) -> dict[str, Any] | None:
    """Explains every item of ``source`` into ``out``; returns the manifest on rank 0 (None
    on the other ranks). ``method`` None: integrated gradients for image models, Grad-CAM
    for video models, input x gradient for detectors and segmenters. A detector's items
    (its best ``boxes``, default 3, scored ``box_threshold`` or more, default 0.5) and a
    segmenter's (each of ``classes``, default the class given the most pixels) are
    explained a row per box or class (``_write_rows``), videos frame by frame, ``stride``
    (default 4) frames apart. See the module docstring."""
    for name, value in (
        ("batch_size", batch_size),
        ("frames", frames),
        ("stride", stride or 1),
        ("segments", segments or 1),
        ("size", size or 1),
    ):
        if not isinstance(value, int) or value < 1:
            raise UserError(f"--{name.replace('_', '-')}: expected an int >= 1, got {value!r}")
    rank, world, local_rank, group, started = _start_distributed(device)
    try:
        target_device = resolve_device(device, local_rank)
        loaded = load_model(model, arch, weights, seed=seed)
        check_kind_options(loaded.kind, model, target, boxes, box_threshold, classes)
        _check_row_options(boxes, box_threshold, classes)
        by_rows = loaded.kind in ROW_KINDS
        if by_rows:
            frames, stride = 1, stride or ROW_STRIDE
        if loaded.kind == "detection":
            boxes = DEFAULT_BOXES if boxes is None else boxes
            box_threshold = DEFAULT_BOX_THRESHOLD if box_threshold is None else box_threshold
        method = check_method(method or DEFAULT_METHODS.get(loaded.kind, DEFAULT_METHODS["image"]))
        options = dict(method_options, **layer_option(layer, method))
        size = size or default_size(model, arch, loaded.kind)
        if loaded.kind == "video":
            check_video_input(model, arch, frames, size)
        settings = _settings(
            model=model,
            arch=arch,
            weights=str(weights) if weights else None,
            seed=seed if loaded.random_weights else None,
            method=method,
            method_options=method_options,
            layer=layer,
            segments=segments,
            size=size,
            normalize=normalize,
            frames=frames,
            stride=stride or frames,
            target=target,
            **(dict(boxes=boxes, box_threshold=box_threshold, classes=classes) if by_rows else {}),
        )
        out = Path(out)
        if loaded.kind == "segmentation" and classes:  # before the settings are recorded
            _check_classes(
                loaded.module, classes, normaliser(normalize, loaded.normalisation, "cpu")
            )
        _check_settings(out, settings, overwrite)
        if loaded.random_weights and rank == 0 and not quiet:
            print(
                f"gswfast: warning: {loaded.name} has random weights (drawn from --seed {seed}); pass --weights "
                "FILE for trained weights",
                file=sys.stderr,
            )
        items = list_items(
            source,
            frames,
            stride,
            rank,
            world,
            lambda value: _all_gather(value, world, group),
            exclude=out / "items",
            stills=by_rows,
        )
        folder = make_out_folder(out / "items")
        _barrier(
            world, group
        )  # every rank has checked the old settings before rank 0 records the new ones
        if rank == 0:
            _write_json(out / "settings.json", settings)
        module = loaded.module.to(target_device)
        preprocess = normaliser(normalize, loaded.normalisation, target_device)
        explainer = command_explainer(
            module, method, n_segments=segments, preprocess=preprocess, **options
        )
        shard = [item for i, item in enumerate(items) if i % world == rank]
        mine = [item for item in shard if not _finished(folder, item, settings, pictures)]
        progress = _RankProgress(out, rank, world, len(items), len(shard) - len(mine), quiet)
        work = (_RowWork if by_rows else _Work)(
            explainer,
            folder,
            size,
            frames,
            stride or frames,
            batch_size,
            pictures,
            target_device,
            target,
            settings,
            progress,
            loaded.class_names,
        )
        if isinstance(work, _RowWork):
            work.rows_of = functools.partial(
                find_rows,
                module,
                loaded.kind,
                boxes=boxes,
                box_threshold=box_threshold,
                classes=classes,
                preprocess=preprocess,
            )
        work.run(_refuse_other_kind(mine, loaded.kind, model, folder))
        _barrier(world, group)
        manifest = _write_manifest(out, items, world, settings) if rank == 0 else None
        progress.finish(manifest)
        _barrier(world, group)
        return manifest
    finally:
        if started:
            torch.distributed.destroy_process_group()


# ------------------------------------------------------------------------ work


class _Work:
    def __init__(
        self,
        explainer: Explainer | RegionExplainer,
        folder: Path,
        size: int,
        frames: int,
        stride: int,
        batch_size: int,
        pictures: bool,
        device: torch.device,
        target: int | None,
        settings: dict[str, Any],
        progress: _RankProgress,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.class_names = class_names  # for the pictures' captions
        self.explainer, self.folder, self.size, self.frames, self.stride = (
            explainer,
            folder,
            size,
            frames,
            stride,
        )
        self.batch_size, self.pictures, self.device, self.progress = (
            batch_size,
            pictures,
            device,
            progress,
        )
        self.target, self.settings = target, settings

    def run(self, items: Sequence[Item]) -> None:
        images = [item for item in items if not item.is_video]
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            self._images(batch)
            self.progress.add(len(batch))
        videos: dict[Path, list[Item]] = {}
        for item in items:
            if item.is_video:
                videos.setdefault(item.path, []).append(item)
        for path, windows_wanted in videos.items():
            self._video(path, windows_wanted)

    def _images(self, batch: Sequence[Item]) -> None:
        loaded, pixels, sizes = [], [], []
        for item in batch:
            try:
                image = read_image(item.path)
                pixels.append(render.resize_frames(image[None], self.size)[0])
                sizes.append((image.shape[-2], image.shape[-1]))
                loaded.append(item)
            except MediaError as error:
                _fail(self.folder, item, str(error))
        if loaded:
            self._explain(loaded, torch.stack(pixels).to(self.device), sizes)

    def _video(self, path: Path, items: Sequence[Item]) -> None:
        """Decodes the video once, explaining this rank's items as their frames come."""
        wanted = {item.start: item for item in items if item.start is not None}  # all videos
        last = max(wanted)
        try:
            for start, explain in self._video_units(path):
                if start in wanted:
                    explain(wanted.pop(start))
                    self.progress.add(1)
                if start >= last:
                    break
        except MediaError as error:
            for item in wanted.values():
                _fail(self.folder, item, str(error))
            self.progress.add(len(wanted))
            return
        for item in wanted.values():
            _fail(self.folder, item, self._missing(path, item))
        self.progress.add(len(wanted))

    def _video_units(self, path: Path) -> Iterator[tuple[int, Callable[[Item], None]]]:
        """Per window of the video: its first frame, and what explains its item."""
        frames, _ = read_video(path)
        frames, shape = remember_shape(frames)
        for start, clip in windows(frames, self.frames, self.stride, self.size):
            yield start, functools.partial(self._explain_clip, clip=clip, sizes=shape)

    def _explain_clip(self, item: Item, clip: torch.Tensor, sizes: list[tuple[int, int]]) -> None:
        self._explain([item], clip[None].to(self.device), sizes)

    def _missing(self, path: Path, item: Item) -> str:
        """Why ``item`` of ``path`` was never reached."""
        return f"{path}: fewer frames than a window of {self.frames}"

    def _explain(
        self, items: Sequence[Item], x: torch.Tensor, sizes: Sequence[tuple[int, int]]
    ) -> None:
        """Explains ``x [B, C, (T), size, size]`` (each item stretched to the model's size);
        ``sizes``: each item's ``(H, W)`` before, which its record and picture keep."""
        begin = time.perf_counter()
        try:
            expl = self.explainer(x, self.target)
        except Exception as error:  # any type: the items fail, the job goes on
            _stop_on_option_mistake(error)
            if len(items) > 1:  # one bad input (NaN scores, say) fails alone
                for b, item in enumerate(items):
                    self._explain([item], x[b : b + 1], sizes[b : b + 1])
                return
            _fail(self.folder, items[0], failure_line(error))
            return
        seconds = (time.perf_counter() - begin) / len(items)
        host = _BatchOnHost.of(expl)
        for b, item in enumerate(items):
            _write_result(self.folder, item, host, b, seconds, self.settings, sizes[b])
        if self.pictures:
            self._draw(items, expl, x, sizes)

    def _draw(
        self,
        items: Sequence[Item],
        expl: Explanation,
        x: torch.Tensor,
        sizes: Sequence[tuple[int, int]],
    ) -> None:
        """The pictures, as ``gswfast explain`` draws them: the input's aspect ratio, the
        longer side ``PICTURE_SIDE`` (one drawing per distinct input size in the batch)."""
        for size in dict.fromkeys(sizes):
            shape = render.picture_shape(size[0], size[1], PICTURE_SIDE)
            pictures = render.draw_picture(expl, x, shape=shape)
            for b, item in enumerate(items):
                if sizes[b] != size:
                    continue
                picture = viz.captioned(pictures[b], expl, b, self.class_names)
                if picture.dim() == 3:
                    viz.save_png(picture, _picture(self.folder, item))
                else:
                    viz.save_gif(picture, _picture(self.folder, item))


class _RowWork(_Work):
    """A detector's or a segmenter's items: each image or video frame on its own (they
    keep their aspect ratio, so sizes differ), its longer side ``size``, explained a row
    per box or class, the rows batched (``gswfast.detections``)."""

    rows_of: Callable[[torch.Tensor, str], Rows]  # set by explain_dataset

    def _images(self, batch: Sequence[Item]) -> None:
        for item in batch:
            try:
                image = read_image(item.path)
            except MediaError as error:
                _fail(self.folder, item, str(error))
                continue
            self._explain_rows(item, image)

    def _video_units(self, path: Path) -> Iterator[tuple[int, Callable[[Item], None]]]:
        """Per frame of the video: its index, and what explains its item."""
        frames, _ = read_video(path)
        for index, frame in enumerate(frames):
            yield index, functools.partial(self._explain_rows, original=frame)

    def _missing(self, path: Path, item: Item) -> str:
        return f"{path}: no frame {item.start}"

    def _explain_rows(self, item: Item, original: torch.Tensor) -> None:
        """``original [3, H, W]`` (uint8, the file's size) at the model's size, its rows
        found and explained; the result (and the picture) written."""
        from gswfast.detections import rows_input

        image = render.resize_keeping_aspect(original[None], self.size).to(self.device)
        where = str(item.path) if item.start is None else f"{item.path} frame {item.start}"
        begin = time.perf_counter()
        try:
            rows = self.rows_of(image, where)
            expl = None
            if rows.target is not None:
                batch, _ = rows_input(image, rows)  # no segmentation given: SLIC's
                begin = time.perf_counter()  # the explanation's time, as gswfast explain's
                expl = self.explainer(batch, rows.target)
        except UserError:
            raise  # --classes out of range: the same for every item
        except Exception as error:  # any type: the item fails, the job goes on
            _stop_on_option_mistake(error)
            _fail(self.folder, item, failure_line(error))
            return
        seconds = time.perf_counter() - begin
        sizes = (tuple(original.shape[-2:]), tuple(image.shape[-2:]))
        _write_rows(self.folder, item, rows, expl, seconds, self.settings, sizes)
        if self.pictures:
            self._draw_rows(item, rows, expl, image, original)

    def _draw_rows(
        self,
        item: Item,
        rows: Rows,
        expl: Explanation | None,
        image: torch.Tensor,
        original: torch.Tensor,
    ) -> None:
        """``<item>.png``: its rows' pictures side by side, as ``gswfast explain`` draws its
        sheet (a grey picture when it has no row)."""
        from gswfast import detections

        shape = render.picture_shape(original.shape[-2], original.shape[-1], PICTURE_SIDE)
        if expl is None:
            pictures = [detections.empty_picture(image, shape, "no box")]
        else:
            pictures = detections.row_pictures(expl, image, rows, 3, shape, self.class_names)
        viz.save_png(render.side_by_side(pictures), _picture(self.folder, item))


def _check_row_options(
    boxes: int | None, box_threshold: float | None, classes: list[int] | None
) -> None:
    """``UserError`` for a detector's or a segmenter's option out of its range."""
    if boxes is not None and (not isinstance(boxes, int) or isinstance(boxes, bool) or boxes < 1):
        raise UserError(f"--boxes: expected an int >= 1, got {boxes!r}")
    if box_threshold is not None and not (
        isinstance(box_threshold, (int, float)) and 0.0 <= box_threshold <= 1.0
    ):
        raise UserError(f"--box-threshold: expected a number from 0 to 1, got {box_threshold!r}")
    if classes is not None and not (
        isinstance(classes, (list, tuple))
        and classes
        and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
        and len(set(classes)) == len(classes)
    ):
        raise UserError(f"--classes: expected a list of distinct classes >= 0, got {classes!r}")


def _check_classes(
    model: torch.nn.Module,
    classes: list[int],
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None,
) -> None:
    """``UserError`` for a class the segmenter does not have (one forward pass of a small
    grey image on the CPU tells its class count), before a job records its settings."""
    from gswfast.detections import segmentation_rows

    grey = torch.full((1, 3, 64, 64), 128, dtype=torch.uint8)
    segmentation_rows(model, grey, classes, preprocess, "a grey probe image")


def _stop_on_option_mistake(error: Exception) -> None:
    """``UserError`` for an error that would be the same for every item (a target, a layer,
    a method option the model refuses): the job stops instead of failing every item."""
    if isinstance(error, (ValueError, RuntimeError)) and str(error).startswith(
        ("target:", "layer:", "n_samples:", "design:")
    ):
        raise UserError(str(error)) from None


def _refuse_other_kind(items: Sequence[Item], kind: str, model: str, folder: Path) -> list[Item]:
    """Records images given to a video model (and videos to an image model) as failed;
    detectors and segmenters take both (videos frame by frame)."""
    kept = []
    for item in items:
        if kind not in ("any", *ROW_KINDS) and item.is_video != (kind == "video"):
            what = "a video" if item.is_video else "an image"
            _fail(folder, item, f"{what} cannot go through the {kind} model {model}")
        else:
            kept.append(item)
    return kept


class _BatchOnHost(NamedTuple):
    """What a batch's result files hold, copied to the host once per batch (not per item:
    on a GPU each copy is a synchronisation). Scores and ranking ``[B, K]``, labels
    ``[B, (T,) H, W]``, target and segment counts ``[B]``."""

    segment_scores: np.ndarray
    ranking: np.ndarray
    labels: np.ndarray
    target: np.ndarray
    num_segments: np.ndarray

    @classmethod
    def of(cls, expl: Explanation) -> _BatchOnHost:
        tensors = (expl.segment_scores, expl.ranking(), expl.labels, expl.target, expl.num_segments)
        return cls(*(tensor.cpu().numpy() for tensor in tensors))


def _write_result(
    folder: Path,
    item: Item,
    host: _BatchOnHost,
    b: int,
    seconds: float,
    settings: dict[str, Any],
    input_size: tuple[int, int],
) -> None:
    """``<item>.npz``: the scores, ranking and labels (at the model's size), the target,
    the time, the settings, and ``input_size``, the file's ``(H, W)`` before it was
    stretched to the model's (the labels' shape)."""
    n = int(host.num_segments[b])
    # Any: np.savez_compressed's **kwds share their type with its allow_pickle: bool.
    arrays: dict[str, Any] = {
        "segment_scores": host.segment_scores[b, :n],
        "ranking": host.ranking[b, :n].astype(np.int32),
        "labels": host.labels[b].astype(np.int32),
        "target": np.int64(host.target[b]),
        "seconds": np.float64(seconds),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
        "input_size": np.array(input_size, dtype=np.int64),
    }
    _save_npz(folder, item, arrays)


def _write_rows(
    folder: Path,
    item: Item,
    rows: Rows,
    expl: Explanation | None,
    seconds: float,
    settings: dict[str, Any],
    sizes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """``<item>.npz`` of a detector's or a segmenter's item, ``R`` rows (``R`` may be 0: no
    box worth explaining): ``rows`` (their names, ``box0``... or ``class3``...),
    ``segment_scores`` float32 ``[R, K]`` and ``ranking`` int32 ``[R, K]`` (-1 past a
    row's ``num_segments [R]``), ``labels`` int32 ``[H, W]`` at the model's size (``[R, H,
    W]`` when the rows' segments differ, with ``--swag``), ``target`` int64 ``[R]`` (each
    row's class); a detector's ``boxes`` float32 ``[R, 4]`` (xyxy in the file's pixels),
    ``box_scores [R]`` and ``best_score`` (of any box found); a segmenter's ``pixels [R]``
    (the class's pixels at the model's size); ``seconds``, ``settings``, ``input_size``."""
    (file_h, file_w), (model_h, model_w) = sizes
    count = len(rows.names)
    arrays: dict[str, Any] = {
        "rows": np.array(rows.names, dtype=str),
        "seconds": np.float64(seconds),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
        "input_size": np.array((file_h, file_w), dtype=np.int64),
    }
    if expl is None:
        arrays.update(
            segment_scores=np.zeros((0, 0), np.float32),
            ranking=np.zeros((0, 0), np.int32),
            num_segments=np.zeros(0, np.int64),
            labels=np.zeros((0, model_h, model_w), np.int32),
            target=np.zeros(0, np.int64),
        )
    else:
        host = _BatchOnHost.of(expl)
        width = np.arange(host.ranking.shape[1])[None] < host.num_segments[:, None]
        shared = all(np.array_equal(host.labels[0], row) for row in host.labels[1:])
        arrays.update(
            segment_scores=host.segment_scores.astype(np.float32),
            ranking=np.where(width, host.ranking, -1).astype(np.int32),
            num_segments=host.num_segments.astype(np.int64),
            labels=(host.labels[0] if shared else host.labels).astype(np.int32),
            target=host.target.astype(np.int64),
        )
    if rows.found is not None:
        scale = np.array([file_w / model_w, file_h / model_h] * 2, np.float32)
        arrays.update(
            boxes=rows.found.boxes.cpu().numpy().astype(np.float32).reshape(count, 4) * scale,
            box_scores=rows.found.scores.cpu().numpy().astype(np.float32),
            best_score=np.float32(rows.found.best),
        )
    else:
        assert rows.masks is not None  # a segmenter's rows
        arrays["pixels"] = rows.masks.flatten(1).sum(1).cpu().numpy().astype(np.int64)
    _save_npz(folder, item, arrays)


def _save_npz(folder: Path, item: Item, arrays: dict[str, Any]) -> None:
    """``<item>.npz`` written atomically (a reader sees the whole file or none), and the
    item's old failure removed."""
    final = folder / f"{item.key}.npz"
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(temporary, final)
    (folder / f"{item.key}.failed.json").unlink(missing_ok=True)


def _fail(folder: Path, item: Item, reason: str) -> None:
    _write_json(
        folder / f"{item.key}.failed.json",
        {"item": item.key, "path": str(item.path), "reason": reason},
    )


def _finished(folder: Path, item: Item, settings: dict[str, Any], pictures: bool = False) -> bool:
    """Done before with the same settings (so skipped), and drawn when ``pictures``."""
    if pictures and not _picture(folder, item).exists():
        return False
    return _item_settings(folder / f"{item.key}.npz") == settings


def _picture(folder: Path, item: Item) -> Path:
    return folder / f"{item.key}{'.gif' if item.is_video and not item.still else '.png'}"


def _item_settings(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return json.loads(str(data["settings"])) if "settings" in data.files else {}
    except (OSError, ValueError, KeyError):  # a file from elsewhere: not ours to skip
        return {}


def _settings(**values: Any) -> dict[str, Any]:
    """The settings that make an item's result, as JSON values (recorded and compared)."""
    settings: dict[str, Any] = json.loads(json.dumps(values, default=str))
    return settings


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuses an ``out`` that holds results made with other settings, unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a folder")
    recorded = out / "settings.json"
    if overwrite or not recorded.exists():
        return
    old = _recorded_settings(recorded)
    changed = [
        f"{key} {old.get(key)!r} -> {settings.get(key)!r}"
        for key in sorted(set(old) | set(settings))
        if old.get(key) != settings.get(key)
    ]
    if changed:
        raise UserError(
            f"--out: {out} holds results made with other settings ({'; '.join(changed)}); pass "
            "--overwrite to recompute them, or choose another --out"
        )


def _recorded_settings(path: Path) -> dict[str, Any]:
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not isinstance(old, dict):
        raise UserError(
            f"--out: {path} is not the settings file of a gswfast job (damaged?); pass "
            "--overwrite to replace it, or choose another --out"
        )
    return old


# ------------------------------------------------------------------------ manifest


def _write_manifest(
    out: Path, items: Sequence[Item], world: int, settings: dict[str, Any]
) -> dict[str, Any]:
    folder = out / "items"
    for stale in folder.glob(".*.tmp"):  # left by killed workers; every rank is past the barrier
        stale.unlink(missing_ok=True)
    rows, seconds = [], 0.0
    for item in items:
        row: dict[str, Any] = {"item": item.key, "path": str(item.path)}
        done, failed = folder / f"{item.key}.npz", folder / f"{item.key}.failed.json"
        if done.exists() and _item_settings(done) == settings:
            with np.load(done) as data:
                row.update(
                    status="done",
                    output=str(done),
                    target=data["target"].tolist(),  # a class; a list for rows
                    seconds=float(data["seconds"]),
                    input_size=data["input_size"].tolist() if "input_size" in data else None,
                    model_size=list(data["labels"].shape[-2:]),
                )
            seconds += row["seconds"]
        elif failed.exists():
            row.update(status="failed", reason=json.loads(failed.read_text())["reason"])
        else:
            row.update(status="missing")
        rows.append(row)
    counts = {
        status: sum(r["status"] == status for r in rows) for status in ("done", "failed", "missing")
    }
    manifest = {
        "settings": settings,
        "items": rows,
        "totals": {**counts, "items": len(rows), "explain_seconds": seconds, "processes": world},
    }
    _write_json(out / "manifest.json", manifest)
    return manifest


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)


# ------------------------------------------------------------------------ progress


class _RankProgress:
    """Rank 0 shows the items finished by every rank. Each rank writes its own count to
    ``out/.progress/rank<r>`` (one small file, rewritten per batch); rank 0 reads the
    ``world`` counts, so following the job costs O(ranks) per batch, not a glob of the
    output. The bar ends at the manifest's count (done + failed) after the last barrier."""

    def __init__(
        self, out: Path, rank: int, world: int, total: int, skipped: int, quiet: bool
    ) -> None:
        self.folder, self.rank, self.world = out / ".progress", rank, world
        self.folder.mkdir(exist_ok=True)
        self.count = skipped
        self.bar = (
            Progress("gswfast explain-dataset", total, "item", quiet=quiet) if rank == 0 else None
        )
        self.add(0)

    def add(self, count: int) -> None:
        self.count += count
        if self.world > 1:
            _write_json(self.folder / f"rank{self.rank}", self.count)
        if self.bar is not None:
            self.bar.set(self._everyone())

    def finish(self, manifest: dict[str, Any] | None) -> None:
        if self.bar is not None and manifest is not None:
            totals = manifest["totals"]
            self.bar.set(totals["done"] + totals["failed"])
            self.bar.close()

    def _everyone(self) -> int:
        if self.world == 1:
            return self.count
        total = 0
        for r in range(self.world):
            try:
                total += (
                    self.count if r == self.rank else int((self.folder / f"rank{r}").read_text())
                )
            except (OSError, ValueError):
                continue  # not written yet
        return total


# ------------------------------------------------------------------------ helpers


def _source_paths(source: Path, exclude: Path | None = None) -> tuple[list[Path], Path]:
    if source.is_dir():
        outputs = None if exclude is None else exclude.resolve()
        paths = sorted(
            p
            for p in source.rglob("*")
            if p.is_file()
            and p.suffix.lower() in MEDIA_SUFFIXES
            and (outputs is None or outputs not in p.resolve().parents)
        )
        return paths, source
    if source.is_file() and source.suffix.lower() in MEDIA_SUFFIXES:  # one image or video
        return [source], source.parent
    if source.is_file():
        try:
            lines = [line.strip() for line in source.read_text(encoding="utf-8").splitlines()]
        except UnicodeDecodeError:
            raise UserError(
                f"{source}: expected a folder, an image or video, or a text file of paths"
            ) from None
        listed = [line for line in lines if line and not line.startswith("#")]
        paths = [
            Path(line) if Path(line).is_absolute() else source.parent / line for line in listed
        ]
        return _once(paths), source.parent
    raise UserError(f"{source}: no such folder or list file")


def _once(paths: Sequence[Path]) -> list[Path]:
    """``paths`` in their order, each file once (however it is spelled)."""
    seen: set[Path] = set()
    kept = []
    for path in paths:
        resolved = path.resolve()
        if resolved not in seen:
            seen.add(resolved)
            kept.append(path)
    return kept


def _key(path: Path, root: Path) -> str:
    """The item's name: its path under ``root``, or its whole path when elsewhere (not its
    last two parts: ``d1/cats/x.png`` and ``d2/cats/x.png`` would share a result). Past
    ``KEY_BYTES``, a hash of it and its last bytes: file names end at 255 bytes."""
    resolved = path.resolve()
    try:
        relative = resolved.relative_to(root.resolve())
    except ValueError:
        relative = resolved.relative_to(resolved.anchor)
    key = os.fsencode(relative).replace(os.fsencode(os.sep), b"__")
    if len(key) <= KEY_BYTES:
        return os.fsdecode(key)
    digest = hashlib.sha256(key).hexdigest()[:16]
    tail = key[len(key) - KEY_BYTES + 17 :].lstrip(bytes(range(0x80, 0xC0)))  # at a character
    return f"{digest}~{os.fsdecode(tail)}"


def _frame_counts(
    videos: Sequence[Path], rank: int, world: int, share: Share | None
) -> dict[Path, int]:
    """Frames of each video. Each rank counts its share (videos ``rank, rank + world,
    ...``), from the header where it has a count; ``share`` gathers every rank's counts."""
    mine = {str(path): frame_count(path) for i, path in enumerate(videos) if i % world == rank}
    if world > 1 and share is not None:
        merged: dict[str, int] = {}
        for part in share(mine):
            merged.update(part)
        mine = merged
    return {path: mine.get(str(path), 0) for path in videos}


def _start_distributed(device: str) -> tuple[int, int, int, Any, bool]:
    """(rank, world, local rank, barrier group, whether this call started the process
    group). The GPU is chosen before the process group
    starts; the group is gloo (only barriers and small gathers run on it) with a timeout of
    days, so uneven shards never time out."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return rank, world, local_rank, None, False
    chosen = resolve_device(device, local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        return rank, world, local_rank, None, True
    return (
        rank,
        world,
        local_rank,
        torch.distributed.new_group(backend="gloo", timeout=BARRIER_TIMEOUT),
        False,
    )


# group: a torch.distributed ProcessGroup, or None for the default group (Any, as
# _start_distributed returns it: new_group's type includes torch's private _NonGroupMember).
def _barrier(world: int, group: Any) -> None:
    if world > 1:
        torch.distributed.barrier(group=group)


def _all_gather(value: Any, world: int, group: Any) -> list[Any]:
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, value, group=group)
    return parts
