"""Where detector frames live: inline in events, in stream_resource/stream_datum HDF5 files, or behind
legacy resource/datum documents. Files are read while they are being written (HDF5 SWMR when available).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np

from ..estimates import BAD_TYPE, MISSING, OK, WRONG_SHAPE
from ..physics import FramePreparation, PreparedFrames

#: Default dataset of area-detector style HDF5 files.
DEFAULT_DATASET = "/entry/data/data"


def find_image_key(data_keys: dict, frame_shape: tuple[int, int], image_key: str | None = None) -> str | None:
    """The data key holding (H, W) frames in a descriptor's ``data_keys``, or None.

    ``image_key`` given: that key if present. Otherwise the array key whose shape is (H, W) or (1, H, W),
    preferring names that contain "image".
    """
    if image_key is not None:
        return image_key if image_key in data_keys else None
    candidates = [k for k, v in data_keys.items() if frame_shape_of(v) == tuple(frame_shape)]
    candidates.sort(key=lambda k: ("image" not in k.lower(), k))
    return candidates[0] if candidates else None


def frame_shape_of(data_key: dict) -> tuple[int, ...] | None:
    """(H, W) of a 2-D array data key (a leading 1 is dropped), else None."""
    shape = [int(s) for s in data_key.get("shape") or [] if s is not None]
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    return tuple(shape) if len(shape) == 2 and data_key.get("dtype") in ("array", "number", "integer") else None


def frame_batch(blocks, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One float32 batch (N, H, W) of counts from blocks of frames, and the status of each frame.

    ``blocks`` is a list of ``(frames, n, status)``: ``frames`` an (n, H, W) array or a sequence of n frames;
    ``status`` None to convert them, or a status given to all n (their rows stay zero). A frame that is not
    an (H, W) array of numbers is flagged (``wrong_shape``, ``bad_type``, ``missing`` for None) and zeroed;
    its neighbours are used. Returns ``(batch, status)``, status an (N,) object array (``ok`` where usable).
    """
    arrays = [_as_frames(frames, frame_shape) if status is None else None for frames, _, status in blocks]
    if all(a is not None for a in arrays):  # the fast path: whole pages of numbers
        batch = np.concatenate(arrays).astype(np.float32, copy=False)
        return batch, np.full(len(batch), OK, dtype=object)
    batch = np.zeros((sum(n for _, n, _ in blocks), *frame_shape), dtype=np.float32)
    status = np.full(len(batch), OK, dtype=object)
    row = 0
    for (frames, n, forced), array in zip(blocks, arrays):
        if forced is not None:
            status[row:row + n] = forced
        elif array is not None:
            batch[row:row + n] = array
        else:
            for i, frame in enumerate(frames):
                status[row + i] = _convert(frame, batch[row + i])
        row += n
    return batch, status


def prepared_batch(blocks, preparation: FramePreparation, shift=(0, 0)) -> PreparedFrames:
    """Raw detector frames given as blocks ``(frames, n, status)`` (see :func:`frame_batch`), prepared block by
    block (no float copy of the whole batch of raw frames is made): frames (N, h, w) float32 photons, their mask,
    ROI positions and status (a block's own status, a frame that is not a raw frame, or the preparation's).
    ``shift``: the peak's drift (rows, cols, detector pixels) for a drift-following preparation, (2,) or per frame
    (N, 2)."""
    parts, shifts, first = [], np.broadcast_to(shift, (sum(block[1] for block in blocks), 2)), 0
    for frames, n, forced in blocks:
        shift, first = shifts[first:first + n], first + n
        array = _as_frames(frames, preparation.detector_shape) if forced is None else None
        if array is not None:
            parts.append(preparation.prepare(array, shift))
            continue
        raw, status = frame_batch([(frames, n, forced)], preparation.detector_shape)
        prepared = preparation.prepare(raw, shift)
        bad = status != OK
        prepared.status[bad], prepared.frames[bad], prepared.mask[bad] = status[bad], 0.0, True
        prepared.roi_corner[bad] = -1
        parts.append(prepared)
    return PreparedFrames(*(np.concatenate([getattr(p, name) for p in parts])
                            for name in ("frames", "mask", "roi_corner", "status")))


