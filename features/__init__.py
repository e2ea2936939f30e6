"""The Feast feature repository and the feature computation it serves (see compute.py)."""
