"""A user task for ``asyncddp bench converge --task tests.converge_task:make_task`` (tests/test_bench_converge.py).

Four well separated Gaussian blobs in 8 dimensions and a linear model: any method reaches 0.9 quickly.
"""

import torch
from torch.utils.data import TensorDataset


def _blobs(count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=g)
    centres = torch.eye(8)[:4] * 4.0
    return TensorDataset(centres[labels] + torch.randn(count, 8, generator=g), labels)


def make_task():
    return torch.nn.Linear(8, 4), _blobs(512, 0), _blobs(256, 1)


def not_a_task():
    return "no model here"


def wrong_input_size():
    return torch.nn.Linear(7, 4), _blobs(64, 0), _blobs(64, 1)


def too_few_classes():
    return torch.nn.Linear(8, 2), _blobs(64, 0), _blobs(64, 1)


class _Task:
    model = torch.nn.Linear(8, 4)
    train, test = _blobs(64, 0), _blobs(64, 1)
    target_accuracy = "high"


def bad_target():
    return _Task()
