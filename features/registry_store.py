"""A Feast file registry that a killed process cannot tear.

Feast's ``FileRegistryStore`` rewrites the registry file in place (open with truncation, then
write): a process killed between the two leaves an empty or partial file, and every later
``FeatureStore`` call fails to parse it. :class:`AtomicFileRegistryStore` writes the new
registry to a temporary file beside it, fsyncs it and renames it over the old one
(``recsys.lake.atomic_write_bytes``), so readers (the service, the skew check, a concurrent
materialization) and a process started after a crash see either the old registry or the new
one, whole.

Both feature_store.yaml files and :func:`features.store.repo_config` name it as
``registry_store_type`` (:data:`features.spec.REGISTRY_STORE_TYPE`).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

from recsys.lake import atomic_write_bytes


class AtomicFileRegistryStore(FileRegistryStore):
    """``FileRegistryStore`` whose writes are write-to-temporary, fsync, rename."""

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        # The same stamps as FileRegistryStore._write_registry, which this replaces.
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        atomic_write_bytes(Path(self._filepath), registry_proto.SerializeToString())
