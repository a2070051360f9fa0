"""The NanobeamNN convolutional network (PHYSICS.md section 4) and its stacked-ensemble form.

The published architecture: six unpadded 3x3 convolutions with ReLU, channels 1-2-4 | pool | 4-8-16 | pool |
16-32-64 | pool, then one linear layer 1024 -> 3 (27,771 parameters for a 64 x 64 input). Raw counts go in;
the outputs are labels (physical values scaled so each spans about +-0.5, see :class:`LabelScaler`). With
``Architecture.input_total`` set, each frame is first scaled to that total count, so one network serves every
flux (the network then reads the count level from the frame's graininess alone).

:class:`StackedEnsemble` runs N such networks in one pass: the first convolution of every member reads the same
single input channel, so it is one ordinary convolution with N times the filters; every later layer is a grouped
convolution (groups = N), and the final linear layer is a grouped 4 x 4 convolution over the last feature map.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from ..estimates import PARAMETERS
from ..physics.instrument import from_fields

#: The published channel layout: three blocks of two convolutions, each block followed by 2 x 2 max pooling.
PUBLISHED_CHANNELS = ((2, 4), (8, 16), (32, 64))


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Width/depth of a NanobeamNN network.

    channels : output channels of each convolution, grouped by block (a 2 x 2 max pool ends every block).
    outputs : 3 (strain, omega, chi) or 4 (+ thickness).
    input_shape : (rows, cols) of the detector frames.
    input_total : counts each frame is scaled to (by its own total) before the first convolution; None: raw
        counts go in, as in the published network.
    """

    channels: tuple[tuple[int, ...], ...] = PUBLISHED_CHANNELS
    outputs: int = 3
    input_shape: tuple[int, int] = (64, 64)
    input_total: float | None = None

    def __post_init__(self):
        channels = tuple(tuple(int(c) for c in block) for block in self.channels)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if self.input_total is not None:
            total = float(self.input_total)
            if not (np.isfinite(total) and total > 0):
                raise ValueError(f"input_total must be a positive number of counts (or null), got {self.input_total!r}")
            object.__setattr__(self, "input_total", total)
        if self.outputs not in (3, 4):
            raise ValueError(f"outputs must be 3 (strain, omega, chi) or 4 (+ thickness), got {self.outputs!r}")
        if not channels or any(not block or min(block) < 1 for block in channels):
            raise ValueError(f"channels must be non-empty blocks of positive widths, got {self.channels!r}")
        rows, cols = self.feature_shape
        if rows < 1 or cols < 1:
            raise ValueError(f"input {self.input_shape} is too small for {len(channels)} blocks of "
                             f"{[len(b) for b in channels]} unpadded 3x3 convolutions")

    @property
    def feature_shape(self) -> tuple[int, int]:
        """Spatial shape of the last feature map (after the last pool)."""
        rows, cols = self.input_shape
        for block in self.channels:
            rows, cols = (rows - 2 * len(block)) // 2, (cols - 2 * len(block)) // 2
        return rows, cols

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the outputs, in order."""
        return PARAMETERS[: self.outputs]

    def to_dict(self) -> dict:
        out = {"channels": [list(b) for b in self.channels], "outputs": self.outputs,
               "input_shape": list(self.input_shape)}
        return out if self.input_total is None else {**out, "input_total": self.input_total}

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) frames as the first convolution reads them: scaled to :attr:`input_total` counts each (an
        empty frame stays empty), or unchanged when that is None."""
        if self.input_total is None:
            return x
        return x * (self.input_total / x.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0))

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        return from_fields(cls, data)


