"""Training records returned by :meth:`kdcore.Distiller.fit`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class History:
    """Per-epoch records of a run.

    ``epochs`` holds one dict per finished epoch with ``epoch``, ``step``, ``train_loss``,
    ``train_accuracy`` (when labels were given), ``samples_per_s``, ``time_s``, ``skipped_steps``
    and, with a validation loader, ``val_loss``, ``val_accuracy``, ``val_macro_f1`` ... .
    ``steps`` holds the records written every ``log_every`` optimizer steps.
    """

    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)

    @property
    def last(self) -> dict:
        """The record of the last finished epoch (empty before the first)."""
        return self.epochs[-1] if self.epochs else {}

    def metric(self, name: str) -> list[float]:
        """One metric over epochs, e.g. ``history.metric("val_accuracy")``."""
        return [record[name] for record in self.epochs if name in record]

    def state_dict(self) -> dict:
        return {"epochs": [dict(r) for r in self.epochs], "steps": [dict(r) for r in self.steps]}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = [dict(r) for r in state.get("epochs", [])]
        self.steps = [dict(r) for r in state.get("steps", [])]
