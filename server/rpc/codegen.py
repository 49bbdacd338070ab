"""Regenerate every gRPC stub from proto/loradock/v1/ (`make proto`).

`inference.proto` -> `server/rpc/` (the inference server's), `registry.proto` and `jobs.proto` -> `registry/remote/rpc/`
(the registry's and its job queue's, so a registry client imports nothing of the server). protoc writes `from
loradock.v1 import X_pb2` (a file's own messages, and those of a proto it imports), which would need a top-level
`loradock` package; the stubs live in those packages, so that import is rewritten to a relative one, and a proto may
import only one whose stubs land in the same folder.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
# proto file (under proto/loradock/v1) -> the package folder its stubs are checked in to
STUBS = {
    "inference.proto": Path(__file__).resolve().parent,
    "registry.proto": ROOT / "registry" / "remote" / "rpc",
    "jobs.proto": ROOT / "registry" / "remote" / "rpc",  # imports registry.proto (JsonObject, Version)
}
_STUB_IMPORT = re.compile(r"^from loradock\.v1 import (\w+)_pb2\b", re.MULTILINE)


def generate(out_root: Path = ROOT) -> list[Path]:
    """Write every stub under `out_root` at its path relative to the repository root; return the paths written."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/struct.proto
    written = []
    for proto, folder in STUBS.items():
        stem = proto.removesuffix(".proto")
        with tempfile.TemporaryDirectory() as tmp:
            code = protoc.main([
                "grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{well_known}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", str(PROTO_DIR / "loradock" / "v1" / proto),
            ])
            if code != 0:
                raise SystemExit(f"protoc failed on {proto} with exit code {code}")
            for name in (f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"):
                text = (Path(tmp) / "loradock" / "v1" / name).read_text()
                text = _STUB_IMPORT.sub(lambda m: _relative_import(proto, m.group(1)), text)
                target = out_root / folder.relative_to(ROOT) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                written.append(target)
    return written


def _relative_import(proto: str, imported_stem: str) -> str:
    """`from . import X_pb2` for a stub of `proto` that imports X's; refused unless X's stubs sit in the same folder."""
    if STUBS.get(f"{imported_stem}.proto") != STUBS[proto]:
        raise SystemExit(f"{proto} imports {imported_stem}.proto, whose stubs are not checked in beside its own ({STUBS[proto]})")
    return f"from . import {imported_stem}_pb2"


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
