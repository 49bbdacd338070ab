"""`reg diff A B`: what changed between two versions — config, rank/alpha/targets, tensors, metrics."""

from __future__ import annotations

import hashlib
import mmap
from typing import TYPE_CHECKING

from .adapters import WEIGHTS_FILE
from .records import Version
from .weights import read_header

if TYPE_CHECKING:  # a local registry; at run time it is the caller (store.py imports this module)
    from .store import Registry

_SUMMARY_FIELDS = ("base_name", "base_digest", "peft_type", "rank", "alpha", "target_modules", "size_bytes")


def diff_versions(registry: Registry, ref_a: str, ref_b: str) -> dict:
    a, b = registry.resolve(ref_a), registry.resolve(ref_b)
    return {
        "a": a.ref,
        "b": b.ref,
        "same_content": a.manifest_digest == b.manifest_digest,
        "fields": {k: [getattr(a, k), getattr(b, k)] for k in _SUMMARY_FIELDS if getattr(a, k) != getattr(b, k)},
        "config": _dict_diff(a.adapter_config, b.adapter_config),
        "files": _files_diff(a, b),
        "tensors": _tensor_diff(registry, a, b),
        "metrics": _metric_diff(registry, a, b),
    }


def _dict_diff(a: dict, b: dict) -> dict:
    keys = sorted(set(a) | set(b))
    return {k: [a.get(k), b.get(k)] for k in keys if a.get(k) != b.get(k)}


def _files_diff(a: Version, b: Version) -> dict:
    fa, fb = {f.path: f.sha256 for f in a.files}, {f.path: f.sha256 for f in b.files}
    return {
        "added": sorted(set(fb) - set(fa)),
        "removed": sorted(set(fa) - set(fb)),
        "changed": sorted(p for p in set(fa) & set(fb) if fa[p] != fb[p]),
    }


def _tensor_digests(registry: Registry, version: Version) -> dict[str, tuple[list[int], str, str]]:
    entry = next((f for f in version.files if f.path == WEIGHTS_FILE), None)
    if entry is None:
        return {}
    out = {}
    with registry.blobs.local_files({WEIGHTS_FILE: entry.sha256}, version.ref) as local:
        path = local[WEIGHTS_FILE]
        tensors, _, start = read_header(path)
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for name, info in tensors.items():
                digest = hashlib.sha256(mm[start + info.begin : start + info.end]).hexdigest()
                out[name] = (list(info.shape), info.dtype, digest)
    return out


def _tensor_diff(registry: Registry, a: Version, b: Version) -> dict:
    ta, tb = _tensor_digests(registry, a), _tensor_digests(registry, b)
    changed = []
    for name in sorted(set(ta) & set(tb)):
        (sa, da, ha), (sb, db, hb) = ta[name], tb[name]
        if (sa, da, ha) != (sb, db, hb):
            changed.append({"name": name, "shape": [sa, sb], "dtype": [da, db], "same_bytes": ha == hb})
    return {
        "added": sorted(set(tb) - set(ta)),
        "removed": sorted(set(ta) - set(tb)),
        "changed": changed,
        "unchanged": sum(1 for n in set(ta) & set(tb) if ta[n] == tb[n]),
    }


def _metric_diff(registry: Registry, a: Version, b: Version) -> dict:
    def latest(version: Version) -> dict:
        metrics: dict = {}
        for ev in registry.evaluations(version.id):
            metrics.update({f"{ev['name']}.{k}": v for k, v in ev["metrics"].items()})
        return metrics

    ma, mb = latest(a), latest(b)
    out = {}
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key), mb.get(key)
        delta = vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        out[key] = {"a": va, "b": vb, "delta": delta}
    return out
