"""The recommendation service: BentoML endpoints, canary router, cache, online features, logs.

One thread per math library, set before torch or BLAS load: a request ranks ~200 rows, and
intra-op threads only add spin-waits (20x the ranking time under load on 2 cores).
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
