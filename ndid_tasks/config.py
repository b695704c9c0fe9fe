"""The one Settings object: every tunable and every endpoint NDID uses, read from ``NDID_*``.

Inside Airflow the DAG layer overlays values from Airflow Connections with
:meth:`Settings.replace`; the engine itself only ever sees a finished Settings.
Secrets are kept out of ``repr`` so a logged Settings never leaks them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import PermanentError

_log = logging.getLogger(__name__)

ENV_PREFIX = "NDID_"
WEIGHTS_MODES = ("pretrained", "random")
PRECISIONS = ("auto", "fp32", "bf16")
# NDID_TORCH_COMPILE: what each spelling means (auto: a package built for this machine where there is one)
COMPILE_MODES = {"auto": "auto", "true": "true", "1": "true", "yes": "true", "on": "true",
                 "false": "false", "0": "false", "no": "false", "off": "false", "": "false"}
RESNET_LAYERS = ("layer3", "layer4")
RESNET_INPUTS = ("squash", "center_crop")
DESCRIPTORS = ("resnet50", "sscd")  # the global descriptor's model (ndid_tasks.signals.DESCRIPTOR_SIGNALS)


class SettingsError(PermanentError, ValueError):
    """A setting has a value NDID cannot use."""


def _default_state_dir() -> str:
    return os.environ.get("NDID_STATE_DIR", "var")


@dataclass(frozen=True)
class Settings:
    """Configuration for one NDID process. Field ``foo_bar`` is read from ``NDID_FOO_BAR``."""

    # --- local state (services, embedded Milvus file, models) ---
    state_dir: str = field(default_factory=_default_state_dir)

    # --- S3 ---
    s3_endpoint_url: str = "http://127.0.0.1:8333"
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_region: str = "us-east-1"
    s3_bucket: str = "ndid"
    s3_images_prefix: str = "images/"
    s3_decisions_prefix: str = "decisions/"
    s3_calibration_prefix: str = "calibration/"
    s3_labels_prefix: str = "labels/"
    s3_staging_prefix: str = "staging/"
    s3_features_prefix: str = "features/"  # verification features per image (see feature_store)
    s3_retries: int = 5  # retries of a failed S3 request (botocore "standard" mode, exponential backoff)

    # --- Milvus ---
    milvus_uri: str = ""  # empty: embedded Milvus Lite file <state_dir>/milvus.db
    milvus_token: str = field(default="", repr=False)
    milvus_collection_prefix: str = "ndid"
    milvus_hnsw_ef: int = 256  # recall over speed: ef=64 missed 6-9 % of true duplicates
    # Milvus Lite only (embedded file or `milvus-lite server`): rows waiting in its memtable are
    # brute-forced and copied row by row on every search, so a small one keeps each call cheap
    milvus_lite_memtable_mb: int = 8

    # --- models ---
    model_dir: str = ""  # empty: <state_dir>/models
    weights_mode: str = "pretrained"  # or "random": seeded random init, flagged as untrained
    random_seed: int = 0
    precision: str = "auto"  # auto: bf16 where the CPU has native bf16 (AMX/AVX512-BF16), else fp32
    # the encoders compiled ahead of time (AOTInductor, ndid_tasks.compiled): "auto" runs the
    # package `ndid models compile` built for this machine where there is one (never compiles in
    # a task), "true" also builds it where missing, "false" always runs the eager modules
    torch_compile: str = "auto"
    torch_threads: int = 0  # 0: torch default
    # the global descriptor (candidates and a stage-1 feature): resnet50 (torchvision, default) or
    # sscd (a TorchScript copy-detection model imported with `ndid models import sscd FILE`); each
    # descriptor has its own whitening, calibration and index collection
    descriptor: str = "resnet50"
    # ResNet-50 descriptor: GeM pooling of one stage's feature map, on the whole image squashed to 224x224
    resnet_layer: str = "layer3"  # layer3 (1024-d, better for crops, skips layer4) or layer4 (2048-d)
    resnet_gem_p: float = 3.0  # GeM exponent; 1 = average pooling
    resnet_flip_symmetric: bool = False  # average the descriptor of the image and its mirror (2x forward)
    resnet_input: str = "squash"  # squash (whole image, 224x224) or center_crop (short side 224, centre square)
    whitening_dim: int = 256  # dimensions kept by `ndid whitening fit` (index vectors are this long)
    whitening_file: str = ""  # local NPZ overriding the one the active calibration names
    whitening_min_images: int = 1000  # the recalibration DAG fits a whitening on the index from this size

    # --- geometric verification (stage 2) ---
    # verified at this size (SIFT upsamples 2x inside): 18 ms an image (256 px: 13 ms) -- a tight
    # crop's region of its original then holds enough keypoints (docs/benchmarks.md, round 2, session 9)
    sift_max_side: int = 384
    sift_features: int = 500  # keypoints per image (1000: 13 ms per pair to match, 500: 3 ms)
    # a weak match whose affine map puts one image into a small window of the other (a tight crop)
    # is verified again on that window, decoded from the source at up to this long side (0: off)
    closer_look_side: int = 2048
    # a faint query (few SIFT keypoints: a tight crop of sky, water, grass) that verified none of its
    # candidates is matched again at a lower contrast threshold, on at most this many of them, once
    # per query; pictures re-read like the closer look's (0: off; each costs a re-read and a SIFT pass)
    faint_look_pairs: int = 4
    store_local_features: bool = True  # DAG path: SIFT features of every image at ingest, kept in S3
    # tight crops: candidates from the SIFT features as visual words (a sparse Milvus collection);
    # costs SIFT for every image at ingest; Milvus Lite searches sparse vectors by brute force
    visual_words: bool = True
    # verified beyond NDID_STAGE2_MAX_CANDIDATES: the original of ~3 in 4 tight crops is among its 4
    # nearest by words (2: 0.62, 8: 0.77; dev set, 162 refs); 0 = words kept but not searched
    visual_words_candidates: int = 4
    # ... for an image with at least half the SIFT keypoint budget's words; an image with fewer (a
    # small image, a tight crop: median ~85 words) gets more, in inverse proportion, up to this many
    # -- matching costs keypoints x keypoints, so they cost about what a full image's 4 do (words
    # recall of tight crops among 270 photos outside the dev set: 0.833 at 4, 0.883 this way)
    visual_words_max_candidates: int = 16
    # gating: verify only the words candidates whose similarity is at least this many times the
    # query's background (VisualWordsSignal.background_of: the mean of its similarities ranked in
    # their top 1/32..1/8 among a uniform sample of ~256 earlier images -- a quantile, which holds
    # its level as the index grows -- or, where higher, the mean of its 17th..48th nearest, which
    # climb with the best of more unrelated images; a group of copies counted once); 0 = all. Images
    # with fewer than half the keypoint budget's words (tight crops, thumbnails): no background, every
    # candidate stands; while fewer than 64 images are earlier, the level among generic photos'
    # words (NDID_VISUAL_WORDS_GENERIC_FILE)
    visual_words_min_ratio: float = 1.75
    # gating the band: verify a pHash/descriptor candidate in the ambiguous band only where it is
    # among the query's 48 nearest by words and its words similarity is at least this many times
    # that background too; 0 = all (otherwise above 1). With untrained weights an unrelated photo's
    # nearest gets a stage-1 probability inside the band, and nothing else spares its verification.
    # Needs the words search (on Lite: under NDID_VISUAL_WORDS_LITE_MAX_ROWS). Both levels were
    # chosen on photos outside the dev set (docs/analysis/band_words_probe.py): with 1.25 / 1.75,
    # 22 % of images with no copy verify anything at 162 refs, 27.5 % at 420 and 28 % at 689 (100 %
    # at 0 / 0), tight crops' originals are verified as often as ungated (0.967-0.975), the other
    # families >= 0.983 (docs/benchmarks.md, sessions 17-18)
    visual_words_band_ratio: float = 1.25
    visual_words_file: str = ""  # vocabulary NPZ from `ndid words fit` ("" = the packaged one)
    # generic photos' words (`ndid words generic`): a query's background while the index is too small
    # to give its own ("" = the packaged one, which serves only the packaged vocabulary; "none": no
    # background there, every candidate of the first 64 images is verified)
    visual_words_generic_file: str = ""
    # Milvus Lite's sparse search scans every row (~0.8 ms a row a call: ≈ 0.12 s an image at 5,000
    # rows in batches of 64, 0.5 s at 20,000), so on Lite the words are searched only while their
    # collection holds at most this many rows (still stored beyond); a Milvus server uses a real
    # inverted index and has no limit; 0 = no limit on Lite either
    visual_words_lite_max_rows: int = 5000

    # --- batching ---
    embed_batch_size: int = 32
    ingest_batch_size: int = 64
    # mapped tasks per ingest step, whatever the window size: each owns a slice of the run's
    # manifest (far below Airflow's max_map_length of 1024)
    ingest_max_parallel: int = 16

    # --- candidates and decision ---
    phash_radius: int = 24  # wide: pHash only proposes candidates
    phash_turned_radius: int = 12  # rotated/mirrored copies, collages, pairs: bits from a turned variant or another view of the query's pHash (0: off)
    resnet_top_k: int = 10
    stage2_max_candidates: int = 8  # ambiguous pairs per image sent to verification (best stage-1 first; 3: crop R@1 0.86, 8: 0.92)
    decision_threshold: float | None = None  # None: the calibration's own threshold
    ambiguous_low: float | None = None  # None: the calibration's band
    ambiguous_high: float | None = None
    calibration_file: str = ""  # local JSON overriding the active calibration

    # --- Airflow schedules (cron or preset; read when the DAG file is parsed) ---
    ingest_schedule: str = "@hourly"
    recalibrate_schedule: str = "@weekly"
    recalibrate_min_labels: int = 20
    review_sample_rate: float = 0.05  # share of decisions in the random audit sample (unbiased precision/recall)
    milvus_pool_slots: int = 1  # 1 for a Milvus Lite file; raise it with a Milvus server
    task_retries: int = 3  # retries of transient failures (S3, Milvus, network); permanent ones fail at once
    task_retry_delay_s: float = 30.0  # first retry delay; doubles each time, at most 5 minutes

    # --- input safety ---
    max_image_pixels: int = 80_000_000
    max_image_bytes: int = 64 * 1024 * 1024
    max_decode_bytes: int = 256 * 1024 * 1024  # memory a decoder may hold for one image (else too_large)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build Settings from ``NDID_*`` variables (and optional explicit overrides)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (used for Airflow Connection overlays and params)."""
        return dataclasses.replace(self, **changes)

    def __post_init__(self) -> None:
        if self.weights_mode not in WEIGHTS_MODES:
            raise SettingsError(f"NDID_WEIGHTS_MODE must be one of {WEIGHTS_MODES}, not {self.weights_mode!r}")
        if self.precision not in PRECISIONS:
            raise SettingsError(f"NDID_PRECISION must be one of {PRECISIONS}, not {self.precision!r}")
        mode = COMPILE_MODES.get(str(self.torch_compile).strip().lower())  # (a bool from Python callers too)
        if mode is None:
            raise SettingsError(f"NDID_TORCH_COMPILE must be auto, true or false, not {self.torch_compile!r}")
        object.__setattr__(self, "torch_compile", mode)
        if self.descriptor not in DESCRIPTORS:
            raise SettingsError(f"NDID_DESCRIPTOR must be one of {DESCRIPTORS}, not {self.descriptor!r}")
        if self.resnet_layer not in RESNET_LAYERS:
            raise SettingsError(f"NDID_RESNET_LAYER must be one of {RESNET_LAYERS}, not {self.resnet_layer!r}")
        if self.resnet_input not in RESNET_INPUTS:
            raise SettingsError(f"NDID_RESNET_INPUT must be one of {RESNET_INPUTS}, not {self.resnet_input!r}")
        if not self.resnet_gem_p >= 1:
            raise SettingsError("NDID_RESNET_GEM_P must be >= 1 (1 = average pooling)")
        for name in ("embed_batch_size", "ingest_batch_size", "resnet_top_k", "milvus_hnsw_ef",
                     "stage2_max_candidates", "whitening_dim", "sift_max_side", "sift_features", "milvus_lite_memtable_mb",
                     "ingest_max_parallel", "max_decode_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"NDID_{name.upper()} must be >= 1")
        if self.closer_look_side and self.closer_look_side < self.sift_max_side:
            raise SettingsError("NDID_CLOSER_LOOK_SIDE must be 0 (off) or >= NDID_SIFT_MAX_SIDE: the window "
                                "is cut from a picture at least as sharp as the one verified")
        if self.task_retries < 0 or self.s3_retries < 0:
            raise SettingsError("NDID_TASK_RETRIES and NDID_S3_RETRIES must be >= 0")
        if "://" in self.milvus_uri and not self.milvus_uri.startswith(("http://", "https://", "tcp://")):
            raise SettingsError(f"NDID_MILVUS_URI must be a Milvus Lite file path or http(s):// / tcp:// "
                                f"address, not {self.milvus_uri!r}")
        if not 0 < self.review_sample_rate <= 1:
            raise SettingsError("NDID_REVIEW_SAMPLE_RATE must be within (0, 1]")
        if not 0 <= self.phash_radius <= 64 or not 0 <= self.phash_turned_radius <= 64:
            raise SettingsError("NDID_PHASH_RADIUS and NDID_PHASH_TURNED_RADIUS must be within 0..64 "
                                "(bits of a 64-bit hash)")
        if not 0 <= self.visual_words_candidates <= 64:
            raise SettingsError("NDID_VISUAL_WORDS_CANDIDATES must be within 0..64 (each one is verified)")
        if not 0 <= self.faint_look_pairs <= 16:
            raise SettingsError("NDID_FAINT_LOOK_PAIRS must be within 0..16 (each one re-reads and describes a picture)")
        if not 0 <= self.visual_words_min_ratio <= 100:
            raise SettingsError("NDID_VISUAL_WORDS_MIN_RATIO must be within 0..100 (0: every words candidate is verified)")
        if not (self.visual_words_band_ratio == 0 or 1 < self.visual_words_band_ratio <= 100):
            raise SettingsError("NDID_VISUAL_WORDS_BAND_RATIO must be 0 (off) or within (1, 100]: a candidate "
                                "beyond the query's 48 nearest by words is at most 1x its background")
        if not 0 <= self.visual_words_max_candidates <= 64:
            raise SettingsError("NDID_VISUAL_WORDS_MAX_CANDIDATES must be within 0..64 (each one is verified)")
        if self.visual_words_lite_max_rows < 0:
            raise SettingsError("NDID_VISUAL_WORDS_LITE_MAX_ROWS must be >= 0 (0 = no limit)")
        if (self.ambiguous_low is None) != (self.ambiguous_high is None):
            raise SettingsError("set both NDID_AMBIGUOUS_LOW and NDID_AMBIGUOUS_HIGH, or neither")
        if (self.ambiguous_low is not None and self.ambiguous_high is not None
                and not 0 <= self.ambiguous_low <= self.ambiguous_high <= 1):
            raise SettingsError("the ambiguous band needs 0 <= low <= high <= 1")
        for prefix_name in ("s3_images_prefix", "s3_decisions_prefix", "s3_calibration_prefix",
                            "s3_labels_prefix", "s3_staging_prefix", "s3_features_prefix"):
            value = getattr(self, prefix_name)
            if value and not value.endswith("/"):
                object.__setattr__(self, prefix_name, value + "/")

    # --- derived values: one place for each ---
    @property
    def untrained(self) -> bool:
        return self.weights_mode == "random"

    @property
    def sift_params(self) -> dict[str, int]:
        """What stored SIFT features and a calibration's inlier weights were made with."""
        return {"max_side": self.sift_max_side, "features": self.sift_features}

    @property
    def resolved_milvus_uri(self) -> str:
        return self.milvus_uri or str(Path(self.state_dir) / "milvus.db")

    @property
    def resolved_model_dir(self) -> Path:
        return Path(self.model_dir) if self.model_dir else Path(self.state_dir) / "models"

    @property
    def descriptor_name(self) -> str:
        """Names the raw descriptor; a whitening (and so a calibration and an index collection) is
        only valid for the descriptor it was fitted on."""
        flip = "-flip" if self.resnet_flip_symmetric else ""
        if self.descriptor == "sscd":
            return f"sscd-disc-mixup-squash288{flip}"
        return f"resnet50-{self.resnet_layer}-gem{self.resnet_gem_p:g}-{self.resnet_input}224{flip}"

    @property
    def images_alias(self) -> str:
        """Stable Milvus alias of the active images collection (for tools and people)."""
        return f"{self.milvus_collection_prefix}_images_{self.weights_mode}"

    def images_collection(self, whitening_version: str) -> str:
        # vectors of random and pretrained encoders, or whitened differently, are incomparable:
        # never share a collection
        return f"{self.images_alias}_{whitening_version.replace('-', '_')}"

    @property
    def raw_collection(self) -> str:
        """Raw (un-whitened) descriptors, one collection per descriptor, shared by its whitenings:
        never loaded for search, only read back to fit and apply a new whitening."""
        import hashlib

        digest = hashlib.sha256(self.descriptor_name.encode()).hexdigest()[:8]
        return f"{self.milvus_collection_prefix}_raw_{self.weights_mode}_{digest}"

    def words_collection(self, vocabulary_version: str) -> str:
        """Visual words of one vocabulary (independent of the encoders' weights and whitening)."""
        return f"{self.milvus_collection_prefix}_words_{vocabulary_version.replace('-', '_')}"

    @property
    def clip_collection(self) -> str:
        return f"{self.milvus_collection_prefix}_clip_{self.weights_mode}"

    def public_dict(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, for logs and reports."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("***" if value else "") if not f.repr else value
        return out


def with_connections(settings: Settings, s3_conn: Any, milvus_conn: Any) -> Settings:
    """The one mapping of Airflow Connections onto Settings, used by the DAG tasks and the NDID pages
    (duck-typed: the engine imports no Airflow). An `aws` Connection gives login/password and extra
    endpoint_url/region_name; a Milvus one host (or extra uri), port, login/password as the token.
    None = not set: the NDID_* values stay."""
    changes: dict[str, Any] = {}
    if s3_conn is not None:
        extra = s3_conn.extra_dejson or {}
        if s3_conn.login:
            changes["s3_access_key"] = s3_conn.login
        if s3_conn.password:
            changes["s3_secret_key"] = s3_conn.password
        if extra.get("endpoint_url"):
            changes["s3_endpoint_url"] = extra["endpoint_url"]
        if extra.get("region_name"):
            changes["s3_region"] = extra["region_name"]
    if milvus_conn is not None:
        uri = (milvus_conn.extra_dejson or {}).get("uri") or milvus_conn.host
        if uri:
            if milvus_conn.port and "://" in uri and uri.count(":") == 1:
                uri = f"{uri}:{milvus_conn.port}"
            changes["milvus_uri"] = uri
        if milvus_conn.password:
            changes["milvus_token"] = (f"{milvus_conn.login}:{milvus_conn.password}" if milvus_conn.login
                                       else milvus_conn.password)
    if changes:
        _log.info("settings from Airflow Connections: %s",
                 sorted(k for k in changes if "key" not in k and "token" not in k))
    return settings.replace(**changes)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    name = ENV_PREFIX + f.name.upper()
    try:
        if kind.startswith("bool"):
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return None if raw.strip() == "" else float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind}") from exc
    return raw


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, type) rows: the README's configuration table is checked against this."""
    rows = []
    defaults = Settings(state_dir="var")
    for f in fields(Settings):
        default = getattr(defaults, f.name)
        shown = "(secret)" if not f.repr else ("" if default is None else str(default))
        rows.append((ENV_PREFIX + f.name.upper(), shown, str(f.type)))
    return rows


# ---------------------------------------------------------------- the local env file
# ``<state_dir>/ndid.env`` holds what the local services and the demo chose (S3 keys made at first
# start, the weights mode): one more source of NDID_* values, read by the DAGs, the pages and the
# CLI, never overriding what the environment already says.

ENV_FILE_NAME = "ndid.env"


def env_file(state_dir: str | Path) -> Path:
    return Path(state_dir) / ENV_FILE_NAME


def load_env_file(state_dir: str | Path, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Read ``<state_dir>/ndid.env`` into ``environ`` without overriding values already set."""
    target: MutableMapping[str, str] = os.environ if environ is None else environ
    path = env_file(state_dir)
    loaded: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            loaded[key] = value
            target.setdefault(key, value)
    return loaded


def set_env_value(state_dir: str | Path, key: str, value: str) -> None:
    """Set one ``KEY=value`` line of ``<state_dir>/ndid.env`` (kept 0600; other lines unchanged)."""
    path = env_file(state_dir)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if not line.startswith(f"{key}=")] + [f"{key}={value}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
