"""Model checkpoints that can rebuild themselves: the weights plus everything needed to make the
model again (model name, constructor keywords, number of classes, class names) and the log-mel
frontend it was trained behind (``LogMel`` keywords, sample rate, clip length).

File layout (``torch.save`` of a dict): ``format`` (``"kdcore-model"``), ``version``,
``model`` (a :func:`kdcore.models.create` name), ``model_kwargs``, ``num_classes``,
``class_names``, ``frontend`` (``LogMel`` keywords), ``clip_samples``, ``state_dict`` and
free-form ``meta`` (for example the run that wrote it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcore.errors import UserInputError

FORMAT = "kdcore-model"
VERSION = 1


class CheckpointError(UserInputError):
    """A file is not a kdcore model checkpoint, or its weights do not fit the model it names."""


@dataclass
class ModelCheckpoint:
    """A loaded checkpoint: the rebuilt ``model`` (eval mode, CPU) and how it was made."""

    path: Path
    model: nn.Module
    model_name: str
    model_kwargs: dict
    class_names: list[str]
    frontend: dict
    clip_samples: int
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def sample_rate(self) -> int:
        return int(self.frontend["sample_rate"])

    def build_frontend(self, backend: str = "auto") -> nn.Module:
        return build_frontend(self.frontend, backend)


def build_frontend(config: dict, backend: str = "auto") -> nn.Module:
    """``kdcore.LogMel(**config, backend=backend)``: waveforms (B, T) to log-mel (B, n_mels, F)."""
    from kdcore.frontend import LogMel

    return LogMel(backend=backend, **config)


def save_model_checkpoint(path: str | os.PathLike, model: nn.Module, *, class_names: list[str],
                          frontend: dict, clip_samples: int, meta: dict | None = None) -> Path:
    """Write ``model`` (a :class:`kdcore.models.AudioClassifier`) with its recipe to ``path``
    (atomically: a temporary file, then a rename)."""
    name = getattr(model, "model_name", "")
    if not name or not callable(getattr(model, "config", None)):
        raise TypeError(f"model must be a kdcore.models model with model_name and config(), "
                        f"got {type(model).__name__}")
    if len(class_names) != model.num_classes:
        raise ValueError(f"class_names has {len(class_names)} names but the model has "
                         f"{model.num_classes} classes")
    state = {
        "format": FORMAT, "version": VERSION, "model": name, "model_kwargs": model.config(),
        "num_classes": int(model.num_classes), "class_names": [str(c) for c in class_names],
        "frontend": dict(frontend), "clip_samples": int(clip_samples),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tmp")
    torch.save(state, temporary)
    temporary.replace(target)
    return target


def load_model_checkpoint(path: str | os.PathLike) -> ModelCheckpoint:
    """Rebuild the model saved at ``path`` and load its weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: not a kdcore model checkpoint (e.g. a training-state ``last.pt``), an
            unknown model name, or weights of another model.
    """
    from kdcore.models import available_models, create

    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"checkpoint does not exist: {source}")
    try:
        state = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean "not ours"
        raise CheckpointError(f"{source} is not a readable kdcore model checkpoint "
                              f"({type(error).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{source} is not a kdcore model checkpoint (write one with "
                              "`kdcore train` or `kdcore distill`)")
    name = state["model"]
    if name not in available_models():
        raise CheckpointError(f"{source} holds model {name!r}, which this kdcore does not "
                              f"know; available: {', '.join(available_models())}")
    try:
        model = create(name, int(state["num_classes"]), **state["model_kwargs"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: cannot rebuild model {name!r}: {error}") from None
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0] if first else ""
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise CheckpointError(f"{source}: its weights come from another model than "
                              f"{name!r} {state['model_kwargs']} ({detail})") from None
    return ModelCheckpoint(source, model.eval(), name, dict(state["model_kwargs"]),
                           list(state["class_names"]), dict(state["frontend"]),
                           int(state["clip_samples"]), dict(state.get("meta", {})))
