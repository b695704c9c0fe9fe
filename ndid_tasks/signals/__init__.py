"""Signals: each computes itself for a batch of images, compares two values, and declares the
pair features it gives the decision model (``pair_features``; ndid_tasks.features collects them).

    phash    64-bit perceptual hash          compare -> Hamming distance (0..64); turned variants
    resnet   ResNet-50 GeM, whitened, L2=1   compare -> cosine similarity
    clip     open_clip ViT-B-32 512-d, L2=1  compare -> cosine similarity
    pdq      Meta PDQ 256-bit hash           compare -> Hamming distance (0..256); dihedral min
    geometry SIFT + RANSAC                   verify -> distinct inliers (stage 2 only)

A new signal is a module here with a :class:`Signal` subclass, its ``pair_features`` and an entry
in :data:`DECISION_SIGNALS` (the order of the calibration's features); the exact sha256 check lives
in the index (its ``sha256`` field), not here.
"""

from .base import PairFeature, Signal
from .clip import ClipSignal
from .embedding import TorchEmbeddingSignal, native_bf16_available, precision_agreement
from .geometry import GeometricSignal, LocalFeatures
from .pdq import PDQSignal
from .phash import PHashSignal
from .resnet import PooledResNet, ResNetSignal, fuse_batchnorm, gem_pool, mirrored

# the signals whose pair features the decision model reads, in the calibration's feature order
DECISION_SIGNALS: tuple[type[Signal], ...] = (PHashSignal, ResNetSignal, ClipSignal, PDQSignal, GeometricSignal)

__all__ = ["DECISION_SIGNALS", "ClipSignal", "GeometricSignal", "LocalFeatures", "PDQSignal", "PHashSignal",
           "PairFeature", "PooledResNet", "ResNetSignal", "Signal", "TorchEmbeddingSignal", "fuse_batchnorm",
           "gem_pool", "mirrored", "native_bf16_available", "precision_agreement"]
