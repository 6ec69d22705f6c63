"""Explaining whole datasets, on one process or across ranks with ``torchrun``.

``explain_dataset(source, out, ...)`` (and ``gswfast explain-dataset``) lists the work
items of ``source`` (a folder of images/videos, or a text file of paths): one per image,
one per window of each video. Under ``torchrun`` rank ``r`` of ``W`` takes items
``r, r + W, r + 2W, ...`` of the sorted list, on ``cuda:LOCAL_RANK`` or the CPU.

Every item's result is written atomically (a temporary file, then a rename) to
``out/items/<key>.npz`` (or ``<key>.failed.json`` with the reason), so a rerun skips
finished items and a killed worker loses only the items it had in flight. After a barrier,
rank 0 writes ``out/manifest.json``, which lists every item exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gswfast.video.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES



@dataclass(frozen=True)
class Item:
    """One unit of work: an image, or one window (``start``) of a video."""

    key: str
    path: Path
    start: int | None = None

    @property
    def is_video(self) -> bool:
        return self.start is not None


def list_items(source: str | Path, frames: int = 16, stride: int | None = None) -> list[Item]:
    """The work items of ``source``, in a deterministic order (sorted paths, then windows).
    A video that cannot be opened becomes one item, which will fail with its reason."""
    paths, root = _source_paths(Path(source))
    items: list[Item] = []
    for path in paths:
        name = _key(path, root)
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            items.append(Item(name, path))
            continue
        count = _frame_count(path)
        starts = range(0, count - frames + 1, stride or frames) if count >= frames else [0]
        items.extend(Item(f"{name}@{start:07d}", path, start) for start in starts)
    return items


def explain_dataset(source: str | Path, out: str | Path, model: str = "torchvision:resnet18", *,
                    arch: str | None = None, weights: Path | None = None, method: str = "integrated_gradients",
                    segments: int | None = None, size: int | None = None, normalize: str = "auto",
                    batch_size: int = 16, frames: int = 16, stride: int | None = None, pictures: bool = False,
                    device: str = "auto", quiet: bool = False, **method_options: Any) -> dict[str, Any] | None:
    """Explains every item of ``source`` into ``out``; returns the manifest on rank 0 (None
    on the other ranks). See the module docstring."""
    import gswfast as gsw
    from gswfast.cli import check_method, default_size, load_model, normaliser, resolve_device

    rank, world, local_rank = _start_distributed()
    try:
        target_device = resolve_device(device if device != "auto" or not torch.cuda.is_available() else f"cuda:{local_rank}")
        net, kind, default_norm = load_model(model, arch, weights)
        net = net.to(target_device).eval()
        items = list_items(source, frames, stride)
        folder = Path(out) / "items"
        folder.mkdir(parents=True, exist_ok=True)
        explainer = gsw.Explainer(net, check_method(method), n_segments=segments,
                                  preprocess=normaliser(normalize, default_norm, target_device), **method_options)
        mine = [item for i, item in enumerate(items) if i % world == rank and not _finished(folder, item)]
        work = _Work(explainer, folder, size or default_size(model, arch, kind), frames, stride or frames,
                     batch_size, pictures, target_device, _progress(quiet, rank, folder, len(items)))
        work.run(_refuse_other_kind(mine, kind, model, folder))
        _barrier(world)
        manifest = _write_manifest(Path(out), items, world) if rank == 0 else None
        _barrier(world)
        return manifest
    finally:
        _stop_distributed(world)


# ------------------------------------------------------------------------ work


class _Work:
    def __init__(self, explainer, folder: Path, size: int, frames: int, stride: int, batch_size: int,
                 pictures: bool, device: torch.device, progress: Callable[[], None]) -> None:
        self.explainer, self.folder, self.size, self.frames, self.stride = explainer, folder, size, frames, stride
        self.batch_size, self.pictures, self.device, self.progress = batch_size, pictures, device, progress

    def run(self, items: Sequence[Item]) -> None:
        images = [item for item in items if not item.is_video]
        for start in range(0, len(images), self.batch_size):
            self._images(images[start : start + self.batch_size])
            self.progress()
        videos: dict[Path, list[Item]] = {}
        for item in items:
            if item.is_video:
                videos.setdefault(item.path, []).append(item)
        for path, windows in videos.items():
            self._video(path, windows)
            self.progress()

    def _images(self, batch: Sequence[Item]) -> None:
        from gswfast import viz
        from gswfast.video import MediaError, read_image

        loaded, pixels = [], []
        for item in batch:
            try:
                pixels.append(viz.resize(read_image(item.path)[None], self.size)[0])
                loaded.append(item)
            except MediaError as error:
                _fail(self.folder, item, str(error))
        if loaded:
            self._explain(loaded, torch.stack(pixels).to(self.device))

    def _video(self, path: Path, items: Sequence[Item]) -> None:
        """Decodes the video once, explaining this rank's windows as they fill."""
        from gswfast.video import MediaError, read_video, windows

        wanted = {item.start: item for item in items}
        last = max(wanted)
        try:
            frames, _ = read_video(path)
            for start, clip in windows(frames, self.frames, self.stride, self.size):
                if start in wanted:
                    self._explain([wanted.pop(start)], clip[None].to(self.device))
                if start >= last:
                    break
        except MediaError as error:
            for item in wanted.values():
                _fail(self.folder, item, str(error))
            return
        for item in wanted.values():
            _fail(self.folder, item, f"{path}: fewer frames than a window of {self.frames}")

    def _explain(self, items: Sequence[Item], x: torch.Tensor) -> None:
        begin = time.perf_counter()
        try:
            expl = self.explainer(x)
        except (ValueError, RuntimeError) as error:
            for item in items:
                _fail(self.folder, item, f"{type(error).__name__}: {error}")
            return
        seconds = (time.perf_counter() - begin) / len(items)
        ranking = expl.ranking()
        for b, item in enumerate(items):
            _write_result(self.folder, item, expl, ranking, b, seconds)
            if self.pictures:
                from gswfast import viz

                picture = viz.picture(expl, x, size=448)[b]
                if picture.dim() == 3:
                    viz.save_png(picture, self.folder / f"{item.key}.png")
                else:
                    viz.save_gif(picture, self.folder / f"{item.key}.gif")


