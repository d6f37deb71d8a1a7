"""The training engine: a loop that knows nothing of distillation (:mod:`.loop`), objectives
per task (:mod:`.objectives`), teacher sources and the cache (:mod:`.teachers`, :mod:`.cache`),
and their compositions :class:`Distiller` and :class:`Trainer`."""

from kdcore.engine.cache import CacheMismatchError, TeacherCache
from kdcore.engine.config import TASKS, LoopConfig, ObjectiveConfig, TeacherConfig
from kdcore.engine.distiller import Distiller
from kdcore.engine.history import History
from kdcore.engine.loop import Loop, NonFiniteLossError
from kdcore.engine.objectives import Terms, make_objective
from kdcore.engine.teachers import CallableTeacher, align_frames, cache_key, fill_teacher_cache
from kdcore.engine.trainer import Trainer, train

__all__ = ["TASKS", "CacheMismatchError", "CallableTeacher", "Distiller", "History", "Loop",
           "LoopConfig", "NonFiniteLossError", "ObjectiveConfig", "TeacherCache",
           "TeacherConfig", "Terms", "Trainer", "align_frames", "cache_key", "fill_teacher_cache",
           "make_objective", "train"]
