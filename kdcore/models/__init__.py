"""Model zoo. Every model maps log-mel features (B, n_mels, frames) to logits
(B, num_classes) and reports ``num_parameters()`` and ``macs(frames)``.

- ``teacher_cnn``: :class:`TeacherCNN`, VGG-style; ``width`` 30..260 gives ~1M..78M params.
- ``student_dscnn``: :class:`StudentDSCNN`, depthwise separable; ``width`` 24..200 gives
  ~20k..1.1M params.
- ``transformer``: :class:`AudioTransformer`, pre-norm encoder; ``dim``, ``depth``.
- ``ctc_conv``: :class:`CTCConvNet`, a 1-D conv (+ optional GRU) CTC encoder giving
  (B, frames', num_classes) log-probabilities; ``width`` 48..256 gives ~58k..1.4M params.
- ``frame_conv``: :class:`FrameConvNet`, the same encoder with raw per-frame scores
  (B, frames, num_classes) (stride 1: one output per log-mel frame), for the frame tasks and
  per-frame regression.
- ``hf``: :class:`HFAudioClassifier`, a local HuggingFace model directory (``path``;
  needs ``kdcore[hf]``).
- ``pitch_student``: :class:`PitchStudent`, a narrow CREPE-style CNN on CREPE's normalised
  1024-sample frames (N, 1024) -> 360 pitch-bin logits (not a log-mel model).

:class:`TeacherEnsemble` averages the logits of trained models into one teacher.
"""

from __future__ import annotations

from kdcore.models.attention import AudioTransformer
from kdcore.models.base import AudioClassifier, count_macs, count_parameters
from kdcore.models.cnn import StudentDSCNN, TeacherCNN
from kdcore.models.ctc import CTCConvNet, FrameConvNet
from kdcore.models.ensemble import TeacherEnsemble
from kdcore.models.hf import HFAudioClassifier
from kdcore.models.pitch import PitchStudent

MODELS: dict[str, type[AudioClassifier]] = {
    "teacher_cnn": TeacherCNN,
    "student_dscnn": StudentDSCNN,
    "transformer": AudioTransformer,
    "ctc_conv": CTCConvNet,
    "frame_conv": FrameConvNet,
    "hf": HFAudioClassifier,
    "pitch_student": PitchStudent,
}


def available_models() -> list[str]:
    """Names accepted by :func:`create`."""
    return sorted(MODELS)


def create(name: str, num_classes: int, **kwargs: object) -> AudioClassifier:
    """Build model ``name`` for ``num_classes`` classes; ``kwargs`` go to its constructor.
    Raises ValueError for an unknown name and TypeError for an unknown keyword."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available_models())}")
    model_class = MODELS[name]
    try:
        return model_class(num_classes, **kwargs)
    except TypeError as error:
        if "unexpected keyword" in str(error):
            raise TypeError(f"model {name!r}: {error}") from None
        raise


__all__ = [
    "MODELS",
    "AudioClassifier",
    "AudioTransformer",
    "CTCConvNet",
    "FrameConvNet",
    "HFAudioClassifier",
    "PitchStudent",
    "StudentDSCNN",
    "TeacherCNN",
    "TeacherEnsemble",
    "available_models",
    "count_macs",
    "count_parameters",
    "create",
]
