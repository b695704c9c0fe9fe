"""What every signal is: it computes itself for a batch of images, compares two values, and
declares the pair features it contributes to the decision model (ndid_tasks.features collects them)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..images import LoadedImage


@dataclass(frozen=True)
class PairFeature:
    """One named input of the decision model, owned by the signal that measures it."""

    name: str
    stage: int  # 1: measured for every candidate; 2: only for pairs in the ambiguous band
    signal: str  # the signal that measures it
    standin: float  # where it cannot be measured: what an unrelated pair shows
    optional: bool  # a calibration keeps it only if it adds held-out AP or image-level recall
    meaning: str


class Signal(ABC):
    name: ClassVar[str]
    dim: ClassVar[int]
    pair_features: ClassVar[tuple[PairFeature, ...]] = ()  # what it contributes to the decision model
    higher_is_closer: ClassVar[bool] = False  # compare() is a distance (False) or a similarity (True)

    @classmethod
    def for_settings(cls, settings: Any) -> Signal:
        """The signal configured by Settings (those without settings ignore them)."""
        return cls()

    @abstractmethod
    def compute(self, images: Sequence[LoadedImage]) -> Any:
        """One entry per image (a row of an array for vectors and hashes)."""

    @abstractmethod
    def compare(self, a: Any, b: Any) -> float:
        """The pair feature this signal contributes (distance or similarity; see module doc)."""
