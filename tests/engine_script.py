"""Tiny teacher/student pairs and generated data for the engine tests, and a command-line entry
for the runs the tests start in subprocesses (kill/resume, torchrun).

``python tests/engine_script.py --out DIR --epochs E [--slow S] [--params PATH]`` trains a
fixed pair and saves the final student/projector parameters to ``PATH``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import Dataset

NUM_FEATURES = 12
NUM_CLASSES = 5


class ClusterDataset(Dataset):
    """Gaussian clusters: item ``i`` is ``{"input": (D,), "label": (), "index": i}``; multilabel
    labels mark the clusters within reach; frame items are (T, D) sequences with a length."""

    def __init__(self, size: int, *, task: str = "multiclass", frames: int = 9, seed: int = 0,
                 slow: float = 0.0, jitter: bool = False) -> None:
        self.task, self.slow, self.jitter = task, slow, jitter
        centers = torch.randn(NUM_CLASSES, NUM_FEATURES,
                              generator=torch.Generator().manual_seed(1234)) * 1.5
        generator = torch.Generator().manual_seed(seed)
        if task == "frame":
            self.labels = torch.randint(0, NUM_CLASSES, (size, frames), generator=generator)
            self.inputs = centers[self.labels] + torch.randn(size, frames, NUM_FEATURES,
                                                             generator=generator)
            self.lengths = torch.randint(frames // 2, frames + 1, (size,), generator=generator)
            padded = torch.arange(frames)[None, :] >= self.lengths[:, None]
            # Padding holds large garbage: it must not reach the loss or the gradients.
            self.inputs[padded] = 100.0 * torch.randn(int(padded.sum()), NUM_FEATURES,
                                                      generator=generator)
            self.labels[padded] = -100
        else:
            classes = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
            self.inputs = centers[classes] + torch.randn(size, NUM_FEATURES, generator=generator)
            if task == "multilabel":
                distances = torch.cdist(self.inputs, centers)
                self.labels = (distances < distances.min(1, keepdim=True).values + 1.0).float()
            else:
                self.labels = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        if self.slow:
            time.sleep(self.slow)
        item = {"input": self.inputs[index], "label": self.labels[index], "index": index}
        if self.jitter:  # augmentation drawn from the global RNG (the resume test needs it)
            item["input"] = item["input"] + 0.1 * torch.randn(item["input"].shape)
        if self.task == "frame":
            item["lengths"] = self.lengths[index]
        return item


class MLP(nn.Module):
    """(..., D) -> (..., C) through one hidden layer ``body`` of width ``hidden``."""

    def __init__(self, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.ReLU(),
                                  nn.Dropout(dropout))
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))


class ConvFrameModel(nn.Module):
    """(B, T, D) -> (B, T, C) with a 1-D convolution ``conv`` (channel-first output)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(NUM_FEATURES, channels, kernel_size=1)
        self.head = nn.Linear(channels, NUM_CLASSES)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.conv(inputs.transpose(1, 2)))
        return self.head(hidden.transpose(1, 2))


@functools.lru_cache(maxsize=4)
def _fitted_teacher_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    teacher = MLP(48)
    data = ClusterDataset(256, seed=100)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=2e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(teacher(data.inputs), data.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in teacher.state_dict().items()}


def make_pair(seed: int = 0, dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """A teacher fitted to the cluster labels (full-batch Adam) and an untrained student."""
    teacher = MLP(48)
    teacher.load_state_dict(_fitted_teacher_state(seed))
    torch.manual_seed(seed)
    student = MLP(8, dropout=dropout)
    return teacher, student


def loss_backend() -> str:
    """"auto" once the C++ library provides every loss op (or cannot be built at all), else
    "reference" (while the C++ ops are incomplete)."""
    from kdcore import _backends

    ops = _backends.cpp_ops()
    needed = ("kd_loss_forward", "kd_bce_loss_forward", "feature_loss_forward")
    if ops is None or all(hasattr(ops, name) for name in needed):
        return "auto"
    return "reference"


def trainable_state(distiller) -> dict[str, torch.Tensor]:
    state = {f"student.{k}": v.detach().clone() for k, v in distiller.student.state_dict().items()}
    state.update({f"projectors.{k}": v.detach().clone()
                  for k, v in distiller.bundle.projectors.state_dict().items()})
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--params", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--mode", default="resume", choices=("resume", "ddp"))
    parser.add_argument("--loss-backend", default="auto")
    args = parser.parse_args()

    from torch.utils.data import DataLoader

    from kdcore.engine import Distiller

    if args.mode == "resume":
        teacher, student = make_pair(dropout=0.2)
        dataset = ClusterDataset(args.items, slow=args.slow, jitter=True)
        distiller = Distiller(teacher, student, feature_pairs=[("body", "body")],
                              feature_weight=0.5, lr=5e-3, checkpoint_every=1, log_every=2,
                              progress=False, seed=3, loss_backend=args.loss_backend)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True)
    else:
        teacher, student = make_pair()
        dataset = ClusterDataset(args.items)
        # cached teacher: under DDP both ranks fill and read one shared memory-mapped cache
        distiller = Distiller(teacher, student, lr=5e-3, schedule="constant", progress=False,
                              log_every=1, seed=3, teacher_mode="cached",
                              loss_backend=args.loss_backend)
        loader = DataLoader(dataset, batch_size=args.batch, shuffle=True)
    history = distiller.fit(loader, epochs=args.epochs, out_dir=args.out)
    rank = int(os.environ.get("RANK", "0"))
    if args.params:
        torch.save({"params": trainable_state(distiller), "steps": history.steps,
                    "epochs": history.epochs}, f"{args.params}.rank{rank}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
