"""Profiling: per-segment latency and energy on this machine, link profiles between nodes.

- :func:`segment_signature` gives every segment a key shared by identical layers across
  models and positions (the columns of the hardware × signature matrix).
- :func:`profile_model` times a random fraction of a model's segments, each in its own
  ONNX Runtime session, and reads an energy meter where one exists (:func:`detect_meter`).
- :class:`Profile` is the profile file; :class:`ProfileStore` a directory of them.
- ``splitdnn.profiling.link`` measures transfer time over ZeroMQ and fits link models.
"""

from splitdnn.profiling.meters import EnergyMeter, detect_meter
from splitdnn.profiling.profiler import profile_model
from splitdnn.profiling.signature import (
    SegmentFeatures,
    SegmentSignature,
    model_signatures,
    segment_signature,
)
from splitdnn.profiling.store import (
    Profile,
    ProfileEntry,
    ProfileError,
    ProfileStore,
    merge_profiles,
)

__all__ = [
    "EnergyMeter",
    "Profile",
    "ProfileEntry",
    "ProfileError",
    "ProfileStore",
    "SegmentFeatures",
    "SegmentSignature",
    "detect_meter",
    "merge_profiles",
    "model_signatures",
    "profile_model",
    "segment_signature",
]
