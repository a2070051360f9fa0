"""Training NanobeamNN networks: the training loop and ensembles of seeds.

A :class:`~nanopilot.model.train_config.TrainConfig` defines the run. Data are simulated on the fly (random
off-grid film states, fresh Poisson noise every batch) or read from an HDF5 library; a fixed, seeded validation
set decides early stopping and which epoch's weights are kept.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..physics import Instrument
from .data import Background, LibrarySource, SimulatedSource
from .network import LabelScaler, NanobeamNN, seed_everything
from .train_config import TrainConfig


@dataclasses.dataclass
class TrainResult:
    """One trained member: the network, its seed, validation metrics (RMSE per parameter, physical units),
    the per-epoch history, the best epoch, the training wall time (s) and the validation frames' count statistics."""

    network: NanobeamNN
    seed: int
    metrics: dict
    history: list
    best_epoch: int
    seconds: float
    count_stats: dict


def _source(config: TrainConfig, instrument: Instrument, device):
    if config.library:  # one split for every member: none trains on the patterns the ensemble is calibrated on
        return LibrarySource(config.library, instrument, config.architecture.outputs,
                             val_fraction=config.val_fraction, seed=config.seeds[0])
    background = Background(**config.background) if config.background else None
    return SimulatedSource(instrument, config.ranges, config.architecture.outputs, counts=config.counts,
                           kernel=config.kernel, device=device, background=background)


