"""Names the release unit records: the feature service the ranker is trained against.

Kept for ``recsys/train.py``; the definitions live in :mod:`features.spec` (no Feast import).
"""

from features.spec import FEATURE_SERVICE_NAME, FEATURE_SERVICE_VERSION

__all__ = ["FEATURE_SERVICE_NAME", "FEATURE_SERVICE_VERSION"]
