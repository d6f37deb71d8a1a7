"""The distillation engine: :class:`Distiller` and its parts (loader contract, teacher cache,
feature hooks, device-side metrics, atomic checkpoints, DDP plumbing)."""

from kdcore.engine.cache import CacheMismatchError, TeacherCache
from kdcore.engine.distiller import Distiller, NonFiniteLossError
from kdcore.engine.history import History

__all__ = ["CacheMismatchError", "Distiller", "History", "NonFiniteLossError", "TeacherCache"]
