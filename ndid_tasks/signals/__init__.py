"""Signals: each computes itself for a batch of images, compares two values, and declares the
pair features it gives the decision model (``pair_features``; ndid_tasks.features collects them).

    phash    64-bit perceptual hash          compare -> Hamming distance (0..64); turned variants
    resnet   global descriptor, whitened      compare -> cosine similarity; the model is
             NDID_DESCRIPTOR: ResNet-50 GeM (resnet.py) or SSCD TorchScript (sscd.py)
    clip     open_clip ViT-B-32 512-d, L2=1  compare -> cosine similarity
    pdq      Meta PDQ 256-bit hash           compare -> Hamming distance (0..256); dihedral min
    geometry SIFT + RANSAC                   verify -> distinct inliers (stage 2 only)
    visual_words  SIFT as sparse tf-idf words  compare -> cosine; a candidate source (tight crops)

A new signal is a module here with a :class:`Signal` subclass, its ``pair_features`` and an entry
in :data:`DECISION_SIGNALS` (the order of the calibration's features); the exact sha256 check lives
in the index (its ``sha256`` field), not here. A new model for the global-descriptor slot is a
:class:`GlobalDescriptorSignal` subclass with a ``model_key`` in :data:`DESCRIPTOR_SIGNALS` and its
file in ``weights.DESCRIPTOR_MODELS`` (see sscd.py).
"""

from .base import PairFeature, Signal
from .clip import ClipSignal
from .descriptor import GlobalDescriptorSignal, mirrored
from .embedding import TorchEmbeddingSignal, native_bf16_available, precision_agreement
from .geometry import GeometricSignal, LocalFeatures
from .pdq import PDQSignal
from .phash import PHashSignal
from .resnet import PooledResNet, ResNetSignal, fuse_batchnorm, gem_pool
from .sscd import SSCDSignal
from .visual_words import SparseWords, VisualWordsSignal, Vocabulary, VocabularyError

# the signals whose pair features the decision model reads, in the calibration's feature order
DECISION_SIGNALS: tuple[type[Signal], ...] = (PHashSignal, ResNetSignal, ClipSignal, PDQSignal, GeometricSignal)
# the models that can fill the global-descriptor slot (ResNetSignal's place above), by NDID_DESCRIPTOR
DESCRIPTOR_SIGNALS: dict[str, type[GlobalDescriptorSignal]] = {cls.model_key: cls for cls in (ResNetSignal, SSCDSignal)}


def descriptor_signal(settings, whitening=None, precision: str | None = None) -> GlobalDescriptorSignal:
    """The global descriptor NDID_DESCRIPTOR selects (every caller builds it here)."""
    return DESCRIPTOR_SIGNALS[settings.descriptor](settings, precision=precision, whitening=whitening)

__all__ = [
    "DECISION_SIGNALS",
    "DESCRIPTOR_SIGNALS",
    "ClipSignal",
    "GeometricSignal",
    "GlobalDescriptorSignal",
    "LocalFeatures",
    "PDQSignal",
    "PHashSignal",
    "PairFeature",
    "PooledResNet",
    "ResNetSignal",
    "SSCDSignal",
    "Signal",
    "SparseWords",
    "TorchEmbeddingSignal",
    "VisualWordsSignal",
    "Vocabulary",
    "VocabularyError",
    "descriptor_signal",
    "fuse_batchnorm",
    "gem_pool",
    "mirrored",
    "native_bf16_available",
    "precision_agreement",
]
