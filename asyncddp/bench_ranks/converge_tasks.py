"""The tasks of ``asyncddp bench converge``: a model and held-out-scored data, built the same on every rank.

A task is a ``Task``: the model (freshly initialised; the ranks start from rank 0's weights), the
training and test sets as tensors (inputs, integer labels), and its defaults. ``load_task``
builds ``digits`` (scikit-learn's bundled 8x8 digits: no download; imported here only, so the
rest of asyncddp never pays for scikit-learn), ``synthetic``, or calls the user's
``module:function``, which returns ``(model, train_dataset, test_dataset)`` or an object with
``model``, ``train``, ``test`` and optionally ``target_accuracy`` and ``lr``; datasets are any
indexable sequence of ``(input, label)`` pairs (a ``TensorDataset`` is read without a loop).
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import torch
from torch import nn

from asyncddp.bench.converge import BUILTIN_TASKS, USER_TARGET, TaskError

__all__ = ["Task", "load_task", "mlp"]

_SYNTHETIC_DIM, _SYNTHETIC_CLASSES, _SYNTHETIC_FLIP = 16, 4, 0.1


@dataclass
class Task:
    model: nn.Module
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    target_accuracy: float
    lr: float
    description: str


def mlp(inputs: int, width: int, classes: int) -> nn.Module:
    """Two hidden layers of ``width`` with ReLU."""
    return nn.Sequential(nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, classes))


def _digits(width: int) -> Task:
    import numpy as np
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    test, train = order[: len(y) // 5], order[len(y) // 5:]
    target, lr, text = BUILTIN_TASKS["digits"]
    return Task(mlp(64, width, 10), x[train], y[train], x[test], y[test], target, lr, text)


def _synthetic(width: int) -> Task:
    """Inputs N(0, I); the label is the argmax of a fixed random linear map, replaced by one of
    the other classes with probability 0.1: the teacher is the Bayes classifier, accuracy 0.9."""
    g = torch.Generator().manual_seed(1234)
    teacher = torch.randn(_SYNTHETIC_DIM, _SYNTHETIC_CLASSES, generator=g)
    x = torch.randn(5120, _SYNTHETIC_DIM, generator=g)
    y = (x @ teacher).argmax(1)
    flip = torch.rand(len(y), generator=g) < _SYNTHETIC_FLIP
    shift = torch.randint(1, _SYNTHETIC_CLASSES, (len(y),), generator=g)
    y = torch.where(flip, (y + shift) % _SYNTHETIC_CLASSES, y)
    target, lr, text = BUILTIN_TASKS["synthetic"]
    return Task(mlp(_SYNTHETIC_DIM, width, _SYNTHETIC_CLASSES), x[1024:], y[1024:], x[:1024], y[:1024], target,
                lr, text)


def _tensors(dataset, what: str, spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of ``dataset``: a TensorDataset's own tensors, else its items stacked."""
    tensors = getattr(dataset, "tensors", None)
    try:
        if tensors is not None and len(tensors) == 2:
            x, y = tensors
        else:
            items = [dataset[i] for i in range(len(dataset))]
            x = torch.stack([torch.as_tensor(item[0]) for item in items])
            y = torch.tensor([int(item[1]) for item in items])
    except Exception as error:  # the user's dataset: any failure is theirs to fix, named
        raise TaskError(f"--task {spec}: the {what} dataset must be a sequence of (input, label) pairs "
                        f"({type(error).__name__}: {error})") from None
    if len(y) == 0 or y.dim() != 1 or y.dtype.is_floating_point:
        raise TaskError(f"--task {spec}: the {what} dataset needs integer class labels, got {tuple(y.shape)} "
                        f"{y.dtype}")
    return x.float() if x.is_floating_point() else x, y.long()


def _user(spec: str) -> Task:
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise TaskError(f"--task {spec}: importing {module_name} failed ({type(error).__name__}: {error})") from None
    make = getattr(module, function_name, None)
    if not callable(make):
        raise TaskError(f"--task {spec}: {module_name} has no function {function_name}")
    try:
        made = make()
    except (Exception, SystemExit) as error:
        raise TaskError(f"--task {spec}: {function_name}() raised {type(error).__name__}: {error}") from None
    if isinstance(made, tuple) and len(made) == 3:
        model, train, test = made
        target, lr = None, None
    elif all(hasattr(made, name) for name in ("model", "train", "test")):
        model, train, test = made.model, made.train, made.test
        target, lr = getattr(made, "target_accuracy", None), getattr(made, "lr", None)
    else:
        raise TaskError(f"--task {spec}: {function_name}() must return (model, train_dataset, test_dataset) or an "
                        f"object with model, train and test; got {type(made).__name__}")
    if not isinstance(model, nn.Module):
        raise TaskError(f"--task {spec}: the model must be a torch.nn.Module, got {type(model).__name__}")
    if target is not None:
        target = _number(spec, "target_accuracy", target, lambda v: 0 < v <= 1, "an accuracy in (0, 1]")
    lr = 0.05 if lr is None else _number(spec, "lr", lr, lambda v: v > 0, "a positive learning rate")
    task = Task(model, *_tensors(train, "train", spec), *_tensors(test, "test", spec),
                USER_TARGET if target is None else target, lr,
                f"{spec} ({type(model).__name__})")
    _probe(task, spec)
    return task


def _number(spec: str, name: str, value, ok, want: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and ok(number)):
        raise TaskError(f"--task {spec}: its {name} is {value!r}; give {want}")
    return number


def _probe(task: Task, spec: str) -> None:
    """The model scores two inputs of each set before any method trains: a model that does not
    fit the data fails here, once and named, instead of in every method's run."""
    model, was_training = task.model, task.model.training
    if not any(p.requires_grad for p in model.parameters()):
        raise TaskError(f"--task {spec}: the model ({type(model).__name__}) has no trainable parameters")
    for what, x, y in (("train", task.train_x, task.train_y), ("test", task.test_x, task.test_y)):
        model.eval()  # no batch-norm statistics taken from the probe
        try:
            with torch.no_grad():
                logits = model(x[:2])
        except Exception as error:
            raise TaskError(f"--task {spec}: the model cannot take the {what} inputs of shape {tuple(x.shape[1:])} "
                            f"({type(error).__name__}: {error})") from None
        finally:
            model.train(was_training)
        if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and len(logits) == len(x[:2])):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise TaskError(f"--task {spec}: the model must return class scores of shape (batch, classes); "
                            f"got {shape} for a batch of {len(x[:2])}")
        if len(x) != len(y) or int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            raise TaskError(f"--task {spec}: the {what} set has {len(x)} inputs and {len(y)} labels from "
                            f"{int(y.min())} to {int(y.max())}; the model scores {logits.shape[1]} classes (0 to "
                            f"{logits.shape[1] - 1})")


def load_task(spec: str, width: int) -> Task:
    """The task ``spec`` names (a built-in one, or ``module:function``)."""
    if spec == "digits":
        return _digits(width)
    if spec == "synthetic":
        return _synthetic(width)
    return _user(spec)
