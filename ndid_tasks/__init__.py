"""NDID engine: near-duplicate image detection (plain Python; the Airflow DAGs call into it)."""

__version__ = "0.1.0"
