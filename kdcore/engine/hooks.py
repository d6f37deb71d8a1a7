"""Feature taps (forward hooks, no model changes) and the learnable student-side projectors."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

CHANNEL_FIRST_MODULES = (_ConvNd, _BatchNorm, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                         nn.AvgPool2d)
# Attention and transformer layers end in a Linear (or LayerNorm) child, which decides them.
CHANNEL_LAST_MODULES = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.GRU, nn.LSTM, nn.RNN)


def is_channel_first(module: nn.Module) -> bool:
    """Whether ``module``'s output is channel-first (B, C, ...): true for a conv, batch-norm
    or pool layer, and for a container (e.g. an ``nn.Sequential`` block) whose last such
    layout-defining layer is one; elementwise layers (ReLU, dropout, ...) do not count."""
    for layer in reversed(list(module.modules())):
        if isinstance(layer, CHANNEL_FIRST_MODULES):
            return True
        if isinstance(layer, CHANNEL_LAST_MODULES):
            return False
    return False


def resolve_module(model: nn.Module, path: str, role: str) -> nn.Module:
    """``model``'s submodule at dotted ``path``; a clear ValueError when there is none."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"feature_pairs: the {role} module path must be a non-empty string, "
                         f"got {path!r}")
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ValueError(f"feature_pairs: the {role} has no module {path!r} "
                         f"(its modules: {shown})") from None


def first_tensor(output: object) -> torch.Tensor:
    """The tensor a module or model returned: itself, the first of a tuple, or ``["logits"]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"expected a tensor output (or a tuple/dict holding one), got "
                    f"{type(output).__name__}")


class FeatureTap:
    """Keeps the latest output of ``module`` (channel-last) via a forward hook."""

    def __init__(self, module: nn.Module, path: str) -> None:
        self.path = path
        self.channel_first = is_channel_first(module)
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: object, output: object) -> None:
        self.value = first_tensor(output)

    def take(self) -> torch.Tensor:
        """The captured feature, channels moved last ((B, C, ...) -> (B, ..., C))."""
        value = self.value
        if value is None:
            raise RuntimeError(f"feature tap {self.path!r} did not fire during the forward pass")
        self.value = None
        if self.channel_first and value.dim() >= 3:
            value = value.movedim(1, -1)
        return value

    def remove(self) -> None:
        self.handle.remove()


def make_projector(student_width: int, teacher_width: int) -> nn.Module:
    """A learnable map from the student's channel width to the teacher's (a linear layer on the
    channel-last feature, equivalent to a 1x1 convolution); identity when widths agree."""
    if student_width == teacher_width:
        return nn.Identity()
    return nn.Linear(student_width, teacher_width)


class StudentWithProjectors(nn.Module):
    """The trainable part: the student and the projectors of its tapped features.

    ``forward(x)`` returns ``(logits, [projected features])``; wrapping this one module in DDP or
    ``torch.compile`` covers both.
    """

    def __init__(self, student: nn.Module, taps: list[FeatureTap]) -> None:
        super().__init__()
        self.student = student
        self.taps = taps
        self.projectors = nn.ModuleList()

    def build_projectors(self, student_widths: list[int], teacher_widths: list[int]) -> None:
        self.projectors = nn.ModuleList(
            make_projector(s, t) for s, t in zip(student_widths, teacher_widths, strict=True))

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = first_tensor(self.student(inputs))
        features = [projector(tap.take()) for tap, projector in zip(self.taps, self.projectors,
                                                                     strict=True)]
        return logits, features
