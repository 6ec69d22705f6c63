"""Trains the demo models on freshly drawn synthetic data, with fixed seeds.

    python -m gswfast.demo.train [--only shapes|actions] [--out DIR]

A few minutes on a 2-core CPU; writes ``shapes.pt`` and ``actions.pt`` (float32 state
dicts) and prints their accuracy on data drawn with another seed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gswfast.demo.data import Batch, action_clips, shape_images
from gswfast.demo.models import ARCHITECTURES, WEIGHTS

PLANS: dict[str, tuple[int, int, float, Callable[..., Batch]]] = {  # steps, batch, lr, data
    "shapes": (1500, 64, 3e-3, shape_images),
    "actions": (600, 24, 3e-3, action_clips),
}


def train(name: str, seed: int = 0, steps: int | None = None) -> torch.nn.Module:
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


def accuracy(model: torch.nn.Module, name: str, count: int = 256, seed: int = 12345) -> float:
    draw = PLANS[name][3]
    data = draw(count, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in torch.split(data.images, 32)])
    return float((predicted == data.classes).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=tuple(PLANS))
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(torch.get_num_threads())
    for name in [args.only] if args.only else list(PLANS):
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
