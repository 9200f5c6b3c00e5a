"""Schema versions of HWIR documents and the migrations between them (policy in docs/ir.md).

``schema_version`` is MAJOR.MINOR, independent of the package version. A minor bump only adds
optional fields, so a reader loads any minor of its own major (fields it does not know are ignored,
with a warning); a major bump changes meaning, so a newer major is refused. Older documents are
brought forward by the registered migrations, one version step at a time, before validation.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

from .errors import fail

Migration = Callable[[dict], dict]
MIGRATIONS: dict[str, tuple[str, Migration]] = {}  # from-version -> (to-version, function)


def migration(source: str, target: str):
    """Register `function` as the migration of documents at `source` to `target`."""
    def register(function: Migration) -> Migration:
        MIGRATIONS[source] = (target, function)
        return function
    return register


@migration("0.9", "1.0")
def rename_op_and_weight_fields(document: dict) -> dict:
    """0.9 called a node's kind ``op`` and kept the weights reference in two top-level fields."""
    document = copy.deepcopy(document)
    for node in document.get("nodes") or ():
        if isinstance(node, dict) and "op" in node:
            node["kind"] = node.pop("op")
    document["weights"] = {"file": document.pop("weights_file", None),
                           "sha256": document.pop("weights_sha256", None)}
    document["schema_version"] = "1.0"
    return document


def parse_version(value, where: str) -> tuple[int, int]:
    """(major, minor) of a schema_version written "1.0" (an unquoted 1.0 is read the same)."""
    major, dot, minor = str(value).partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise fail(where, None, f"schema_version {value!r} is not MAJOR.MINOR",
                   "write it as a quoted string, e.g. schema_version: '1.0'")
    return int(major), int(minor)


def migrate(document: dict, where: str, current: str) -> dict:
    """The document brought to the `current` schema, or IRError if that cannot be done."""
    if "schema_version" not in document:
        raise fail(where, None, "no schema_version", "give the .yaml written by save_ir")
    version, target = parse_version(document["schema_version"], where), parse_version(current, where)
    if version[0] > target[0]:
        raise fail(where, None, f"schema_version {document['schema_version']} is newer than this "
                   f"echoforge reads ({target[0]}.x)", "upgrade echoforge")
    while version < target:
        key = f"{version[0]}.{version[1]}"
        if key not in MIGRATIONS:
            if version[0] == target[0]:
                break  # an older minor of our major: compatible by policy
            raise fail(where, None, f"schema_version {key} has no migration to {current}",
                       "re-export the model with this echoforge")
        document = MIGRATIONS[key][1](document)
        version = parse_version(document["schema_version"], where)
    if version > target:
        warnings.warn(f"{where}: schema_version {document['schema_version']} is newer than {current}; "
                      "fields this echoforge does not know are ignored", stacklevel=3)
    return document
