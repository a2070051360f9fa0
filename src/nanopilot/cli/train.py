"""``nanopilot train``: train a NanobeamNN model (or ensemble) from a YAML config."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a NanobeamNN model or ensemble from a YAML config",
                              description="Train one network per seed of the config (simulated on the fly or from "
                                          "an HDF5 library) and write NAME.pt + NAME.json. The shipped configs are "
                                          "in nanopilot/model/configs/ (default.yaml, thickness.yaml, published.yaml).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--config",
                      help="YAML training config, or the name of a shipped one ('default', 'thickness', 'published')")
    what.add_argument("--calibrate", metavar="MODEL",
                      help="instead of training, fit the ensemble spread's calibration factors of an existing model "
                           "file (NAME or NAME.json; 'default' is the shipped ensemble) on fresh simulated frames "
                           "and store them in its sidecar")
    p.add_argument("--frames", type=int, help="--calibrate: simulated frames (default: 4000)")
    p.add_argument("--seed", type=int, help="--calibrate: seed of the frames (default: 11)")
    p.add_argument("--out", help="model file to write, NAME or NAME.json (default: ./<config name>)")
    p.add_argument("--seeds", help="comma-separated seeds overriding the config's, e.g. '1' or '1,2,3'")
    p.add_argument("--threads", type=int, help="torch threads (overrides the config)")
    p.add_argument("--minutes", type=float,
                   help="wall-time budget per member in minutes (overrides the config's training.minutes): the "
                        "learning-rate schedule runs on the elapsed time and training stops when it is spent")
    p.add_argument("--init", metavar="MODEL",
                   help="start the members from this model file's (or shipped model's) weights (overrides the "
                        "config's training.init), e.g. to continue a training")
    p.add_argument("--lr", type=float, help="peak learning rate (overrides the config's training.lr)")
    p.add_argument("--device", default="cpu", help="torch device for training (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="members trained at once, each in a process of its own (default: %(default)s; worth it "
                        "on a GPU, whose small kernels leave it idle, or with cores to spare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def config_path(name: str) -> Path:
    """A config file path, or the path of the shipped config of that name."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    from importlib.resources import files

    return Path(str(files("nanopilot.model") / "configs" / f"{name}.yaml"))


def run(args) -> int:
    if args.calibrate:
        return calibrate(args)
    from ..model.train_config import TrainConfig
    from ..model.training import train

    path = config_path(args.config)
    config = TrainConfig.load(path)
    changes = {}
    if args.seeds:
        try:
            changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ValueError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if args.threads:
        changes["threads"] = args.threads
    if args.minutes is not None:
        changes["minutes"] = args.minutes
    if args.init is not None:
        changes["init"] = args.init
    if args.lr is not None:
        changes["lr"] = args.lr
    config = dataclasses.replace(config, **changes)
    out = args.out or config.name
    t0 = time.perf_counter()
    print(f"training {config.name} from {path}: {len(config.seeds)} member(s), seeds {list(config.seeds)}, "
          f"device {args.device}, threads {config.threads or 'default'}"
          + (f", time budget {config.minutes:g} min per member" if config.minutes else ""))
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    train(config, out, device=args.device, progress=not args.no_progress, jobs=args.jobs)
    print(f"training wall time {time.perf_counter() - t0:.0f} s")
    return 0


def calibrate(args) -> int:
    """``nanopilot train --calibrate MODEL``: fit and store the spread factors of an existing model file."""
    from ..model.calibration import calibrate as calibrate_model
    from ..model.predictor import SHIPPED_MODELS, shipped_model_path

    path = args.calibrate
    if path in SHIPPED_MODELS and not Path(path).exists():
        path = shipped_model_path(path)
    given = {k: v for k, v in (("frames", args.frames), ("seed", args.seed)) if v is not None}
    calibrate_model(path, threads=args.threads, **given)  # defaults: calibration.CALIBRATION_FRAMES, _SEED
    return 0