@dataclasses.dataclass(frozen=True)
class LabelScaler:
    """Physical values <-> labels: ``label = (value - offset) * scale`` per output.

    Published scales: strain x 100, omega (deg) x 10, chi (deg) x 5; thickness (A) is centred on 180 A and
    scaled by 1/240 so that 60-300 A spans +-0.5.
    """

    scale: tuple[float, ...] = (100.0, 10.0, 5.0, 1 / 240)
    offset: tuple[float, ...] = (0.0, 0.0, 0.0, 180.0)

    def to_labels(self, values: torch.Tensor) -> torch.Tensor:
        """(N, K) physical values -> (N, K) labels."""
        k = values.shape[-1]
        return (values - values.new_tensor(self.offset[:k])) * values.new_tensor(self.scale[:k])

    def to_values(self, labels: torch.Tensor) -> torch.Tensor:
        """(..., K) labels -> (..., K) physical values (same dtype and device)."""
        k = labels.shape[-1]
        return labels / labels.new_tensor(self.scale[:k]) + labels.new_tensor(self.offset[:k])

    def to_dict(self) -> dict:
        return {"scale": list(self.scale), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, data: dict) -> LabelScaler:
        return cls(scale=tuple(float(v) for v in data["scale"]), offset=tuple(float(v) for v in data["offset"]))


class NanobeamNN(nn.Module):
    """One network: (B, 1, H, W) or (B, H, W) raw counts -> (B, outputs) labels."""

    def __init__(self, arch: Architecture | None = None):
        super().__init__()
        self.arch = arch or Architecture()
        layers: list[nn.Module] = []
        c_in = 1
        for block in self.arch.channels:
            for c_out in block:
                layers += [nn.Conv2d(c_in, c_out, 3), nn.ReLU(inplace=True)]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        rows, cols = self.arch.feature_shape
        self.head = nn.Linear(c_in * rows * cols, self.arch.outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        return self.head(torch.flatten(self.features(self.arch.scale_input(x)), 1))


class StackedEnsemble(nn.Module):
    """N NanobeamNN members of one architecture fused into a single network (grouped convolutions).

    Output: (B, N, outputs) labels, member by member identical (to float rounding) to running each member alone.
    """

    def __init__(self, members: list[NanobeamNN]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        arch = members[0].arch
        if any(m.arch != arch for m in members):
            raise ValueError("all ensemble members must share one architecture")
        self.arch, self.n = arch, len(members)
        convs = [[m for m in member.features if isinstance(m, nn.Conv2d)] for member in members]
        layers: list[nn.Module] = []
        index, c_in = 0, 1
        for block in arch.channels:
            for c_out in block:
                groups = 1 if index == 0 else self.n  # the first layer's members all read the one input channel
                fused = nn.Conv2d(c_in * (1 if index == 0 else self.n), c_out * self.n, 3, groups=groups)
                with torch.no_grad():
                    fused.weight.copy_(torch.cat([c[index].weight for c in convs]))
                    fused.bias.copy_(torch.cat([c[index].bias for c in convs]))
                layers += [fused, nn.ReLU(inplace=True)]
                index, c_in = index + 1, c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        rows, cols = arch.feature_shape
        self.head = nn.Conv2d(c_in * self.n, arch.outputs * self.n, (rows, cols), groups=self.n)
        with torch.no_grad():  # Linear weight (out, C*rows*cols) in flatten order = conv weight (out, C, rows, cols)
            self.head.weight.copy_(torch.cat([m.head.weight.reshape(arch.outputs, c_in, rows, cols) for m in members]))
            self.head.bias.copy_(torch.cat([m.head.bias for m in members]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        return self.head(self.features(self.arch.scale_input(x))).reshape(x.shape[0], self.n, self.arch.outputs)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (frozen ones too: a Predictor freezes its networks, their size stays)."""
    return int(sum(p.numel() for p in module.parameters()))


def multiply_adds(arch: Architecture) -> int:
    """Multiply-adds of one forward pass of one network on one frame."""
    rows, cols = arch.input_shape
    total, c_in = 0, 1
    for block in arch.channels:
        for c_out in block:
            rows, cols = rows - 2, cols - 2
            total += rows * cols * c_out * c_in * 9
            c_in = c_out
        rows, cols = rows // 2, cols // 2
    return int(total + c_in * rows * cols * arch.outputs)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch's global generator; returns a numpy Generator with the same seed."""
    torch.manual_seed(int(seed))
    return np.random.default_rng(int(seed))
