"""Inference throughput on the CPU: the Predictor (single model and default ensemble with uncertainty, frame checks
included) next to a plain eager PyTorch implementation of the published architecture, measured in the same run
and in the same thread (nanopilot's inference thread, see :mod:`nanopilot.model.inference_thread`), and the
shipped thickness model (on large batches, and per growth round of 25 frames).

``--device cuda`` measures the network passes on a GPU instead (frames copied from host memory in batches,
the time of the copies included; the Predictor's per-frame checks run on the CPU and are not part of it).

    python benchmarks/inference.py [--frames 8192] [--threads 2] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from nanopilot.model import Predictor, count_parameters, load_model, shipped_model_path
from nanopilot.model.data import DEFAULT_RANGES, sample_params
from nanopilot.model.inference_thread import run_in_inference_thread
from nanopilot.physics import poisson, simulate


def plain_published_network() -> nn.Module:
    """The published architecture written the obvious way (NCHW, nn.Sequential, eager)."""
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1024, 3)).eval()


def best_rate(fn, n: int, repeats: int) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(repeats))
    return n / best


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu (the Predictor) or a GPU, e.g. cuda (network passes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = sample_params(args.frames, DEFAULT_RANGES, 3, np.random.default_rng(0))
    frames = poisson(simulate(params, counts="published"), 1).astype(np.float32)
    if args.device != "cpu":
        return gpu(frames, torch.device(args.device), args.repeats)

    plain = plain_published_network()
    x = torch.as_tensor(frames).unsqueeze(1)

    def run_plain(batch=64):
        # in the thread that runs the Predictor's network passes: both then use the same OpenMP pool
        def passes():
            torch.set_num_threads(args.threads)
            with torch.no_grad():
                for start in range(0, len(x), batch):
                    plain(x[start:start + batch])

        run_in_inference_thread(passes)

    model = load_model(shipped_model_path())
    single = Predictor(model.member(0), threads=args.threads)
    ensemble = Predictor.load(threads=args.threads)

    print(f"{args.frames} frames of 64 x 64 counts, {args.threads} threads, torch {torch.__version__}, CPU only")
    rate_plain64 = best_rate(lambda: run_plain(64), len(x), args.repeats)
    rate_plain1k = best_rate(lambda: run_plain(1024), len(x), args.repeats)
    rate_single = best_rate(lambda: single.predict(frames), args.frames, args.repeats)
    rate_ensemble = best_rate(lambda: ensemble.predict(frames), args.frames, args.repeats)
    checked = frames[:2048]
    rate_residual = best_rate(lambda: ensemble.predict(checked, residual=True), len(checked), 1)
    plain_best = max(rate_plain64, rate_plain1k)
    print(f"plain eager PyTorch, published architecture, batch 64:   {rate_plain64:10,.0f} frames/s")
    print(f"plain eager PyTorch, published architecture, batch 1024: {rate_plain1k:10,.0f} frames/s")
    print(f"Predictor, single model (checks + statuses):             {rate_single:10,.0f} frames/s"
          f"   ratio to best plain {rate_single / plain_best:.2f}   (bar >= 5,000 frames/s, ratio >= 1)")
    print(f"Predictor, default ensemble of {ensemble.n_members} with uncertainty:       {rate_ensemble:10,.0f} frames/s"
          f"   (bar >= 1,500 frames/s)")
    print(f"Predictor, default ensemble + residual check:            {rate_residual:10,.0f} frames/s")
    thickness_model = load_model(shipped_model_path("thickness"))
    thickness = Predictor(thickness_model, threads=args.threads)
    rate_thickness = best_rate(lambda: thickness.predict(frames), args.frames, args.repeats)
    rounds = [frames[start:start + 25] for start in range(0, min(len(frames), 2500), 25)]
    rate_rounds = best_rate(lambda: [thickness.predict(r) for r in rounds], len(rounds), args.repeats)
    label = f"Predictor, thickness model ({count_parameters(thickness_model.networks[0]):,} parameters):"
    print(f"{label:57s}{rate_thickness:10,.0f} frames/s   one growth round of 25 frames: {1e3 / rate_rounds:.1f} ms")


def gpu(frames: np.ndarray, device: torch.device, repeats: int) -> None:
    """Network passes on a GPU: plain eager NCHW next to nanopilot's networks (channels-last, one member and the
    stacked ensemble), frames copied from pinned host memory batch by batch."""
    from nanopilot.model.network import StackedEnsemble

    host = torch.as_tensor(frames).pin_memory()
    model = load_model(shipped_model_path())
    stacked = StackedEnsemble(model.networks)  # before .to(device) moves the members
    networks = {"plain eager PyTorch, published architecture": plain_published_network().to(device),
                "nanopilot single network (channels-last)":
                    model.networks[0].eval().to(device, memory_format=torch.channels_last),
                f"nanopilot stacked ensemble of {len(model.networks)}":
                    stacked.eval().to(device, memory_format=torch.channels_last)}

    def passes(network, batch, channels_last):
        with torch.inference_mode():
            for start in range(0, len(host), batch):
                x = host[start:start + batch].to(device, non_blocking=True).unsqueeze(1)
                network(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        torch.cuda.synchronize(device)

    print(f"{len(frames)} frames of 64 x 64 counts on {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    for name, network in networks.items():
        for batch in (64, 1024, 8192):
            rate = best_rate(lambda: passes(network, batch, not name.startswith("plain")), len(frames), repeats)
            print(f"{name:<46} batch {batch:>5}: {rate:12,.0f} frames/s")


if __name__ == "__main__":
    main()
