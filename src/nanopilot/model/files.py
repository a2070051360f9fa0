"""Model files: plain tensors (``NAME.pt``, a state dict loaded with ``weights_only=True``) plus a JSON sidecar
(``NAME.json``) that says what the weights are and what they were trained for.

The sidecar holds the architecture, label scales, outputs, the full instrument and its fingerprint, the count
level, count statistics and parameter ranges of the training data, the training config and seeds, validation
metrics, the residual threshold, the package version, and the SHA-256 of the weights file. Loading never
unpickles arbitrary objects, and every failure names the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import torch

from ..physics import Instrument
from .network import Architecture, LabelScaler, NanobeamNN

FORMAT = "nanopilot-model"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "architecture", "label_scaler", "outputs", "instrument",
            "instrument_fingerprint", "counts", "count_stats", "ranges", "kernel", "members", "weights")


@dataclasses.dataclass
class ModelFile:
    """A loaded model file: one network per ensemble member, and the sidecar's metadata (dict)."""

    path: Path
    networks: list[NanobeamNN]
    metadata: dict

    @property
    def architecture(self) -> Architecture:
        return self.networks[0].arch

    @property
    def scaler(self) -> LabelScaler:
        return LabelScaler.from_dict(self.metadata["label_scaler"])

    @property
    def instrument(self) -> Instrument:
        return Instrument.from_dict(self.metadata["instrument"])

    def member(self, index: int) -> ModelFile:
        """The ensemble member ``index`` alone, as a single-network model (same sidecar metadata)."""
        return ModelFile(self.path, [self.networks[index]], self.metadata)


def paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, sidecar) paths of a model given as ``NAME``, ``NAME.pt`` or ``NAME.json``."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".pt", ".json") else path
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_model(path: str | Path, networks: list[NanobeamNN], metadata: dict) -> Path:
    """Write ``networks`` (one per member, one architecture) and ``metadata`` (the sidecar fields other than
    format, architecture, outputs, weights and fingerprint, which are filled in here). Returns the sidecar path."""
    from .. import __version__

    weights_path, sidecar_path = paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    arch = networks[0].arch
    state = {f"member{i}.{name}": tensor.detach().cpu().contiguous().clone()
             for i, net in enumerate(networks) for name, tensor in net.state_dict().items()}
    torch.save(state, weights_path)
    instrument = Instrument.from_dict(metadata["instrument"])
    sidecar = {"format": FORMAT, "format_version": FORMAT_VERSION, "nanopilot_version": __version__,
               "architecture": arch.to_dict(), "outputs": list(arch.names), **metadata,
               "instrument_fingerprint": instrument.fingerprint(),
               "weights": {"file": weights_path.name, "sha256": _sha256(weights_path), "members": len(networks)}}
    sidecar_path.write_text(json.dumps(sidecar, indent=1, sort_keys=True) + "\n")
    return sidecar_path


def load_model(path: str | Path) -> ModelFile:
    """Read a model file written by :func:`save_model`.

    Raises
    ------
    FileNotFoundError if the sidecar or weights are missing; ValueError (naming the file) if either is corrupted,
    incomplete, of another format, or inconsistent with the other.
    """
    weights_path, sidecar_path = paths(path)
    for p in (sidecar_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"model file {p} not found (a model is NAME.pt + NAME.json)")
    try:
        meta = json.loads(sidecar_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"model sidecar {sidecar_path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{sidecar_path} is not a nanopilot model sidecar (format != {FORMAT!r})")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"model sidecar {sidecar_path} lacks field(s) {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise ValueError(f"model {sidecar_path} has format version {meta['format_version']}; this nanopilot reads "
                         f"version {FORMAT_VERSION}")
    if _sha256(weights_path) != meta["weights"].get("sha256"):
        raise ValueError(f"model weights {weights_path} do not match the checksum in {sidecar_path} "
                         "(corrupted or replaced file)")
    try:
        arch = Architecture.from_dict(meta["architecture"])
        instrument = Instrument.from_dict(meta["instrument"])
        LabelScaler.from_dict(meta["label_scaler"])
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"model sidecar {sidecar_path} is invalid: {err}") from None
    _check_numbers(meta, arch.names, sidecar_path)
    if instrument.fingerprint() != meta["instrument_fingerprint"]:
        raise ValueError(f"model sidecar {sidecar_path}: instrument does not match its fingerprint "
                         f"{meta['instrument_fingerprint']}")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable or unsafe files
        raise ValueError(f"model weights {weights_path} cannot be read safely: {err}") from None
    n = int(meta["weights"].get("members", 0))
    networks = []
    for i in range(n):
        prefix = f"member{i}."
        member = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        net = NanobeamNN(arch)
        try:
            net.load_state_dict(member)
        except RuntimeError as err:
            raise ValueError(f"model weights {weights_path} do not fit the architecture in {sidecar_path}: "
                             f"{err}") from None
        bad = [name for name, tensor in member.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
        if bad:
            raise ValueError(f"model weights {weights_path} hold NaN or infinite values (member {i}: {bad[:3]}); "
                             "the file is corrupted or its training diverged: retrain or restore it")
        networks.append(net.eval())
    if not networks or len(state) != n * len(networks[0].state_dict()):
        raise ValueError(f"model weights {weights_path} hold {len(state)} tensors, not the {n} members its "
                         f"sidecar {sidecar_path} describes")
    return ModelFile(sidecar_path, networks, meta)


def _check_numbers(meta: dict, outputs, sidecar_path: Path) -> None:
    """Raise ValueError naming the file and field if count_stats (p001 <= p999, counts) or the ranges of the
    outputs ([low, high] each) are not finite numbers in order."""
    stats = meta["count_stats"]
    try:
        low, high = float(stats["p001"]), float(stats["p999"])
        ok = math.isfinite(low) and math.isfinite(high) and 0 <= low <= high
    except (TypeError, KeyError, ValueError, IndexError):
        ok = False
    if not ok:
        raise ValueError(f"model sidecar {sidecar_path}: field count_stats must hold finite total counts "
                         f"{{'p001': low, 'p999': high}} with 0 <= low <= high, got {stats!r}")
    ranges = meta["ranges"] if isinstance(meta["ranges"], dict) else {}
    for name in outputs:
        value = ranges.get(name)
        try:
            low, high = (float(v) for v in value)
            ok = math.isfinite(low) and math.isfinite(high) and low < high
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"model sidecar {sidecar_path}: field ranges[{name!r}] must be finite [low, high] "
                             f"with low < high, got {value!r}")