def _refuse_other_kind(items: Sequence[Item], kind: str, model: str, folder: Path) -> list[Item]:
    """Records images given to a video model (and videos to an image model) as failed."""
    kept = []
    for item in items:
        if kind != "any" and item.is_video != (kind == "video"):
            _fail(folder, item, f"a {'video' if item.is_video else 'image'} cannot go through the {kind} model {model}")
        else:
            kept.append(item)
    return kept


def _write_result(folder: Path, item: Item, expl, ranking: torch.Tensor, b: int, seconds: float) -> None:
    n = int(expl.num_segments[b])
    arrays = {
        "segment_scores": expl.segment_scores[b, :n].cpu().numpy(),
        "ranking": ranking[b, :n].cpu().numpy().astype(np.int32),
        "labels": expl.labels[b].cpu().numpy().astype(np.int32),
        "target": np.int64(expl.target[b]),
        "seconds": np.float64(seconds),
    }
    final = folder / f"{item.key}.npz"
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(temporary, final)  # atomic: a reader sees the whole file or none
    (folder / f"{item.key}.failed.json").unlink(missing_ok=True)


def _fail(folder: Path, item: Item, reason: str) -> None:
    final = folder / f"{item.key}.failed.json"
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"item": item.key, "path": str(item.path), "reason": reason}))
    os.replace(temporary, final)


def _finished(folder: Path, item: Item) -> bool:
    return (folder / f"{item.key}.npz").exists()


# ------------------------------------------------------------------------ manifest


def _write_manifest(out: Path, items: Sequence[Item], world: int) -> dict[str, Any]:
    folder = out / "items"
    for stale in folder.glob(".*.tmp"):  # left by killed workers; every rank is past the barrier
        stale.unlink(missing_ok=True)
    rows, seconds = [], 0.0
    for item in items:
        row: dict[str, Any] = {"item": item.key, "path": str(item.path)}
        done, failed = folder / f"{item.key}.npz", folder / f"{item.key}.failed.json"
        if done.exists():
            with np.load(done) as data:
                row.update(status="done", output=str(done), target=int(data["target"]), seconds=float(data["seconds"]))
            seconds += row["seconds"]
        elif failed.exists():
            row.update(status="failed", reason=json.loads(failed.read_text())["reason"])
        else:
            row.update(status="missing")
        rows.append(row)
    counts = {status: sum(r["status"] == status for r in rows) for status in ("done", "failed", "missing")}
    manifest = {"items": rows, "totals": {**counts, "items": len(rows), "explain_seconds": seconds, "processes": world}}
    temporary = out / f".manifest.json.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, out / "manifest.json")
    return manifest


# ------------------------------------------------------------------------ helpers


def _source_paths(source: Path) -> tuple[list[Path], Path]:
    from gswfast.cli import UserError

    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        return paths, source
    if source.is_file():
        lines = [line.strip() for line in source.read_text().splitlines()]
        listed = [line for line in lines if line and not line.startswith("#")]
        paths = [Path(line) if Path(line).is_absolute() else source.parent / line for line in listed]
        return paths, source.parent
    raise UserError(f"{source}: no such folder or list file")


def _key(path: Path, root: Path) -> str:
    try:
        relative = path.resolve().relative_to(root.resolve())
    except ValueError:
        relative = Path(*path.parts[-2:])
    return str(relative).replace(os.sep, "__")


def _frame_count(path: Path) -> int:
    """Frames of a video, counted from its packets (no decoding); 0 if it cannot be read."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = next(s for s in container.streams if s.type == "video")
            return sum(1 for packet in container.demux(stream) if packet.size)
    except Exception:  # unreadable: one item that fails with the reader's message later
        return 0


def _start_distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _stop_distributed(world: int) -> None:
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _progress(quiet: bool, rank: int, folder: Path, total: int) -> Callable[[], None]:
    """Rank 0 reports the items finished by every rank (counted in the shared output)."""
    if quiet or rank != 0:
        return lambda: None

    def report() -> None:
        done = sum(1 for _ in folder.glob("*.npz")) + sum(1 for _ in folder.glob("*.failed.json"))
        print(f"\rgswfast explain-dataset: {done}/{total} items", end="", file=sys.stderr, flush=True)

    return report

