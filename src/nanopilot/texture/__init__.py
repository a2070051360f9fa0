"""Texture classification of scan points: features, k-means with stable labels, stripes, onset detection.

    >>> from nanopilot.texture import TextureCallback, frame_descriptor, texture_change
    >>> analysis = NanobeamAnalysis(predictor, frame_features=frame_descriptor)
    >>> textures = TextureCallback()
    >>> analysis.add_stage(textures)               # a texture run; its labels -> analysis.maps ("texture")
    >>> texture_change(maps[uid_before], maps[uid_after]).changed

Labels are integers that keep their meaning over a series of maps; :data:`UNLABELLED` (-1) marks a point
without a label (flagged frame, NaN features, or not enough data to cluster).
"""

from .callback import TextureCallback
from .classifier import NOT_ENOUGH_DATA, OK, UNLABELLED, TextureClassifier
from .features import GROUP_WEIGHTS, TextureFeatures, frame_descriptor, neighbourhood, texture_features
from .onset import TextureChange, texture_change
from .stripes import Stripes, detect_stripes, run_stripes

__all__ = [
    "GROUP_WEIGHTS", "NOT_ENOUGH_DATA", "OK", "UNLABELLED", "Stripes", "TextureCallback", "TextureChange",
    "TextureClassifier", "TextureFeatures", "detect_stripes", "frame_descriptor", "neighbourhood",
    "run_stripes", "texture_change", "texture_features",
]
