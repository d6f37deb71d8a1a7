"""Train/val/test splits as index lists: from a manifest ``split`` column, stratified random by
seed, or group-disjoint (no group, e.g. speaker, in two splits)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kdcore.errors import UserInputError

SPLIT_NAMES = ("train", "val", "test")


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise UserInputError(f"{name} must be in [0, 1), got {value!r}")
    if test_fraction + val_fraction >= 1.0:
        raise UserInputError(f"test_fraction + val_fraction must be < 1, got "
                         f"{test_fraction} + {val_fraction}")


SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


def normalize_split(value: str) -> str | None:
    """``"train"``, ``"val"`` or ``"test"`` for a split value (case and surrounding spaces
    ignored; ``validation``, ``valid`` and ``dev`` are aliases of ``val``); None for any other
    value."""
    name = str(value).strip().lower()
    name = SPLIT_ALIASES.get(name, name)
    return name if name in SPLIT_NAMES else None


def split_from_column(splits: Sequence[str | None]) -> dict[str, list[int]]:
    """Indices per split name (``train``, ``val``, ``test``) from a manifest's ``split``
    column, through :func:`normalize_split`. Raises ValueError naming the rows (0-based) of an
    empty or unknown value."""
    result: dict[str, list[int]] = {}
    for index, value in enumerate(splits):
        if not value:
            raise UserInputError(f"row {index} has no split value; fill the manifest's 'split' "
                             "column or use a stratified or group split")
        name = normalize_split(value)
        if name is None:
            raise UserInputError(f"row {index} has split value {value!r}; split values are "
                             f"train, val and test (aliases of val: "
                             f"{', '.join(SPLIT_ALIASES)})")
        result.setdefault(name, []).append(index)
    return result


def stratified_split(labels: Sequence[int], *, test_fraction: float = 0.2,
                     val_fraction: float = 0.0, seed: int = 0) -> dict[str, list[int]]:
    """Random split keeping each class's share: per class, ``round(n_c * test_fraction)``
    items go to test and ``round(n_c * val_fraction)`` to val (at least one each while the
    class has 3+ items and the fraction is > 0), the rest to train. Deterministic by ``seed``;
    indices sorted."""
    _check_fractions(test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    result: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for label in np.unique(label_array):
        members = rng.permutation(np.flatnonzero(label_array == label))
        count = members.size
        n_test = round(count * test_fraction)
        n_val = round(count * val_fraction)
        if count >= 3:
            n_test = max(n_test, 1) if test_fraction > 0 else 0
            n_val = max(n_val, 1) if val_fraction > 0 else 0
        n_test, n_val = min(n_test, count), min(n_val, count - min(n_test, count))
        result["test"] += members[:n_test].tolist()
        result["val"] += members[n_test:n_test + n_val].tolist()
        result["train"] += members[n_test + n_val:].tolist()
    return {name: sorted(indices) for name, indices in result.items() if indices or
            name == "train"}


def group_split(groups: Sequence[str], *, test_groups: Sequence[str] | None = None,
                test_fraction: float = 0.2, val_groups: Sequence[str] | None = None,
                val_fraction: float = 0.0, seed: int = 0) -> dict[str, list[int]]:
    """Group-disjoint split: every group (e.g. a speaker) lands in exactly one split.

    ``test_groups``/``val_groups`` name the held-out groups; otherwise the groups are shuffled
    by ``seed`` and ``max(1, round(n_groups * fraction))`` go to test (and to val when
    ``val_fraction > 0``). At least one group stays in train."""
    _check_fractions(test_fraction, val_fraction)
    names = sorted(set(groups))
    chosen: dict[str, set[str]] = {}
    rng = np.random.default_rng(seed)
    shuffled = [names[i] for i in rng.permutation(len(names))]
    for split, explicit, fraction in (("test", test_groups, test_fraction),
                                      ("val", val_groups, val_fraction)):
        if explicit is not None:
            unknown = sorted(set(explicit) - set(names))
            if unknown:
                raise UserInputError(f"{split}_groups {unknown} not found among groups {names}")
            chosen[split] = set(explicit)
        elif fraction > 0:
            free = [g for g in shuffled if not any(g in s for s in chosen.values())]
            chosen[split] = set(free[:max(1, round(len(names) * fraction))])
        else:
            chosen[split] = set()
    if chosen["test"] & chosen["val"]:
        raise UserInputError(f"groups {sorted(chosen['test'] & chosen['val'])} are in both "
                         "test_groups and val_groups")
    held_out = chosen["test"] | chosen["val"]
    if len(held_out) >= len(names):
        raise UserInputError(f"group split leaves no group for training ({len(names)} groups)")
    result: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
    for index, group in enumerate(groups):
        split = "test" if group in chosen["test"] else "val" if group in chosen["val"] else "train"
        result[split].append(index)
    return {name: indices for name, indices in result.items() if indices or name == "train"}
