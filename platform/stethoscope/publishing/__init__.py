"""Publishing: the bundle store, loaded bundles and their scoring, and publishing trained runs (DESIGN.md
data-flow steps 8 and 9; docs/publish.md).

- :mod:`.store` — where bundles live (a local folder or any pyarrow-filesystem URI such as ``s3://``): names,
  layout, ``CURRENT``, manifests (format versions 1 and 2), verified reads, listing, atomic writes.
- :mod:`.bundle` — :func:`load_bundle` and :class:`Bundle` (scoring clips with every member and the ensemble), and
  which published scope serves a request (:func:`scope_for`, :func:`resolve_scope`).
- :mod:`.publish` — :func:`publish_runs`: the best ensemble per machine type on validation, written with
  :func:`write_bundle`.
- :mod:`.bulk` — offline bulk scoring (``jobs/score.py``, docs/score.md): every WAV under a folder or bucket, routed
  to its bundle and scored on a Ray Data actor pool; not imported here (import ``stethoscope.publishing.bulk``).

Which group (``id_XX`` / ``section_XX``) a clip or a request belongs to is named in :mod:`stethoscope.data.labels`.
"""

from stethoscope.publishing.bundle import Bundle, Member, load_bundle, resolve_scope, scope_for
from stethoscope.publishing.publish import (
    PublishResult,
    RunInfo,
    discover_runs,
    format_publish_table,
    publish_runs,
    read_run,
    write_bundle,
)
from stethoscope.publishing.store import (
    FORMAT_VERSION,
    SCOPE_ALL,
    BundleNotFound,
    RegistryError,
    current_version,
    list_bundles,
    machine_types,
    published_scopes,
    read_manifest,
    safe_name,
    summarize_manifest,
    validate_name,
)

__all__ = [
    "Bundle",
    "BundleNotFound",
    "FORMAT_VERSION",
    "Member",
    "PublishResult",
    "RegistryError",
    "RunInfo",
    "SCOPE_ALL",
    "current_version",
    "discover_runs",
    "format_publish_table",
    "list_bundles",
    "load_bundle",
    "machine_types",
    "publish_runs",
    "published_scopes",
    "read_manifest",
    "read_run",
    "resolve_scope",
    "safe_name",
    "scope_for",
    "summarize_manifest",
    "validate_name",
    "write_bundle",
]
