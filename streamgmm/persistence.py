"""Saving and loading a learner as ``.npz`` — plain arrays and JSON, never pickle.

A file is opened with ``allow_pickle=False``: loading it can construct arrays of numbers and
one JSON string, nothing else, so a crafted file cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from streamgmm.online import OnlineGaussianMixture

META_KEY = "__meta__"


def state_to_npz_dict(arrays: dict, meta: dict) -> dict:
    """Arrays plus the metadata as one 0-d unicode array, ready for ``np.savez``."""
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    out = dict(arrays)
    out[META_KEY] = np.array(json.dumps(meta, sort_keys=True))
    return out


def npz_dict_to_state(npz) -> tuple[dict, dict]:
    """Inverse of :func:`state_to_npz_dict` for an opened ``np.load`` archive."""
    if META_KEY not in npz.files:
        raise ValueError("not a streamgmm file: metadata missing")
    meta = json.loads(str(npz[META_KEY][()]))
    arrays = {name: npz[name] for name in npz.files if name != META_KEY}
    return arrays, meta


def save_model(model: OnlineGaussianMixture, path) -> Path:
    """Write the model's full state to ``path`` (.npz), atomically."""
    path = Path(path)
    arrays, meta = model.get_state()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **state_to_npz_dict(arrays, meta))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_model(path) -> OnlineGaussianMixture:
    """Read a model written by :func:`save_model`; raises ValueError on a malformed file."""
    with np.load(path, allow_pickle=False) as npz:
        arrays, meta = npz_dict_to_state(npz)
    return OnlineGaussianMixture.from_state(arrays, meta)
