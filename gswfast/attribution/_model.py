"""Running a model for attribution: target selection, output checks, and a session that
leaves the model as it found it (train/eval state, ``requires_grad`` flags, no hooks)."""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, SupportsInt, TypeGuard, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

if TYPE_CHECKING:
    from gswfast.attribution.targets import DetectionTarget, SegmentationTarget

Preprocess = Callable[[Tensor], Tensor]

OUTPUTS: tuple[str, ...] = ("logit", "probability", "log_probability")
_OUTPUT_ALIASES = {"logits": "logit"}


def check_output(output: object) -> str:
    """The canonical word for ``output=``: ``"logit"`` (``"logits"`` too), ``"probability"``
    or ``"log_probability"``; ``ValueError`` naming the argument otherwise."""
    if isinstance(output, str) and output in _OUTPUT_ALIASES:
        return _OUTPUT_ALIASES[output]
    if not isinstance(output, str) or output not in OUTPUTS:
        raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
    return output


def explained_scores(logits: Tensor, output: str) -> Tensor:
    """The scores an explanation explains, from logits ``[B, classes]`` (float32/64):
    themselves (``"logit"``), their softmax over classes (``"probability"``) or its log
    (``"log_probability"``); same shape and dtype."""
    if output == "probability":
        return torch.softmax(logits, dim=1)
    if output == "log_probability":
        return torch.log_softmax(logits, dim=1)
    return logits


@dataclass(frozen=True)
class OutputTarget:
    """A target for models whose output is not ``[B, classes]`` (Captum's conventions):
    ``index``, a tuple into each sample's output (``output[b][index]``), or ``score``, a
    function of the model's whole output returning one differentiable score per sample
    ``[B]``. The same for every row, so ``target[rows]`` is the target itself."""

    index: tuple[int, ...] | None = None
    score: Callable[[Any], Tensor] | None = None

    def __getitem__(self, rows: object) -> OutputTarget:
        return self

    def row_classes(self, batch: int, device: torch.device) -> Tensor:
        """The class each of ``batch`` rows explains, int64 ``[batch]`` (-1: no class)."""
        return torch.full((batch,), -1, dtype=torch.int64, device=device)

    def select(self, output: object, batch: int) -> Tensor:
        """The ``[batch]`` scores to explain, out of the model's output."""
        if self.score is not None:
            value = self.score(output)
            if (
                not isinstance(value, Tensor)
                or value.shape != (batch,)
                or not value.is_floating_point()
            ):
                got: tuple[int, ...] | str = (
                    tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                )
                raise ValueError(
                    f"target: the function of the model's output must return float scores [B] "
                    f"with B = {batch}, got {got}"
                )
            return value
        assert self.index is not None  # an OutputTarget holds an index or a score
        if (
            not isinstance(output, Tensor)
            or output.dim() != 1 + len(self.index)
            or output.shape[0] != batch
        ):
            got = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise ValueError(
                f"target: the tuple {self.index} indexes each sample's output, so the model must return "
                f"[B, {', '.join(f'd{i + 1}' for i in range(len(self.index)))}] with B = {batch}, got {got}; "
                "for one class per sample pass a list, an array or a tensor"
            )
        for i, (position, size) in enumerate(zip(self.index, output.shape[1:], strict=True)):
            if not -size <= position < size:
                raise ValueError(
                    f"target: index {position} at position {i} of {self.index} is out of range for "
                    f"the model's output of shape {tuple(output.shape)}"
                )
        key: tuple[slice | int, ...] = (slice(None), *self.index)
        return output[key]


# Union: the detection targets are named before their module loads
Target = Union[
    int,
    Sequence[int],
    Tensor,
    np.ndarray[Any, Any],
    tuple[int, ...],
    Callable[[Any], Tensor],
    "DetectionTarget",
    "SegmentationTarget",
    OutputTarget,
    None,
]
Resolved = Tensor | OutputTarget | None


