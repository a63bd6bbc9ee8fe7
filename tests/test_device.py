"""The device plumbing, without a GPU: a trial's training runs where ``Fit.device`` says, with the
model, every batch and the teacher there, and leaves the model on the CPU (compression and the
artifact work on CPU tensors); without a GPU from Ray a trial says ``device: cpu``."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from slimtune.search.task.data import Data
from slimtune.search.task.train import Distill, Fit, evaluate, train
from slimtune.search.trial import trial_device


class Spy(nn.Module):
    """Records where it was moved and on which device each batch reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.moves: list[str] = []
        self.inputs: set[tuple[str, str]] = set()

    def to(self, *args, **kwargs):
        self.moves.append(str(torch.device(args[0] if args else kwargs["device"])))
        return super().to(*args, **kwargs)

    def forward(self, x):
        self.inputs.add((str(x.device), str(self.net.weight.device)))
        return self.net(x)


def _data(n: int = 40) -> Data:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return Data(x, y, x[:10], y[:10], x[:10], y[:10], "classification", 3, {})


def test_training_puts_model_batches_and_teacher_on_the_fit_device_and_ends_on_the_cpu():
    student, teacher = Spy(), Spy()
    fit = Fit(lr=0.01, batch_size=8, epochs=2, seed=0, distill=Distill(teacher, 0.5), device="cpu")
    seen = []
    train(student, _data(), fit, on_epoch=lambda e, m: seen.append(m))
    assert student.moves == ["cpu", "cpu"]  # to the fit's device, then back to the CPU
    assert teacher.moves == ["cpu", "cpu"]
    assert student.inputs == {("cpu", "cpu")} and teacher.inputs == {("cpu", "cpu")}
    assert len(seen) == 2 and all(np.isfinite(m["loss"]) for m in seen)
    assert next(student.parameters()).device.type == "cpu"


def test_the_cpu_path_is_unchanged_by_the_device_field():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    b.load_state_dict(a.state_dict())
    train(a, _data(), Fit(lr=0.01, batch_size=8, epochs=3, seed=1))
    train(b, _data(), Fit(lr=0.01, batch_size=8, epochs=3, seed=1, device="cpu"))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert evaluate(a, _data().x_val, _data().y_val, "classification") == evaluate(
        b, _data().x_val, _data().y_val, "classification")


def test_a_trial_without_a_gpu_from_ray_trains_on_the_cpu():
    assert trial_device() == "cpu"
