"""The training engine: a loop that knows nothing of distillation (:mod:`.loop`), objectives
per task (:mod:`.objectives`), teacher sources and the cache (:mod:`.teachers`, :mod:`.cache`),
and their compositions :class:`Distiller` and :class:`Trainer`."""

from kdcore.engine.cache import CacheMismatchError, TeacherCache
from kdcore.engine.config import TASKS, LoopConfig, ObjectiveConfig, TeacherConfig, ViewConfig
from kdcore.engine.distiller import Distiller
from kdcore.engine.history import History
from kdcore.engine.loop import Loop, NonFiniteLossError
from kdcore.engine.objectives import Terms, make_objective
from kdcore.engine.teachers import CallableTeacher, align_frames, cache_key, fill_teacher_cache
from kdcore.engine.trainer import Trainer, train
from kdcore.engine.views import ViewSet, fill_view_cache, make_view

__all__ = ["TASKS", "CacheMismatchError", "CallableTeacher", "Distiller", "History", "Loop",
           "LoopConfig", "NonFiniteLossError", "ObjectiveConfig", "TeacherCache",
           "TeacherConfig", "Terms", "Trainer", "ViewConfig", "ViewSet", "align_frames",
           "cache_key", "fill_teacher_cache", "fill_view_cache", "make_objective", "make_view",
           "train"]
