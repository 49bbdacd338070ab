"""Regenerate the gRPC stubs in this folder from proto/loradock/v1/loradock.proto (`make proto`).

protoc writes `from loradock.v1 import loradock_pb2`, which would need a top-level `loradock`
package; the stubs live in `server.rpc`, so that import is rewritten to a relative one.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
PROTO = PROTO_DIR / "loradock" / "v1" / "loradock.proto"
OUT = Path(__file__).resolve().parent
GENERATED = ("loradock_pb2.py", "loradock_pb2.pyi", "loradock_pb2_grpc.py")


def generate(out_dir: Path = OUT) -> list[Path]:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main([
            "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}", str(PROTO),
        ])
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        written = []
        for name in GENERATED:
            text = (Path(tmp) / "loradock" / "v1" / name).read_text()
            text = text.replace("from loradock.v1 import loradock_pb2", "from . import loradock_pb2")
            target = out_dir / name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
