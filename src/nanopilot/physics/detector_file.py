"""The frame preparation's configuration as data: a dict, a YAML file beside the instrument's, a fingerprint
(:class:`~nanopilot.physics.FramePreparation` inherits these)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import yaml

from .instrument import from_fields

#: Fields holding a calibration array (an array, or a .npy / HDF5 / image file path), in the raw detector layout.
ARRAY_FIELDS = ("dark", "flat", "mask")


class PreparationFile:
    """Serialisation of a frame preparation (a frozen dataclass with ``_hashes`` of its calibration arrays)."""

    def to_dict(self) -> dict:
        """Plain-Python dict of the fields (JSON / YAML friendly); an in-memory array is described (shape, sha256),
        which :meth:`from_dict` refuses: save it to a file and give the path to round-trip."""
        d = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ARRAY_FIELDS and value is not None and not isinstance(value, (str, os.PathLike, dict)):
                value = {"in_memory_array": list(np.shape(value)), "sha256": self._hashes[field.name]}
            elif isinstance(value, os.PathLike):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            d[field.name] = value
        return d

    @classmethod
    def from_dict(cls, data: dict) :
        """Build from a dict; unknown keys are an error that names them."""
        return from_fields(cls, data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, base: str | Path | None = None) :
        """From YAML text; relative calibration-file paths are taken relative to ``base`` (a folder)."""
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"a frame preparation YAML must be a mapping of fields, got {type(data).__name__}")
        if base is not None:
            for name in ARRAY_FIELDS:
                if isinstance(data.get(name), str) and not Path(data[name].partition("::")[0]).is_absolute():
                    data[name] = str(Path(base) / data[name])
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the YAML file (calibration arrays must be files)."""
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) :
        """Read a YAML file written by :meth:`save` or by hand."""
        path = Path(path)
        return cls.from_yaml(path.read_text(), base=path.parent)

    def fingerprint(self) -> str:
        """Short stable hash (16 hex digits) of the fields and the calibration arrays' contents."""
        d = {k: v for k, v in self.to_dict().items() if k not in ARRAY_FIELDS}
        if not self.follow_drift:  # a field added later: at its default it leaves earlier fingerprints as they were
            del d["follow_drift"]
        d.update({k: self._hashes.get(k) for k in ARRAY_FIELDS})
        canonical = json.dumps({k: float(v) if isinstance(v, float) else v for k, v in d.items()}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
