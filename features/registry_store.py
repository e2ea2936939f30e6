"""A Feast file registry that a killed process cannot tear.

Feast's ``FileRegistryStore`` rewrites the registry file in place (open with truncation, then
write): a process killed between the two leaves an empty or partial file, and every later
``FeatureStore`` call fails to parse it. :class:`AtomicFileRegistryStore` writes the new
registry to a temporary file beside it, fsyncs it and renames it over the old one
(``recsys.lake.atomic_write_bytes``), so readers (the service, the skew check, a concurrent
materialization) and a process started after a crash see either the old registry or the new
one, whole.

A registry that cannot be parsed (a disk fault, a file copied over it) is said in one line;
``recsys features apply`` sets it aside and registers the definitions again
(:func:`set_aside_unparsable`): the registry holds nothing but what ``definitions.py`` declares
and the materialization intervals, which the next materialization writes again.

Both feature_store.yaml files and :func:`features.store.repo_config` name it as
``registry_store_type`` (:data:`features.spec.REGISTRY_STORE_TYPE`).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from feast.infra.registry.file import FileRegistryStore
from feast.protos.feast.core.Registry_pb2 import Registry as RegistryProto
from feast.utils import _utc_now

from recsys.errors import RecsysError
from recsys.lake import atomic_write_bytes


class AtomicFileRegistryStore(FileRegistryStore):
    """``FileRegistryStore`` whose writes are write-to-temporary, fsync, rename, and whose
    reads of a file that is not a registry say what to do (Feast raised protobuf's
    ``DecodeError``, an internal error of every features command)."""

    def get_registry_proto(self) -> RegistryProto:
        from google.protobuf.message import DecodeError

        try:
            return super().get_registry_proto()
        except DecodeError as exc:
            raise RecsysError(
                f"the Feast registry {self._filepath} cannot be parsed ({exc}): `recsys "
                "features apply` rebuilds it from features/definitions.py (this file is kept "
                "aside)"
            ) from None

    def _write_registry(self, registry_proto: RegistryProto) -> None:
        # The same stamps as FileRegistryStore._write_registry, which this replaces.
        registry_proto.version_id = str(uuid.uuid4())
        registry_proto.last_updated.FromDatetime(_utc_now())
        atomic_write_bytes(Path(self._filepath), registry_proto.SerializeToString())


def set_aside_unparsable(path: Path) -> Path | None:
    """Move a registry file that is not a registry to ``<name>.unreadable-<time>`` beside it;
    returns where, or None when ``path`` is missing or parses."""
    from google.protobuf.message import DecodeError

    if not path.is_file():
        return None
    try:
        RegistryProto().ParseFromString(path.read_bytes())
        return None
    except DecodeError:
        target = path.with_name(f"{path.name}.unreadable-{_utc_now():%Y%m%dT%H%M%S%f}")
        path.replace(target)
        return target
