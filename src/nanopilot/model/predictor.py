"""The inference engine: frames in, strain / tilts (/ thickness), their uncertainty and a per-frame status out.

All ensemble members run in one pass of a :class:`~nanopilot.model.network.StackedEnsemble` (grouped
convolutions, channels-last, ``torch.inference_mode``) over fixed-size chunks, so results are deterministic for
the same inputs and settings. Bad frames are reported in the status, never raised.
"""

from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import numpy as np
import torch

from ..estimates import COUNT_LEVEL, EDGE, OK, UNCERTAIN, Estimates, check_frames
from ..physics import FramePreparation, Instrument
from . import bad_pixels
from .calibration import LevelCalibration
from .files import ModelFile, load_model
from .frame_input import FrameInput
from .inference_thread import run_in_inference_thread
from .network import StackedEnsemble
from .refinement import STRAIN_PRIOR_FACTOR, TILT_PRIOR_FACTOR, EstimateRefinement  # noqa: F401 (here before)
from .residual import RESIDUAL_FLOOR, fit_background, residual_statistic  # noqa: F401 (here before; training uses it)

#: The shipped default ensemble (3 outputs) and thickness model, inside the package.
DEFAULT_MODEL = "default"
THICKNESS_MODEL = "thickness"
#: Frames whose total counts lie more than this factor outside the training data's range are flagged (with count
#: normalisation, see :class:`Predictor`: only fainter ones).
COUNT_LEVEL_FACTOR = math.sqrt(10)


#: The published network trained the published way (one count level, raw counts in): the baseline of
#: ``benchmarks/real_frames.py`` and the start of the default model's training.
PUBLISHED_MODEL = "published"
#: A frame is ``uncertain`` (values kept) where some output's reported std exceeds this factor times the model's
#: RMSE at the published count level (``reference_rmse`` in its sidecar): the frames left ``ok`` then err by more
#: than 4x that RMSE (2.5 std at the limit) in about 1% of cases at most, if the std is calibrated.
UNCERTAIN_FACTOR = 1.6
#: Models shipped inside the package, loadable by name.
SHIPPED_MODELS = (DEFAULT_MODEL, THICKNESS_MODEL, PUBLISHED_MODEL)


def shipped_model_path(name: str = DEFAULT_MODEL) -> Path:
    """Path (sidecar) of a model shipped inside the package: "default" or "thickness"."""
    return Path(str(importlib.resources.files("nanopilot.model") / "weights" / f"{name}.json"))


