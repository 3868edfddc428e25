"""Builds the recall package, generating recall/recall_pb2.py from proto/recall.proto.

The message module is generated at build time, never kept in the tree: the schema is
shared with the daemon and the C client and changes with them, and a copy here could go
stale. protoc is Debian's protobuf-compiler ($PROTOC to use another); the schema is found
at ../../proto/recall.proto from this directory (the repository's layout, which pip's
in-tree build keeps), or at $RECALL_PROTO.

Metadata is in pyproject.toml; this file only adds the generation step to build_py.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def find_proto():
    path = os.environ.get("RECALL_PROTO") or os.path.join(HERE, "..", "..", "proto", "recall.proto")
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise SystemExit("recall: cannot find recall.proto at %s; build from the repository "
                         "(pip install --no-build-isolation ./clients/python) or set "
                         "RECALL_PROTO" % path)
    return path


def generate(out_dir):
    """Runs protoc --python_out for recall.proto into out_dir (recall_pb2.py)."""
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    if not protoc:
        raise SystemExit("recall: protoc not found; install Debian's protobuf-compiler "
                         "(or set PROTOC)")
    proto = find_proto()
    os.makedirs(out_dir, exist_ok=True)
    subprocess.run([protoc, "-I", os.path.dirname(proto), "--python_out", out_dir,
                    os.path.basename(proto)], check=True)
    if not os.path.isfile(os.path.join(out_dir, "recall_pb2.py")):
        raise SystemExit("recall: protoc wrote no recall_pb2.py into %s" % out_dir)


class BuildWithProto(build_py):
    def run(self):
        super().run()
        inplace = getattr(self, "inplace", False) or getattr(self, "editable_mode", False)
        generate(os.path.join(HERE, "recall") if inplace else
                 os.path.join(self.build_lib, "recall"))

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [
            os.path.join(self.build_lib, "recall", "recall_pb2.py")]


setup(cmdclass={"build_py": BuildWithProto})
