"""Trains the demo models on freshly drawn synthetic data, with fixed seeds.

    python -m gswfast.demo.train [--only shapes|actions|detector] [--out DIR]

A few minutes each on a 2-core CPU; writes ``shapes.pt``, ``actions.pt`` and
``detector.pt`` (float32 state dicts) and prints their accuracy (the detector's: the share
of objects found, IoU at least 0.5 and the right class) on data drawn with another seed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gswfast.demo.data import Batch, action_clips, detection_scenes, shape_images
from gswfast.demo.models import ARCHITECTURES, WEIGHTS

PLANS: dict[str, tuple[int, int, float, Callable[..., Batch]]] = {  # steps, batch, lr, data
    "shapes": (1500, 64, 3e-3, shape_images),
    "actions": (600, 24, 3e-3, action_clips),
}


DETECTOR_PLAN = (600, 16, 2e-3)  # steps, batch, lr


def train(name: str, seed: int = 0, steps: int | None = None) -> torch.nn.Module:
    if name == "detector":
        return train_detector(seed, steps)
    planned, batch, lr, draw = PLANS[name]
    steps = steps or planned
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ARCHITECTURES[name]()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    model.train()
    for step in range(steps):
        data = draw(batch, generator=generator)
        loss = torch.nn.functional.cross_entropy(model(data.images), data.classes)
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated in torch
        optimiser.step()
        schedule.step()
        if step % 100 == 0:
            print(f"{name}: step {step}, loss {loss.item():.3f}", flush=True)
    return model.eval()


def train_detector(seed: int = 0, steps: int | None = None) -> torch.nn.Module:
    """The demo detector on ``detection_scenes``: torchvision's own losses (RPN and box
    heads), AdamW with a one-cycle schedule."""
    planned, batch, lr = DETECTOR_PLAN
    steps = steps or planned
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = ARCHITECTURES["detector"]()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    model.train()
    for step in range(steps):
        scenes = detection_scenes(batch, generator=generator)
        targets = [
            {"boxes": b, "labels": c} for b, c in zip(scenes.boxes, scenes.labels, strict=True)
        ]
        losses = model(list(scenes.images), targets)
        loss = sum(losses.values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0:
            print(f"detector: step {step}, loss {float(loss.detach()):.3f}", flush=True)
    return model.eval()


def detector_recall(model: torch.nn.Module, count: int = 128, seed: int = 12345) -> float:
    """The share of objects the detector finds: a box scored 0.5 or more, of their class,
    with an IoU of at least 0.5."""
    from gswfast.attribution.targets import box_iou

    scenes = detection_scenes(count, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        found = [f for chunk in torch.split(scenes.images, 32) for f in model(list(chunk))]
    hits = 0
    for boxes, labels, out in zip(scenes.boxes, scenes.labels, found, strict=True):
        sure = out["scores"] >= 0.5
        overlap = box_iou(boxes, out["boxes"][sure])  # [objects, found]
        same = labels.view(-1, 1) == out["labels"][sure].view(1, -1)
        hits += int(((overlap >= 0.5) & same).any(1).sum())
    return hits / scenes.labels.numel()


def accuracy(model: torch.nn.Module, name: str, count: int = 256, seed: int = 12345) -> float:
    if name == "detector":
        return detector_recall(model)
    draw = PLANS[name][3]
    data = draw(count, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in torch.split(data.images, 32)])
    return float((predicted == data.classes).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=(*PLANS, "detector"))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    for name in [args.only] if args.only else [*PLANS, "detector"]:
        start = time.perf_counter()
        model = train(name)
        torch.save(model.state_dict(), args.out / f"{name}.pt")
        print(
            f"{name}: accuracy {accuracy(model, name):.1%} on fresh data, "
            f"trained in {time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