class Predictor(FrameInput, EstimateRefinement):
    """A loaded model (single network or ensemble) ready to analyse frames.

    Parameters
    ----------
    model : ModelFile from :func:`~nanopilot.model.files.load_model`.
    instrument : the configured setup; a model trained for another one is refused (the error names the fields).
    threads : torch intra-op threads used by :meth:`predict` (None: leave torch's setting).
    batch_size : frames per network pass (fixed, so results do not depend on how frames are grouped into calls;
        128 keeps the channels-last activations in cache: about 4x the throughput of 1024 on 2 cores).
    saturation : counts at or above which a pixel is saturated (None: not checked).
    edge_margin : an estimate within this fraction of the trained span of a range end gets the warning status
        ``edge`` (its values and std are kept).
    normalise_counts : scale each frame whose total counts lie outside the training frames' central range
        (the sidecar's ``count_stats``, 0.1-99.9 percentiles) to their median total before the network, as the
        published method advises for a model trained at one count level (``benchmarks/real_frames.py``: at peak
        30-10,000 counts the published ensemble's RMSE falls from flagged or wrong to 6-8e-5 / 3.5-3.8e-4 deg /
        1.3e-3 deg, at peak 2 counts from 8.7e-4 / 4.6e-3 / 8.2e-3 to 2.3e-4 / 7.1e-4 / 1.7e-3). Frames inside
        that range are untouched; refinement and the residual check see the raw counts. None (default): on for
        models trained at one count level without a thickness output (off for the any-flux default, whose
        network scales every frame itself); a thickness model reads the film's thickness from the total counts
        too, so its frames are not scaled and frames brighter than its trained range are flagged ``count_level``.
    mask : the pixels to ignore (module gaps, dead or known hot pixels): an (H, W) array (nonzero: ignore) or a
        file (``.npy``, a NeXus / HDF5 ``pixel_mask``, a mask image; see
        :func:`~nanopilot.model.bad_pixels.load_mask`); their values (NaN or negative included) are replaced by
        the mean of their good neighbours before anything else.
    uncertain_factor : a frame whose reported std exceeds this factor times the model's RMSE at the published
        count level in any output is ``uncertain`` (a warning: values kept); None: never. Only for models whose
        sidecar records that RMSE (``reference_rmse``: models trained across count levels).
    find_hot_pixels : also replace, frame by frame, pixels far above their brightest neighbour (counts the
        physics cannot produce; 0.01-0.05 ms per frame on 2 cores, at most a tenth of the ensemble's cost). With
        4 hot pixels of +40 counts per frame at peak 7 counts the published ensemble's RMSE goes from 2.4e-4 /
        2.0e-3 / 4.6e-3 to 1.25e-4 / 4.7e-4 / 1.39e-3, within 1.1x of clean frames (``benchmarks/real_frames.py``).
    preparation : a :class:`~nanopilot.physics.FramePreparation` (or its YAML file): :meth:`predict` then also takes
        raw detector frames (its ``detector_shape``) and prepares them first; their masked pixels are filled like
        ``mask``'s and its per-frame problems are their status. It must give this instrument's pixel size and ROI
        shape (ValueError saying what to change).
    device : where the network passes run (``"cpu"``, default, or a GPU such as ``"cuda"``); frames are copied there
        per chunk and the outputs back; the per-frame checks, refinement and residual check stay on the CPU. A device
        torch cannot use here is refused (ValueError) before anything is loaded onto it.
    """

    def __init__(self, model: ModelFile, *, instrument: Instrument | None = None, threads: int | None = None,
                 batch_size: int = 128, saturation: float | None = None, edge_margin: float = 0.005,
                 normalise_counts: bool | None = None, mask=None, find_hot_pixels: bool = True,
                 uncertain_factor: float | None = UNCERTAIN_FACTOR, preparation=None, device: str = "cpu"):
        self.device = _usable_device(device)
        meta = model.metadata
        self.instrument = model.instrument
        if instrument is not None:
            self.instrument.require_same(instrument, f"model {model.path}")
        self.path, self.metadata = model.path, meta
        self.outputs = tuple(model.architecture.names)
        self.scaler = model.scaler
        self.n_members = len(model.networks)
        self.threads, self.batch_size, self.saturation = threads, int(batch_size), saturation
        self.edge_margin = float(edge_margin)
        self.kernel = meta["kernel"]
        self.ranges = np.array([meta["ranges"][name] for name in self.outputs], dtype=np.float64)
        self.mask = None if mask is None else bad_pixels.load_mask(mask, self.instrument.roi_shape)
        if preparation is not None and not isinstance(preparation, FramePreparation):
            preparation = FramePreparation.load(preparation)
        if preparation is not None:
            preparation.check(self.instrument)
        #: The raw frames' preparation (None: frames come at the instrument's ROI shape).
        self.preparation = preparation
        self.find_hot_pixels = bool(find_hot_pixels)
        stats = meta["count_stats"]
        #: The network scales every frame to one total itself (trained across count levels): nothing to scale
        #: here, and brighter frames than it was trained on are only less noisy.
        self.any_flux = model.architecture.input_total is not None
        if normalise_counts is None:
            normalise_counts = "thickness" not in self.outputs and not self.any_flux
        self.normalise_counts = bool(normalise_counts)
        #: (low, high) total counts of the frames analysed as they are; others are scaled to ``training_total``
        #: (with ``normalise_counts``) or flagged.
        self.trained_counts = (float(stats["p001"]), float(stats["p999"]))
        self.training_total = float(stats["median"])
        #: (low, high) total counts outside which a frame is flagged ``count_level``.
        self.count_range = (stats["p001"] / COUNT_LEVEL_FACTOR,
                            math.inf if self.normalise_counts or self.any_flux else stats["p999"] * COUNT_LEVEL_FACTOR)
        self.residual_threshold = meta.get("residual_threshold")
        levels = meta.get("residual_levels") or (None if self.residual_threshold is None else
                                                 {"log10_total": [0.0], "threshold": [self.residual_threshold]})
        #: (log10 total counts (B,), thresholds (B,)) of the residual check, interpolated at a frame's total counts
        #: (one entry for a model with one ``residual_threshold``; None: no check).
        self.residual_levels = None if levels is None else (np.asarray(levels["log10_total"], dtype=np.float64),
                                                            np.asarray(levels["threshold"], dtype=np.float64))
        factors = meta.get("spread_factor") or {}
        #: (K,) factors applied to the ensemble spread in :meth:`predict` (1.0 where the sidecar has none).
        self.spread_factor = np.array([float(factors.get(name, 1.0)) for name in self.outputs])
        reference = meta.get("reference_rmse")
        #: (K,) std above which a frame is ``uncertain`` (None: never; models without ``reference_rmse``).
        self.max_std = (None if reference is None or uncertain_factor is None else
                        float(uncertain_factor) * np.array([reference[name] for name in self.outputs]))
        level = meta.get("level_calibration")
        #: The count-level dependent calibration of a model trained across count levels (None: the factors).
        self.level_calibration = None if level is None else LevelCalibration.from_dict(level, self.outputs)
        network = StackedEnsemble(model.networks) if self.n_members > 1 else model.networks[0]
        self.network = network.eval().to(self.device, memory_format=torch.channels_last)
        for p in self.network.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, path: str | Path | None = None, **kwargs) -> Predictor:
        """Load a model file (``NAME``, ``NAME.pt`` or ``NAME.json``) or a shipped model by name ("default",
        "thickness"); None loads the shipped default ensemble.

        Keyword arguments go to :class:`Predictor` (``instrument``, ``threads``, ``batch_size``, ...).
        """
        if path is None or (isinstance(path, str) and path in SHIPPED_MODELS and not Path(path).exists()):
            path = shipped_model_path(path or DEFAULT_MODEL)
        return cls(load_model(path), **kwargs)

    def __repr__(self) -> str:
        return (f"<Predictor {Path(self.path).name}: {self.n_members} member(s), outputs {list(self.outputs)}, "
                f"instrument {self.instrument.fingerprint()}>")

    # ----------------------------------------------------------------- network
    def predict_raw(self, frames) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network outputs without frame checks: (mean (N, K), std (N, K), members (N, M, K)), physical units.

        ``std`` is the sample standard deviation over ensemble members, not calibrated (NaN for a single
        network); :meth:`predict` scales it by :attr:`spread_factor`.
        """
        arr = self._check_shape(frames)
        x = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))
        labels = run_in_inference_thread(self._network_pass, x)
        members = self.scaler.to_values(labels.double()).numpy()
        mean = members.mean(axis=1)
        std = members.std(axis=1, ddof=1) if self.n_members > 1 else np.full_like(mean, np.nan)
        return mean, std, members

    def _network_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Labels (N, M, K) of frames x (N, H, W) float32, in fixed-size chunks (runs in the inference thread).

        A chunk of one frame is run as two (the frame twice): PyTorch's CPU convolution takes another path for a
        batch of one, whose results differ in the last bits, so that a frame's estimate would depend on how the
        frames were batched (and a replay would not give the live maps bit for bit)."""
        if self.threads:
            torch.set_num_threads(int(self.threads))
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                chunk = x[start:start + self.batch_size].unsqueeze(1)
                n = len(chunk)
                chunk = (chunk if n > 1 else chunk.repeat(2, 1, 1, 1)).to(self.device)
                chunk = chunk.contiguous(memory_format=torch.channels_last)
                chunks.append(self.network(chunk)[:n].reshape(n, self.n_members, -1).cpu())
        return torch.cat(chunks) if chunks else torch.zeros((0, self.n_members, len(self.outputs)))

    # ----------------------------------------------------------------- the public call
    def predict(self, frames, *, refine: bool | float = False, residual: bool = False,
                background: bool | None = None, mask=None) -> Estimates:
        """Estimates for a batch of frames.

        Parameters
        ----------
        frames : (N, H, W) or (H, W) counts, float or integer; rows = detector y. With a :attr:`preparation`, also
            raw detector frames (N, R, C) (ADU, its ``detector_shape``), prepared first.
        refine : False; True to pass every ok frame's estimate through :func:`nanopilot.fitting.refine`
            under the model's kernel (Poisson likelihood); or a float k to refine only frames whose ensemble
            spread exceeds k times the median spread of the training validation set in any output. A box-kernel
            model's estimate is the start and the prior of the tilts (std :data:`TILT_PRIOR_FACTOR` x its
            validation RMSE) and of strain (std :data:`STRAIN_PRIOR_FACTOR` x its validation RMSE), and the
            refinement (strain and thickness averaged over the omega posterior: ``omega_average``; about 18 ms
            per frame on one core) replaces it; a smooth-kernel model's estimate is combined with the fit by
            inverse variance (network: its validation RMSE; refinement: its Fisher std).
        residual : also flag frames the physics model does not explain (``residual``: the Poisson deviance per
            count against the estimate's pattern with a fitted scale and flat background above the sidecar's
            ``residual_threshold``, or its ``residual_levels`` at the frame's total counts; see
            :mod:`nanopilot.model.residual`); frames at the edge are checked too.
        background : estimate each usable frame's flat background (``background``, ``background_std``, counts per
            pixel; see :func:`~nanopilot.model.residual.fit_background`); None (default): when ``residual`` is on
            (the check fits it anyway). Background and check together: 0.10-0.15 ms of CPU time per frame, most of
            it rendering each estimate's pattern on one thread: the default ensemble's throughput on 2 cores falls
            by about 30% (``benchmarks/callback_throughput.py``: 35% end to end in the live analysis).
        mask : pixels to ignore in these (N, H, W) frames besides :attr:`mask`: (N, H, W) or (H, W), nonzero to
            ignore (e.g. :class:`~nanopilot.physics.PreparedFrames`' mask).

        Returns
        -------
        Estimates with strain, omega (deg), chi (deg), thickness (A; NaN for a 3-output model), their standard
        deviations (the ensemble spread calibrated per count level, or times the sidecar's calibration factor,
        see :mod:`nanopilot.model.calibration`; Fisher / posterior std where refined), the background (NaN when not
        estimated) and status per frame: ok; a warning (values kept): ``edge`` (an estimate within
        ``edge_margin`` of a trained range end) or ``uncertain`` (std above :attr:`max_std`); or the first
        problem found (nonfinite, negative, empty, saturated, count_level, residual, not_converged: values NaN).
        A frame at the edge that fails the residual check is ``residual``.

        Raises
        ------
        ValueError for a batch of the wrong shape (before any work).
        """
        arr, mask, prepared_status = self._model_frames(frames, mask)
        if mask is not None:  # whatever the masked pixels hold (NaN, negative) is not the frame's
            arr = np.where(mask, 0, arr)
        clean, status = check_frames(arr, self.instrument, saturation=self.saturation)
        if prepared_status is not None:  # the preparation's per-frame problems (its flagged frames are zero)
            status[prepared_status != OK] = prepared_status[prepared_status != OK]
        clean = self.without_bad_pixels(clean, mask)
        totals = clean.reshape(len(clean), -1).sum(axis=1, dtype=np.float64)
        mean, std, _ = self.predict_raw(self.at_training_level(clean, totals) if self.normalise_counts else clean)
        ok = status == OK
        status[ok & ((totals < self.count_range[0]) | (totals > self.count_range[1]))] = COUNT_LEVEL
        span = self.ranges[:, 1] - self.ranges[:, 0]
        inner_lo, inner_hi = self.ranges[:, 0] + self.edge_margin * span, self.ranges[:, 1] - self.edge_margin * span
        at_edge = ((mean < inner_lo) | (mean > inner_hi)).any(axis=1)
        params, out_std = mean.copy(), self.calibrated_std(std, totals)
        if refine is not False:
            params, out_std, status = self._refine(clean, params, out_std, status, refine)
        status[(status == OK) & at_edge] = EDGE
        if self.max_std is not None:
            status[(status == OK) & (out_std > self.max_std).any(axis=1)] = UNCERTAIN
        fitted = None
        if background or (background is None and residual):
            fitted = self._background(clean, totals, params, status, flag=residual)
        est = Estimates.from_params(params, status, std=out_std)
        if fitted is not None:
            est.background[fitted[0]], est.background_std[fitted[0]] = fitted[1], fitted[2]
        return est


def _usable_device(device) -> torch.device:
    """``device`` as a torch device; ValueError saying what to change if torch cannot use it here."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err}): use 'cpu' or a GPU such as 'cuda'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available here (torch {torch.__version__} sees no CUDA GPU): "
                         "use device 'cpu', or a torch build and machine with a GPU")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: use 'cpu' or 'cuda'")
    return device
