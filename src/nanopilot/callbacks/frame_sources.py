"""Where detector frames live: inline in events, in stream_resource/stream_datum HDF5 files, or behind
legacy resource/datum documents. Files are read while they are being written (HDF5 SWMR when available).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import h5py
import numpy as np

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