class ModelForward:
    """``model(preprocess(x), *additional_forward_args)`` with checked outputs, optionally
    under autocast.

    Attributions are taken with respect to ``x`` (the un-preprocessed input), so a
    ``preprocess`` such as ImageNet normalisation is part of the differentiated function.

    ``additional_forward_args`` follow the batch, as Captum's: each tensor among them has
    one row per sample (``[B, ...]``) and the model gets the rows of the samples it sees
    (``rows=``: each input row's sample); anything else is passed as is.

    ``channels_last``: hand the model a channels-last copy of its input (the weights are
    left alone; convolutions follow the input's layout). None: on the CPU, where oneDNN's
    channels-last convolutions ran resnet18 1.3-1.4x and r2plus1d_18 1.35x faster here,
    and under autocast on CUDA (tensor cores want NHWC); off for float32 on CUDA. A model
    that fails on such an input (``x.view`` after a convolution, say) is retried with the
    contiguous input once, and the choice is kept.

    ``output``: what the target's score is (``OUTPUTS``): the logit (default), the softmax
    probability over classes or its log. ``logits()`` stays the raw logits; ``scores()``
    and ``selected()`` return the chosen output, so every method explains it.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocess: Preprocess | None = None,
        autocast: torch.dtype | None = None,
        channels_last: bool | None = None,
        additional_forward_args: Any = None,
        output: str = "logit",
    ) -> None:
        self.model = model
        self.output_kind = check_output(output)
        self.preprocess = preprocess
        self.autocast = autocast
        self.channels_last = channels_last
        self.extra_args = _as_args(additional_forward_args)
        self.check_targets = True  # checked once against the logits, then cleared
        self.last_logits: Tensor | None = None  # of the latest selected() call, detached
        self._model_dtype: torch.dtype | None = None  # read at the first call

    def check_extra_args(self, batch: int, device: torch.device) -> None:
        """Every tensor among the additional forward args has ``batch`` rows on ``device``."""
        for i, arg in enumerate(self.extra_args):
            if isinstance(arg, Tensor) and (
                arg.dim() == 0 or arg.shape[0] != batch or arg.device != device
            ):
                raise ValueError(
                    f"additional_forward_args: argument {i} is a tensor, so it must have one row per "
                    f"sample ([{batch}, ...]) on {device}, got shape {tuple(arg.shape)} on {arg.device}"
                )

    def output(self, x: Tensor, rows: Tensor | None = None) -> Any:
        """The model's raw output on ``x [N, C, (T), H, W]``; ``rows [N]``: each row's sample
        (for the additional forward args; None: row ``i`` is sample ``i``)."""
        inputs = self._as_model_dtype(self._preprocessed(x))
        with self._autocast(x.device):
            return self._run(inputs, self._args(rows))

    def logits(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """``[B, classes]`` logits of ``x [B, C, (T), H, W]``, float32 or float64, taken out
        of whatever holds them (``logits_of``)."""
        logits = _check_logits(logits_of(self.output(x, rows)), x.shape[0])
        return logits.to(accumulation_dtype(logits.dtype))

    def scores(
        self, x: Tensor, target: Tensor | OutputTarget, rows: Tensor | None = None
    ) -> Tensor:
        """The target's score of each row ``[N]``: its class's logit, or an ``OutputTarget``'s."""
        if isinstance(target, OutputTarget):
            self._check_output_target()
            out = self.output(x, rows)
            score = target.select(out, x.shape[0])
            held = logits_of(out)
            self.last_logits = (
                held.detach() if isinstance(held, Tensor) and held.dim() == 2 else None
            )
            return score.to(accumulation_dtype(score.dtype))
        out = self.logits(x, rows)
        self.last_logits = out.detach()
        if self.check_targets:
            check_target_range(target, out.shape[1])
            self.check_targets = False
        return explained_scores(out, self.output_kind).gather(1, target.view(-1, 1)).squeeze(1)

    def selected(
        self, x: Tensor, target: Tensor | OutputTarget | None, rows: Tensor | None = None
    ) -> tuple[Tensor, Tensor | OutputTarget]:
        """The target score of each sample ``[B]`` and the targets (argmax if None)."""
        if target is not None:
            return self.scores(x, target, rows), target
        out = self.logits(x, rows)
        self.last_logits = out.detach()
        target = out.detach().argmax(1)
        explained = explained_scores(out, self.output_kind)
        return explained.gather(1, target.view(-1, 1)).squeeze(1), target

    def predicted(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        """The predicted class ``[B]`` (one forward pass without a graph)."""
        with torch.no_grad():
            return self.logits(x, rows).argmax(1)

    def _check_output_target(self) -> None:
        if self.output_kind != "logit":
            raise ValueError(
                f"output: {self.output_kind!r} needs class targets (None, ints or a tensor) on "
                "[B, classes] logits; with a tuple or function target, compute it in the "
                "function (torch.softmax(output, 1)[:, c], say)"
            )

    def _preprocessed(self, x: Tensor) -> Tensor:
        if self.preprocess is None:
            return x
        try:
            return self.preprocess(x)
        except RuntimeError as error:
            hint = (
                " A 1-channel (grey) image needs a 1-channel preprocess, or repeat it to 3 channels: "
                "inputs.expand(-1, 3, *inputs.shape[2:])."
                if x.shape[1] == 1
                else " Does preprocess expect another number of channels than the inputs' "
                f"{x.shape[1]}?"
            )
            raise ValueError(
                f"preprocess: failed on inputs of shape {tuple(x.shape)} ([B, C, (T), H, W], "
                f"{x.shape[1]} channel(s)): {error}.{hint}"
            ) from error

    def _as_model_dtype(self, inputs: Tensor) -> Tensor:
        """Float ``inputs`` in the dtype of the model's floating-point weights, as uint8
        images become float: a float64 or float16 image explains a float32 model (and a
        float64 model gets float64). The cast is differentiable, so attributions come back
        in the inputs' dtype."""
        if self._model_dtype is None:
            self._model_dtype = _float_dtype_of(self.model) or inputs.dtype
        if inputs.is_floating_point() and inputs.dtype != self._model_dtype:
            return inputs.to(self._model_dtype)
        return inputs

    def _args(self, rows: Tensor | None) -> tuple[Any, ...]:
        if rows is None:
            return self.extra_args
        return tuple(
            a.index_select(0, rows) if isinstance(a, Tensor) else a for a in self.extra_args
        )

    def _run(self, inputs: Tensor, args: tuple[Any, ...] = ()) -> object:
        if not self._wants_channels_last(inputs):
            return self.model(inputs, *args)
        layout = torch.channels_last if inputs.dim() == 4 else torch.channels_last_3d
        try:
            return self.model(inputs.contiguous(memory_format=layout), *args)
        except RuntimeError:
            if self.channels_last is not None:
                raise
        # Outside the except block: if the model fails on contiguous inputs too, its own
        # error surfaces alone, and the layout choice stays open.
        out = self.model(inputs, *args)
        self.channels_last = False
        warnings.warn(
            "gswfast: the model failed on a channels-last input; using contiguous inputs "
            "(pass channels_last=False to skip the attempt)",
            RuntimeWarning,
            stacklevel=4,
        )
        return out

    def _wants_channels_last(self, inputs: Tensor) -> bool:
        if inputs.dim() not in (4, 5):
            return False
        if self.channels_last is not None:
            return self.channels_last
        return inputs.device.type == "cpu" or self.autocast is not None

    def _autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast)


