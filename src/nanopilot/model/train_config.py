"""Training configuration: :class:`TrainConfig`, read from YAML (``nanopilot train --config FILE``) with sections
``model``, ``data``, ``training`` and a list of ``seeds`` (one ensemble member per seed), checked on creation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import yaml

from ..physics import Instrument
from .data import DEFAULT_RANGES, Background, check_counts
from .network import Architecture

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (see ``src/nanopilot/model/configs/*.yaml`` for examples).

    model : architecture (``channels`` per block, ``outputs`` 3 or 4).
    data : ``library`` (HDF5 path) or None for on-the-fly simulation; ``ranges`` {name: [low, high]} (strain,
        omega deg, chi deg, thickness A); ``counts`` ("published", a peak count level, or [low, high] peak
        counts drawn log-uniformly per frame); ``background`` (None, or the fields of
        :class:`~nanopilot.model.data.Background`: a smooth background on a share of the frames); ``kernel``;
        ``samples_per_epoch`` and ``val_samples`` (simulation) or ``val_fraction`` (library).
    training : ``epochs``, ``batch_size``, ``lr`` (peak), ``weight_decay``, ``optimizer``, ``schedule``,
        ``loss_weights`` ({output name: weight} of each output's squared error in the loss, in label units;
        outputs not named weigh 1; None: all 1), ``patience`` (epochs without validation improvement before
        stopping; not applied in the first half of the epochs, while the one-cycle learning rate is high),
        ``keep_best`` (see ``seeds``), ``threads``, and ``minutes``: a wall-time budget
        per member (None: none). With a budget the schedule runs on the elapsed fraction of it instead of the
        step count (the same one-cycle or cosine shape), ``epochs`` becomes an upper bound, early stopping is
        off, and training stops when the budget is spent (the last, partial epoch is validated too);
        ``count_weighting`` p: each frame's squared error weighs clip(total / input_total, 0.3, 40) ** p (bright
        frames, whose errors are smaller, are not drowned by faint ones; needs ``model.input_total``; None: 1);
        ``init``: a model file (or shipped name) whose members start the training.
    seeds : one ensemble member trained per seed; ``training.keep_best`` k (None: all) keeps the k members with
        the lowest validation loss, each on its own validation set (their seeds in the config's order; all of
        them when k >= the number of seeds).
    instrument : instrument fields (dict) or None for the published setup.
    """

    name: str = "nanobeamnn"
    architecture: Architecture = dataclasses.field(default_factory=Architecture)
    library: str | None = None
    ranges: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_RANGES))
    counts: str | float | tuple = "published"
    background: dict | None = None
    kernel: str = "box"
    samples_per_epoch: int = 65536
    val_samples: int = 4096
    val_fraction: float = 0.1
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    loss_weights: dict | None = None
    patience: int = 10
    keep_best: int | None = None
    threads: int | None = None
    minutes: float | None = None
    count_weighting: float | None = None
    init: str | None = None
    seeds: tuple[int, ...] = (0,)
    instrument: dict | None = None

    def __post_init__(self):
        self.counts = check_counts(self.counts)
        if self.background is not None:
            Background(**self.background)  # a clear error for unknown fields or bad values, at load time
        if self.count_weighting is not None and (self.architecture.input_total is None
                                                 or not 0 <= float(self.count_weighting) <= 2):
            raise ValueError("training.count_weighting needs model.input_total and 0 <= p <= 2, got "
                             f"{self.count_weighting!r} with input_total {self.architecture.input_total!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"training.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name in ("samples_per_epoch", "val_samples", "epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.minutes is not None and not float(self.minutes) > 0:
            raise ValueError(f"training.minutes must be > 0 (or null for no time budget), got {self.minutes!r}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"training.lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(self.seeds)}")
        if self.keep_best is not None and int(self.keep_best) < 1:
            raise ValueError(f"training.keep_best must be >= 1 (or null: keep every member), got {self.keep_best!r}")
        names = self.architecture.names
        missing = [n for n in names if n not in self.ranges]
        if missing:
            raise ValueError(f"data.ranges lacks {missing} (needed for outputs {list(names)})")
        self.ranges = {n: (float(self.ranges[n][0]), float(self.ranges[n][1])) for n in names}
        if self.loss_weights is not None:
            bad = sorted(set(self.loss_weights) - set(names))
            if bad:
                raise ValueError(f"training.loss_weights names {bad}, which are not outputs {list(names)}")
            self.loss_weights = {n: float(w) for n, w in self.loss_weights.items()}
            if not all(w > 0 and math.isfinite(w) for w in self.loss_weights.values()):
                raise ValueError(f"training.loss_weights must be finite and > 0, got {self.loss_weights}")
        if any(lo >= hi for lo, hi in self.ranges.values()):
            raise ValueError(f"data.ranges need low < high, got {self.ranges}")

    def get_instrument(self) -> Instrument:
        return Instrument.from_dict(self.instrument) if self.instrument else Instrument()

    def output_weights(self) -> torch.Tensor:
        """(outputs,) float32 weight of each output's squared error in the loss (label units)."""
        given = self.loss_weights or {}
        return torch.tensor([given.get(n, 1.0) for n in self.architecture.names], dtype=torch.float32)

    # ----------------------------------------------------------------- YAML layout
    def to_dict(self) -> dict:
        """Nested dict in the YAML layout (sections model / data / training / seeds / instrument)."""
        return {
            "name": self.name,
            "model": self.architecture.to_dict(),
            "data": {"library": self.library, "ranges": {k: list(v) for k, v in self.ranges.items()},
                     "counts": list(self.counts) if isinstance(self.counts, tuple) else self.counts,
                     "background": self.background, "kernel": self.kernel, "samples_per_epoch": self.samples_per_epoch,
                     "val_samples": self.val_samples, "val_fraction": self.val_fraction},
            "training": {k: getattr(self, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "optimizer",
                                                       "schedule", "loss_weights", "patience", "keep_best",
                                                       "threads", "minutes", "count_weighting", "init")},
            "seeds": list(self.seeds),
            "instrument": self.instrument,
        }

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown sections or keys are errors that name them."""
        data = dict(data)
        sections = {"name", "model", "data", "training", "seeds", "instrument"}
        unknown = sorted(set(data) - sections)
        if unknown:
            raise ValueError(f"unknown config section(s) {unknown}; known: {sorted(sections)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict = {}
        for section in ("data", "training"):
            values = data.get(section) or {}
            bad = sorted(set(values) - fields)
            if bad:
                raise ValueError(f"unknown key(s) {bad} in config section {section!r}")
            kwargs.update(values)
        if "ranges" in kwargs:
            kwargs["ranges"] = {**DEFAULT_RANGES, **kwargs["ranges"]}
        return cls(name=data.get("name", cls.name), architecture=Architecture.from_dict(data.get("model") or {}),
                   seeds=tuple(data.get("seeds", (0,))), instrument=data.get("instrument"), **kwargs)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise FileNotFoundError(f"cannot read training config {path}: {err}") from err
        try:
            return cls.from_dict(yaml.safe_load(text) or {})
        except (ValueError, TypeError, yaml.YAMLError) as err:
            raise ValueError(f"bad training config {path}: {err}") from err
