"""Calibrations in S3: immutable versions, an ``active`` pointer, and every promotion decision.

    <calibration prefix>versions/<version>.json     the calibration document
    <calibration prefix>active.json                 {"version": ..., "key": ...} (ResNet-50 descriptor)
    <calibration prefix>active-<descriptor>.json    the same for another NDID_DESCRIPTOR (sscd)
    <calibration prefix>evaluations/<version>.json  candidate vs active on held-out labels
    <calibration prefix>whitening/<version>.npz     descriptor whitenings that calibrations name

Moving ``active.json`` is the one atomic switch: the active calibration names its whitening, and
the whitening names the index collection, so all three change together. Each descriptor keeps its
own pointer: switching NDID_DESCRIPTOR back and forth finds each one's calibration where it was.
"""

from __future__ import annotations

from typing import Any

from .calibration import Calibration
from .config import Settings
from .storage import S3Store
from .whitening import Whitening


class CalibrationStore:
    def __init__(self, settings: Settings, store: S3Store | None = None) -> None:
        self.settings = settings
        self.store = store or S3Store(settings)
        self.prefix = settings.s3_calibration_prefix

    def version_key(self, version: str) -> str:
        return f"{self.prefix}versions/{version}.json"

    @property
    def active_key(self) -> str:
        suffix = "" if self.settings.descriptor == "resnet50" else f"-{self.settings.descriptor}"
        return f"{self.prefix}active{suffix}.json"

    def save(self, cal: Calibration) -> str:
        key = self.version_key(cal.version)
        self.store.put_bytes(key, cal.to_json().encode(), "application/json")
        return key

    def activate(self, cal: Calibration) -> None:
        key = self.save(cal)
        self.store.put_json(self.active_key, {"version": cal.version, "key": key,
                                              "weights_mode": cal.weights_mode})

    def active(self) -> Calibration | None:
        """The active calibration for this deployment's weights mode, or None if none is set."""
        if not self.store.exists(self.active_key):
            return None
        pointer = self.store.get_json(self.active_key)
        if pointer.get("weights_mode") != self.settings.weights_mode:
            return None
        return Calibration.from_json(self.store.get_bytes(pointer["key"]))

    def record_evaluation(self, version: str, evaluation: dict[str, Any]) -> str:
        key = f"{self.prefix}evaluations/{version}.json"
        self.store.put_json(key, evaluation)
        return key

    def whitening_key(self, version: str) -> str:
        return f"{self.prefix}whitening/{version}.npz"

    def save_whitening(self, whitening: Whitening) -> str:
        key = self.whitening_key(whitening.version)
        self.store.put_bytes(key, whitening.to_bytes(), "application/octet-stream")
        return key

    def whitening(self, version: str) -> Whitening | None:
        key = self.whitening_key(version)
        if not self.store.exists(key):
            return None
        return Whitening.from_bytes(self.store.get_bytes(key), f"s3 {key}")
