"""Running a model for attribution: target selection, output checks, and a session that
leaves the model as it found it (train/eval state, ``requires_grad`` flags, no hooks)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

Target = int | Sequence[int] | Tensor | None
Preprocess = Callable[[Tensor], Tensor]


class ModelForward:
    """``model(preprocess(x))`` with checked logits, optionally under autocast.

    Attributions are taken with respect to ``x`` (the un-preprocessed input), so a
    ``preprocess`` such as ImageNet normalisation is part of the differentiated function.

    ``channels_last``: hand the model a channels-last copy of its input (the weights are
    left alone; convolutions follow the input's layout). None: on the CPU, where oneDNN's
    channels-last convolutions ran resnet18 1.3-1.4x and r2plus1d_18 1.35x faster here,
    and under autocast on CUDA (tensor cores want NHWC); off for float32 on CUDA. A model
    that fails on such an input (``x.view`` after a convolution, say) is retried with the
    contiguous input once, and the choice is kept.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess | None = None,
                 autocast: torch.dtype | None = None, channels_last: bool | None = None) -> None:
        self.model = model
        self.preprocess = preprocess
        self.autocast = autocast
        self.channels_last = channels_last
        self.check_targets = True  # checked once against the logits, then cleared
        self.last_logits: Tensor | None = None  # of the latest selected() call, detached

    def logits(self, x: Tensor) -> Tensor:
        """``[B, classes]`` logits of ``x [B, C, (T), H, W]``, float32 or float64."""
        inputs = self.preprocess(x) if self.preprocess is not None else x
        with self._autocast(x.device):
            out = self._run(inputs)
        _check_logits(out, x.shape[0])
        return out.to(accumulation_dtype(out.dtype))

    def _run(self, inputs: Tensor) -> object:
        if not self._wants_channels_last(inputs):
            return self.model(inputs)
        layout = torch.channels_last if inputs.dim() == 4 else torch.channels_last_3d
        try:
            return self.model(inputs.contiguous(memory_format=layout))
        except RuntimeError:
            if self.channels_last is not None:
                raise
        # Outside the except block: if the model fails on contiguous inputs too, its own
        # error surfaces alone, and the layout choice stays open.
        out = self.model(inputs)
        self.channels_last = False
        warnings.warn("gswfast: the model failed on a channels-last input; using contiguous inputs "
                      "(pass channels_last=False to skip the attempt)", RuntimeWarning, stacklevel=4)
        return out

    def _wants_channels_last(self, inputs: Tensor) -> bool:
        if inputs.dim() not in (4, 5):
            return False
        if self.channels_last is not None:
            return self.channels_last
        return inputs.device.type == "cpu" or self.autocast is not None

    def selected(self, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """The target logit of each sample ``[B]`` and the targets ``[B]`` (argmax if None)."""
        out = self.logits(x)
        self.last_logits = out.detach()
        if target is None:
            target = out.detach().argmax(1)
        elif self.check_targets:
            check_target_range(target, out.shape[1])
            self.check_targets = False
        return out.gather(1, target.view(-1, 1)).squeeze(1), target

    def predicted(self, x: Tensor) -> Tensor:
        """The predicted class ``[B]`` (one forward pass without a graph)."""
        with torch.no_grad():
            return self.logits(x).argmax(1)

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


def input_gradient(forward: ModelForward, x: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
    """d(target logit)/dx ``[B, C, ...]`` and the targets ``[B]``."""
    x = x.detach().requires_grad_(True)
    score, target = forward.selected(x, target)
    _check_differentiable(score)
    (grad,) = torch.autograd.grad(score.sum(), x)
    return grad, target


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums run in float32 at least, and in float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def resolve_target(target: Target, batch: int, device: torch.device) -> Tensor | None:
    """``None`` stays None (predicted class); an int, sequence or tensor becomes int64 ``[B]``."""
    if target is None:
        return None
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        t = target.to(device=device, dtype=torch.int64)
    elif isinstance(target, int) and not isinstance(target, bool):
        t = torch.full((batch,), target, dtype=torch.int64, device=device)
    elif isinstance(target, Sequence) and all(isinstance(v, int) and not isinstance(v, bool) for v in target):
        t = torch.tensor(list(target), dtype=torch.int64, device=device)
    else:
        raise TypeError(f"target: expected None, an int, a sequence of ints or a tensor, got {type(target).__name__}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target: expected one class per sample ([{batch}]), got shape {tuple(t.shape)}")
    return t.contiguous()


def check_target_range(target: Tensor, classes: int) -> None:
    """Raises ``ValueError`` unless every target lies in ``[0, classes)`` (one device sync)."""
    low, high = torch.aminmax(target)
    low, high = int(low), int(high)
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ValueError(f"target: class {bad} is out of range for a model with {classes} outputs")


@contextlib.contextmanager
def model_session(model: nn.Module, eval_mode: bool = True) -> Iterator[list]:
    """Prepares ``model`` for attribution and restores it afterwards, even if it raises.

    Inside: eval mode (so BatchNorm uses its running statistics, which the explanation must
    not update, and samples do not depend on each other), parameters frozen (no ``.grad``
    accumulates and the backward pass skips weight gradients), grad mode on. Yields a list
    that callers append hook handles to; they are removed on exit.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    training = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    handles: list = []
    try:
        if eval_mode:
            model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield handles
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in training.items():
            m.training = mode


def _check_logits(out: object, batch: int) -> None:
    if not isinstance(out, Tensor):
        raise ValueError(f"model: expected it to return a logits tensor [B, classes], got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != batch:
        raise ValueError(f"model: expected logits [B, classes] with B = {batch}, got shape {tuple(out.shape)}")
    if not out.is_floating_point():
        raise ValueError(f"model: expected floating-point logits, got {out.dtype}")


def _check_differentiable(score: Tensor) -> None:
    if not score.requires_grad:
        raise ValueError(
            "model: its output does not depend differentiably on the input "
            "(detached, computed under no_grad, or not a float function of it)"
        )
