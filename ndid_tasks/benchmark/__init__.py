"""The benchmark: a Copydays-style folder format, its generator, and accuracy + speed measurement.

Folder format (bring your own, e.g. the real INRIA Copydays):
    refs/               the indexed corpus: originals + distractors
    queries/            attacked copies, plus negative queries that have no duplicate in refs
    ground_truth.csv    query,original,family,attack   (original empty for negatives)

The report prints figures; it never fails on thresholds.

Split by concern: ``generator`` (make a folder), ``evaluation`` (accuracy of every method),
``speed`` (ingest against the bare model), ``report`` (markdown + pictures), ``descriptors``
(the descriptor ablation).
"""

from .descriptors import descriptor_ablation
from .evaluation import METHODS, run_benchmark
from .generator import make_benchmark, read_ground_truth
from .report import markdown, write_report
from .speed import machine

__all__ = ["METHODS", "descriptor_ablation", "machine", "make_benchmark", "markdown", "read_ground_truth",
           "run_benchmark", "write_report"]
