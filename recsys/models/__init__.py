"""Candidate sources behind one interface (see :mod:`recsys.models.base`)."""
