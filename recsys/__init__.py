"""Self-healing recommender: the library (config, contracts, data, models, registry, CLI).

This package must not import Prefect or BentoML at module top level: flows/ and serving/ wrap it.
"""

__version__ = "0.1.0"