def _float_dtype_of(model: object) -> torch.dtype | None:
    """The dtype of the model's first floating-point parameter or buffer (None: it has none,
    or it is no module, which ``model_session`` reports)."""
    if not isinstance(model, nn.Module):
        return None
    tensors = [*model.parameters(), *model.buffers()]
    return next((t.dtype for t in tensors if t.is_floating_point()), None)


def _as_args(additional_forward_args: Any) -> tuple[Any, ...]:
    """Captum's convention: None (nothing), one argument, or a tuple of them."""
    if additional_forward_args is None:
        return ()
    return (
        additional_forward_args
        if isinstance(additional_forward_args, tuple)
        else (additional_forward_args,)
    )


def rows_of(sample: Tensor | None, rows: Tensor) -> Tensor:
    """Each of ``rows``' sample in the original batch, when the rows are ``sample``'s rows."""
    return rows if sample is None else sample.index_select(0, rows)


def input_gradient(
    forward: ModelForward,
    x: Tensor,
    target: Tensor | OutputTarget | None,
    rows: Tensor | None = None,
) -> tuple[Tensor, Tensor | OutputTarget]:
    """d(target score)/dx ``[B, C, ...]`` and the targets ``[B]``; ``rows``: each row's sample."""
    x = x.detach().requires_grad_(True)
    score, target = forward.selected(x, target, rows)
    # With the weights' requires_grad on, a score that does not depend on the input still
    # has a graph: the gradient is then None.
    grad = None
    if score.requires_grad:
        (grad,) = torch.autograd.grad(score.sum(), x, allow_unused=True)
    if grad is None:
        raise ValueError(
            "model: its output does not depend differentiably on the input "
            "(detached, computed under no_grad, or not a float function of it)"
        )
    return grad, target


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums run in float32 at least, and in float64 for float64 inputs."""
    return torch.promote_types(dtype, torch.float32)


def resolve_target(target: Target, batch: int, device: torch.device) -> Resolved:
    """``None`` stays None (predicted class). One class per sample, int64 ``[B]``: an int
    (Python or NumPy), a list of them, a NumPy integer array or an integer tensor (``[B]``,
    or one value for all). Captum's targets for other outputs, an ``OutputTarget``: a tuple
    (an index into each sample's output) or a function of the model's output returning the
    ``[B]`` scores to explain."""
    if target is None or isinstance(target, OutputTarget):
        return target
    if isinstance(target, tuple):
        if not target or not all(_is_int(v) for v in target):
            raise TypeError(
                f"target: a tuple indexes each sample's output and must hold ints, got {target!r}"
            )
        return OutputTarget(index=tuple(int(v) for v in target))
    if callable(target) and not isinstance(target, Tensor):
        return OutputTarget(score=target)
    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "iu":
            raise TypeError(f"target: expected an integer array, got dtype {target.dtype}")
        target = torch.from_numpy(np.ascontiguousarray(target))
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"target: expected an integer tensor, got {target.dtype}")
        t = target.to(device=device, dtype=torch.int64)
    elif _is_int(target):
        t = torch.full((batch,), _class(target), dtype=torch.int64, device=device)
    elif (
        isinstance(target, Sequence)
        # a str is outside Target but a caller may pass one: refused here, not a list of chars
        and not isinstance(target, str)  # type: ignore[unreachable]
        and all(_is_int(v) for v in target)
    ):
        t = torch.tensor([_class(v) for v in target], dtype=torch.int64, device=device)
    else:
        raise TypeError(
            "target: expected None, an int, a list/array/tensor of ints (one per sample), a tuple "
            f"(an index into each sample's output) or a function of the output, got {target!r}"
        )
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"target: expected one class per sample ([{batch}]), got shape {tuple(t.shape)}"
        )
    return t.contiguous()


def _class(value: SupportsInt) -> int:
    """``value`` as an int64 class index (``ValueError`` beyond int64, not OverflowError)."""
    index = int(value)
    if not -(2**63) <= index < 2**63:
        raise ValueError(f"target: class {index} is out of range for any model")
    return index


def _is_int(value: object) -> TypeGuard[numbers.Integral]:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_target_range(target: Tensor, classes: int) -> None:
    """Raises ``ValueError`` unless every target lies in ``[0, classes)`` (one device sync)."""
    extremes = torch.aminmax(target)
    low, high = int(extremes.min), int(extremes.max)
    if low < 0 or high >= classes:
        bad = low if low < 0 else high
        raise ValueError(f"target: class {bad} is out of range for a model with {classes} outputs")


@contextlib.contextmanager
def model_session(
    model: nn.Module, eval_mode: bool = True, freeze: bool = True
) -> Iterator[list[RemovableHandle]]:
    """Prepares ``model`` for attribution and restores it afterwards, even if it raises.

    Inside: eval mode (so BatchNorm uses its running statistics, which the explanation must
    not update, and samples do not depend on each other), grad mode on, and with ``freeze``
    the parameters' ``requires_grad`` off, so that a layer's activation is where the graph
    starts (the CAM methods need nothing before it). Gradients are only ever taken with
    ``torch.autograd.grad`` towards the inputs or activations, so no ``.grad`` accumulates
    and no weight gradient is computed either way. The input-gradient methods leave the
    flags alone: frozen weights make ``torch.matmul`` run a ViT's attention projections
    (non-contiguous [N, B, D] inputs) as batched matmuls instead of one folded matmul,
    20% slower for vit_b_16 on the CPU, and they gain nothing from it. Yields a list that
    callers append hook handles to; they are removed on exit.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    training = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    handles: list[RemovableHandle] = []
    try:
        if eval_mode:
            model.eval()
        for p in params if freeze else ():
            p.requires_grad_(False)
        with torch.inference_mode(False), torch.enable_grad():
            yield handles
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        for m, mode in training.items():
            m.training = mode


_OTHER = "; for other outputs pass target= as a tuple (an index into each sample's output) or a function of the output"
_HOLDERS = (
    "a tensor, a tuple or list whose first item is one, a dict with 'logits' or an object "
    "with .logits (Hugging Face)"
)


def logits_of(out: object) -> object:
    """The logits a model's output holds: the output itself when it is a tensor, the entry
    ``"logits"`` of a mapping, the attribute ``.logits`` (Hugging Face's ``ModelOutput``,
    which is a mapping too), or the first item of a tuple or list (torchvision's
    ``InceptionOutputs``, models that return ``(logits, features)``); otherwise the output
    unchanged, which ``_check_logits`` then names."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        return out.get("logits", out)
    held = getattr(out, "logits", None)
    if isinstance(held, Tensor):
        return held
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return out


def _check_logits(out: object, batch: int) -> Tensor:
    """``out`` when it is float logits ``[batch, classes]``; ValueError naming it otherwise."""
    if not isinstance(out, Tensor):
        raise ValueError(
            f"model output: expected logits [B, classes] as {_HOLDERS}, got "
            f"{type(out).__name__}{_OTHER}"
        )
    if out.dim() != 2 or out.shape[0] != batch:
        raise ValueError(
            f"model: expected logits [B, classes] with B = {batch}, got shape {tuple(out.shape)}{_OTHER}"
        )
    if not out.is_floating_point():
        raise ValueError(f"model: expected floating-point logits, got {out.dtype}")
    return out