def frame_weights(frames: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """(B, 1) weight of each frame's squared error: clip(total / input_total, 0.3, 40) ** count_weighting
    (ones without ``count_weighting``)."""
    if config.count_weighting is None:
        return frames.new_ones((len(frames), 1))
    ratio = frames.sum(dim=(-2, -1)) / config.architecture.input_total
    return ratio.clamp(0.3, 40.0).pow(float(config.count_weighting)).reshape(-1, 1)


def evaluate(network: torch.nn.Module, frames: torch.Tensor, params: torch.Tensor, scaler: LabelScaler,
             batch_size: int = 2048, weights: torch.Tensor | None = None) -> tuple[float, dict]:
    """Validation loss (MSE in label units, each output's squared error times its ``weights``, default 1) and
    RMSE per parameter (physical units) of one network."""
    network.eval()
    with torch.inference_mode():
        labels = torch.cat([network(frames[i:i + batch_size].unsqueeze(1).contiguous(
            memory_format=torch.channels_last)) for i in range(0, len(frames), batch_size)])
    target = scaler.to_labels(params.to(labels.dtype))
    squared = (labels - target) ** 2
    loss = float((squared if weights is None else squared * weights.to(squared.device)).mean())
    err = scaler.to_values(labels.double()) - params
    rmse = torch.sqrt((err ** 2).mean(0))
    return loss, {name: float(v) for name, v in zip(network.arch.names, rmse)}


class _TimedSchedule:
    """Learning rate as a function of the elapsed fraction f of a wall-time budget (s): "onecycle" rises from
    lr / 25 to ``lr`` over f < 0.15 and falls to lr / 1e4 by f = 1 (cosine halves, as ``OneCycleLR``); "cosine"
    falls from ``lr`` to 0; "constant" stays at ``lr``."""

    def __init__(self, optimizer, shape: str, lr: float, budget: float):
        self.optimizer, self.shape, self.lr, self.budget = optimizer, shape, lr, budget
        self.start = time.perf_counter()
        self.step()

    def rate(self, fraction: float) -> float:
        f = min(max(fraction, 0.0), 1.0)
        if self.shape == "constant":
            return self.lr
        if self.shape == "cosine":
            return self.lr * (1 + math.cos(math.pi * f)) / 2
        low, end, warm = self.lr / 25, self.lr / 1e4, 0.15
        if f < warm:
            return low + (self.lr - low) * (1 - math.cos(math.pi * f / warm)) / 2
        return end + (self.lr - end) * (1 + math.cos(math.pi * (f - warm) / (1 - warm))) / 2

    def step(self) -> None:
        lr = self.rate((time.perf_counter() - self.start) / self.budget)
        for group in self.optimizer.param_groups:
            group["lr"] = lr


def _initial_weights(config: TrainConfig, seed: int) -> dict:
    """State dict that starts the member ``seed`` (see ``TrainConfig.init``); a clear error if the file's
    architecture or instrument differs from the config's."""
    from .files import load_model, paths
    from .predictor import SHIPPED_MODELS, shipped_model_path

    shipped = config.init in SHIPPED_MODELS and not paths(config.init)[1].is_file()
    model = load_model(shipped_model_path(config.init) if shipped else config.init)
    if dataclasses.replace(model.architecture, input_total=config.architecture.input_total) != config.architecture:
        raise ValueError(f"training.init {config.init!r} has architecture {model.architecture.to_dict()}; "
                         f"the config asks for {config.architecture.to_dict()}")
    model.instrument.require_same(config.get_instrument(), f"training.init {config.init!r}")
    return model.networks[config.seeds.index(seed) % len(model.networks)].state_dict()


def train_model(config: TrainConfig, seed: int, *, device="cpu", progress: bool = True, log=print) -> TrainResult:
    """Train one network with ``seed`` on ``device``; returns the weights of the epoch with the lowest
    validation loss (on the CPU)."""
    if config.threads:
        torch.set_num_threads(int(config.threads))
    instrument = config.get_instrument()
    rng = seed_everything(seed)
    source = _source(config, instrument, device)
    val_rng = np.random.default_rng([seed, 1])
    if config.library:
        val_frames, val_params = source.validation(val_rng)
        val_frames, val_params = val_frames.to(device), val_params.to(device)
    else:
        val_frames, val_params = source.batch(config.val_samples, val_rng)
    scaler = LabelScaler()
    weights = config.output_weights().to(device)
    network = NanobeamNN(config.architecture)
    if config.init:
        network.load_state_dict(_initial_weights(config, seed))
    network = network.to(device, memory_format=torch.channels_last)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n_train = len(source.train_index) if config.library else config.samples_per_epoch
    steps = config.epochs * math.ceil(n_train / config.batch_size)
    budget = 60.0 * config.minutes if config.minutes else None
    if budget:  # the schedule follows the elapsed fraction of the time budget, set at every step
        schedule = _TimedSchedule(optimizer, config.schedule, config.lr, budget)
    elif config.schedule == "onecycle":
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.15)
    elif config.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    else:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    best = (math.inf, None, 0, {})
    history = []
    t0 = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc=f"{config.name} seed {seed}", unit="epoch", disable=not progress)
    for epoch in bar:
        network.train()
        total, count = 0.0, 0
        for frames, params in source.epoch(n_train, config.batch_size, rng):
            frames, params = frames.to(device), params.to(device)
            x = frames.unsqueeze(1).contiguous(memory_format=torch.channels_last)
            squared = (network(x) - scaler.to_labels(params.float())) ** 2
            loss = (squared * weights * frame_weights(frames, config)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total, count = total + loss.item() * len(frames), count + len(frames)
            if budget and time.perf_counter() - t0 >= budget:
                break
        val_loss, rmse = evaluate(network, val_frames, val_params, scaler, weights=weights)
        history.append({"epoch": epoch, "train_loss": total / count, "val_loss": val_loss,
                        "seconds": time.perf_counter() - t0, **{f"rmse_{k}": v for k, v in rmse.items()}})
        if val_loss < best[0]:
            best = (val_loss, copy.deepcopy(network.state_dict()), epoch, rmse)
        bar.set_postfix(train=f"{total / count:.2e}", val=f"{val_loss:.2e}", best=best[2],
                        strain=f"{rmse['strain']:.2e}")
        if budget and time.perf_counter() - t0 >= budget:
            log(f"time budget of {config.minutes:g} min spent in epoch {epoch} ({count:,} frames in its last epoch)")
            break
        if epoch > config.epochs // 2 and epoch - best[2] >= config.patience and not budget:
            log(f"early stop at epoch {epoch}: no validation improvement for {config.patience} epochs")
            break
    bar.close()
    seconds = time.perf_counter() - t0
    network.load_state_dict(best[1])
    network = network.to("cpu", memory_format=torch.contiguous_format).eval()
    totals = val_frames.sum(dim=(1, 2)).double().cpu()
    count_stats = {"median": float(totals.median()), "p001": float(torch.quantile(totals, 0.001)),
                   "p999": float(torch.quantile(totals, 0.999))}
    log(f"{config.name} seed {seed}: best epoch {best[2]}, val RMSE "
        + ", ".join(f"{k} {v:.3g}" for k, v in best[3].items()) + f"; {seconds:.0f} s")
    return TrainResult(network, seed, {"val_loss": best[0], **{f"rmse_{k}": v for k, v in best[3].items()}},
                       history, best[2], seconds, count_stats)


def _train_members(config: TrainConfig, device, progress: bool, log, jobs: int) -> list[TrainResult]:
    """One :class:`TrainResult` per seed, in the seeds' order: here, or in ``jobs`` worker processes."""
    jobs = max(1, min(int(jobs), len(config.seeds)))
    if jobs == 1:
        return [train_model(config, seed, device=device, progress=progress, log=log) for seed in config.seeds]
    log(f"training {len(config.seeds)} members in {jobs} processes (no progress bars; a line per member)")
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(train_model, config, seed, device=str(device), progress=False, log=print)
                   for seed in config.seeds]
        return [future.result() for future in futures]