def _as_frames(block, frame_shape) -> np.ndarray | None:
    """``block`` as an (n, H, W) array of numbers, or None if any frame in it is not an (H, W) array of numbers."""
    try:
        array = np.asarray(block)
    except ValueError:  # frames of different shapes
        return None
    ok = array.ndim == 3 and array.dtype.kind in "biuf" and array.shape[1:] == tuple(frame_shape)
    return array if ok else None


def _convert(frame, out: np.ndarray) -> str:
    """Write one frame into ``out`` (H, W) float32 if it is an (H, W) array of numbers; returns its status."""
    if frame is None:
        return MISSING
    try:
        array = np.asarray(frame)
        if array.dtype.kind == "O":  # e.g. nested lists of Python numbers and None
            array = array.astype(np.float64)
    except (ValueError, TypeError):
        return BAD_TYPE
    if array.dtype.kind not in "biuf":  # strings, bytes, complex, dates
        return BAD_TYPE
    if array.shape[-2:] != out.shape or array.size != out.size:
        return WRONG_SHAPE
    out[...] = array.reshape(out.shape)
    return OK


def _path_from(doc: dict) -> Path:
    if doc.get("uri"):
        return Path(urlparse(doc["uri"]).path)
    return Path(doc.get("root") or "") / doc["resource_path"]


class ExternalFrames:
    """Frames referenced by (stream_)resource and (stream_)datum documents of one run."""

    def __init__(self):
        self._stream_resources: dict[str, dict] = {}
        self._resources: dict[str, dict] = {}
        self._files: dict[Path, h5py.File] = {}

    def stream_resource(self, doc: dict) -> None:
        self._stream_resources[doc["uid"]] = doc

    def resource(self, doc: dict) -> None:
        self._resources[doc["uid"]] = doc

    def data_key_of(self, stream_datum: dict) -> str | None:
        return self._stream_resources.get(stream_datum["stream_resource"], {}).get("data_key")

    def read_stream_datum(self, doc: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(seq_nums (n,), frames (n, H, W))`` of a stream_datum document."""
        res = self._stream_resources[doc["stream_resource"]]
        if res.get("mimetype", "application/x-hdf5") != "application/x-hdf5":
            raise ValueError(f"unsupported stream_resource mimetype {res.get('mimetype')!r} (HDF5 only)")
        dataset = self._dataset(_path_from(res), (res.get("parameters") or {}).get("dataset", DEFAULT_DATASET))
        start, stop = doc["indices"]["start"], doc["indices"]["stop"]
        if dataset.shape[0] < stop:
            dataset.refresh()
        frames = dataset[start:stop]
        seq = np.arange(doc["seq_nums"]["start"], doc["seq_nums"]["stop"])
        return seq, frames.reshape(len(frames), *frames.shape[-2:])

    def read_datum(self, datum: dict) -> np.ndarray:
        """The (H, W) frame of a legacy datum (specs AD_HDF5 / AD_HDF5_SWMR and NPY_SEQ)."""
        res = self._resources[datum["resource"]]
        kwargs, spec = datum.get("datum_kwargs") or {}, res.get("spec")
        path = _path_from(res)
        if spec == "NPY_SEQ":
            return np.load(f"{path}_{kwargs['index']}.npy")
        if spec in ("AD_HDF5", "AD_HDF5_SWMR"):
            per_point = int((res.get("resource_kwargs") or {}).get("frame_per_point", 1))
            dataset = self._dataset(path, DEFAULT_DATASET)
            first = int(kwargs["point_number"]) * per_point
            if dataset.shape[0] < first + per_point:
                dataset.refresh()
            return np.asarray(dataset[first:first + per_point]).reshape(-1, *dataset.shape[-2:]).sum(axis=0)
        raise ValueError(f"unsupported resource spec {spec!r} (supported: NPY_SEQ, AD_HDF5)")

    def _dataset(self, path: Path, name: str):
        handle = self._files.get(path)
        if handle is None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"detector file {path} does not exist")
            try:
                handle = h5py.File(path, "r", swmr=True)
            except OSError:  # not written in SWMR mode: a plain read of what is there
                handle = h5py.File(path, "r")
            self._files[path] = handle
        return handle[name]

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