def keep_best(results: list[TrainResult], k: int | None, log=print) -> list[TrainResult]:
    """The ``k`` members of ``results`` with the lowest validation loss, in their original order (None: all)."""
    if k is None or k >= len(results):
        return results
    kept = sorted(sorted(range(len(results)), key=lambda i: results[i].metrics["val_loss"])[:k])
    log(f"keeping the {k} of {len(results)} members with the lowest validation loss: seeds "
        f"{[results[i].seed for i in kept]}")
    return [results[i] for i in kept]


def train(config: TrainConfig, out: str | Path, *, device="cpu", progress: bool = True, log=print,
          jobs: int = 1) -> Path:
    """Train one member per seed of ``config``, calibrate the ensemble and write the model file ``out``
    (see :func:`assemble`); returns the sidecar path.

    ``jobs`` > 1 trains that many members at once, each in a process of its own (worth it on a GPU, whose small
    kernels leave it idle most of the time, or on a machine with cores to spare); a member's weights depend on
    its seed and device alone, not on ``jobs``.
    """
    t0 = time.perf_counter()
    results = keep_best(_train_members(config, device, progress, log, jobs), config.keep_best, log)
    return assemble(config, results, out, device=device, log=log, seconds=time.perf_counter() - t0)


def assemble(config: TrainConfig, results: list[TrainResult], out: str | Path, *, device="cpu", log=print,
             seconds: float | None = None) -> Path:
    """Calibrate the ensemble of trained members ``results`` and write the model file ``out``.

    Calibration, on a validation set of its own (seeded by the config's first seed): ensemble RMSE per parameter,
    the median ensemble spread (``typical_std``, used by ``Predictor.predict(refine=k)``), the spread's
    calibration factors (``spread_factor``, and ``level_calibration`` for a model trained across count levels;
    see :mod:`~nanopilot.model.calibration`), and the residual
    threshold (99.9th percentile of the validation frames' residual statistic, times 1.5). ``seconds``: the
    training wall time to record (default: the members' own times added up, plus this calibration).
    Returns the sidecar path.
    """
    from .. import __version__
    from .calibration import level_fields, spread_factors
    from .files import ModelFile, save_model
    from .predictor import Predictor, residual_statistic

    t0 = time.perf_counter()
    instrument = config.get_instrument()
    rng = np.random.default_rng([config.seeds[0], 2])
    source = _source(config, instrument, "cpu")
    frames, params = source.validation(rng) if config.library else source.batch(config.val_samples, rng)
    stats = results[0].count_stats
    metadata = {"name": config.name, "label_scaler": LabelScaler().to_dict(), "instrument": instrument.to_dict(),
                "counts": source.counts, "kernel": source.kernel, "count_stats": stats,
                "ranges": {k: list(v) for k, v in source.ranges.items()},
                "config": config.to_dict(), "seeds": [r.seed for r in results], "nanopilot_version": __version__,
                "members": [{"seed": r.seed, "best_epoch": r.best_epoch, "seconds": round(r.seconds, 1),
                             "validation": r.metrics} for r in results]}
    model = ModelFile(Path(out), [r.network for r in results], metadata)
    predictor = Predictor(model)
    mean, std, _ = predictor.predict_raw(frames.numpy())
    err = mean - params.numpy()
    metadata["validation"] = {"frames": len(frames), **{f"rmse_{k}": float(v) for k, v in
                                                          zip(predictor.outputs, np.sqrt((err ** 2).mean(0)))}}
    metadata["typical_std"] = np.median(std, axis=0).tolist() if len(results) > 1 else [None] * len(mean[0])
    if len(results) > 1:
        metadata["spread_factor"] = dict(zip(predictor.outputs, spread_factors(err, std).tolist()))
    if len(results) > 1 and isinstance(source.counts, tuple):
        metadata.update(level_fields(predictor, frames.numpy(), params.numpy(), config.seeds[0]))
    residual = residual_statistic(frames.numpy(), mean, instrument, source.kernel)
    metadata["residual_threshold"] = float(1.5 * np.quantile(residual, 0.999))
    if seconds is None:
        seconds = sum(r.seconds for r in results) + time.perf_counter() - t0
    metadata["training_seconds"] = round(seconds, 1)
    metadata["device"] = str(device)
    path = save_model(out, model.networks, metadata)
    log(f"wrote {path} ({len(results)} member(s)); validation RMSE "
        + ", ".join(f"{k} {v:.3g}" for k, v in metadata["validation"].items() if k != "frames")
        + f"; total {metadata['training_seconds']:.0f} s")
    return path
