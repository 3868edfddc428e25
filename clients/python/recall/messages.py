"""Between the protobuf messages of proto/recall.proto and plain Python values.

Nothing here lists the schema's fields by hand: replies become dicts by walking each
message's descriptor, and session options are checked against SessionOptions' own field
list, so a field added to recall.proto shows up here as soon as the package is rebuilt.
"""

import re

from google.protobuf.descriptor import FieldDescriptor

from .errors import InvalidArgument

try:
    from . import recall_pb2 as pb
except ImportError as e:  # the module is generated when the package is built
    raise ImportError(
        "recall.recall_pb2 is missing: it is generated from proto/recall.proto by protoc when "
        "the package is built; install the package (pip install --no-build-isolation "
        "clients/python) or run 'python3 setup.py build_py --inplace' in clients/python"
    ) from e

# proto/recall.proto, SessionOptions.gpu_memory_budget: this value asks for no limit.
BUDGET_NONE = (1 << 64) - 1

# The CLI's flag names that differ from the field names (recall ingest --nlist ...).
OPTION_ALIASES = {"nlist": "knn_nlist", "nprobe": "knn_nprobe"}

_INT_RANGES = {
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1),
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
}


def to_dict(msg):
    """A message as a dict of every field by its proto name, defaults included (proto3 does
    not tell "0" from "not set", so neither does this). Nested messages become dicts (None
    when absent), repeated fields lists; 64-bit integers stay exact Python ints."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        v = getattr(msg, f.name)
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.label == FieldDescriptor.LABEL_REPEATED:
                v = [to_dict(x) for x in v]
            else:
                v = to_dict(v) if msg.HasField(f.name) else None
        elif f.label == FieldDescriptor.LABEL_REPEATED:
            v = list(v)
        out[f.name] = v
    return out


_SIZE = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)


def parse_size(s):
    """Bytes in a size given as people write it, as recalld and the CLI read it: "4096",
    "512M", "1.5G", "8GiB" (K, M, G, T are powers of 1024). Raises InvalidArgument."""
    m = _SIZE.match(s.strip())
    if not m or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise InvalidArgument(-1, "'%s' is not a size such as 512M, 8G, 1.5G or 4096" % s, False)
    scale = 1024 ** " kmgt".index(m.group(2).lower() or " ")
    n = int(float(m.group(1)) * scale)
    if n == 0 and float(m.group(1)) > 0:
        raise InvalidArgument(-1, "size '%s' is less than a byte" % s, False)
    return n


def _budget(v):
    """gpu_memory_budget as the CLI takes it: bytes, a size string, or "none"/0 for no limit."""
    if isinstance(v, str):
        v = 0 if v.strip().lower() == "none" else parse_size(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise InvalidArgument(
            -1, "gpu_memory_budget must be a number of bytes, a size such as '8G', or 'none'",
            False)
    return v if v else BUDGET_NONE


def session_options(opts):
    """A SessionOptions message from keyword arguments named as its fields (window=4096,
    memory="knn", k=128, ...; nlist/nprobe are accepted for knn_nlist/knn_nprobe). Only
    types are checked here; which values make sense is the daemon's call, and it says so
    with an InvalidArgument of its own. None means "not given"."""
    so = pb.SessionOptions()
    fields = so.DESCRIPTOR.fields_by_name
    for key, value in opts.items():
        if value is None:
            continue
        name = OPTION_ALIASES.get(key, key)
        f = fields.get(name)
        if f is None or f.type == FieldDescriptor.TYPE_MESSAGE:
            raise InvalidArgument(
                -1, "unknown session option '%s'; the options are: %s"
                % (key, ", ".join(sorted(fields))), False)
        if name == "gpu_memory_budget":
            value = _budget(value)
        try:
            if f.type == FieldDescriptor.TYPE_BOOL:
                if not isinstance(value, bool):
                    raise TypeError("a bool")
            elif f.type in _INT_RANGES:
                lo, hi = _INT_RANGES[f.type]
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError("an int")
                if not lo <= value <= hi:
                    raise TypeError("an int in [%d, %d]" % (lo, hi))
            elif f.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError("a number")
                value = float(value)
            elif f.type == FieldDescriptor.TYPE_STRING:
                if not isinstance(value, str):
                    raise TypeError("a string")
            setattr(so, name, value)
        except TypeError as e:
            raise InvalidArgument(-1, "session option %s=%r: must be %s"
                                  % (key, value, e.args[0] if e.args else "another type"),
                                  False) from None
    return so


def request(kind, **fields):
    """A Request whose body is the `kind` field (its oneof name, such as "ask") with these
    fields set; an empty body is still present, so the daemon knows the kind."""
    req = pb.Request()
    body = getattr(req, kind)
    body.SetInParent()
    for k, v in fields.items():
        if v is None:
            continue
        if isinstance(v, pb.SessionOptions):
            getattr(body, k).CopyFrom(v)
        elif isinstance(v, (list, tuple)):
            getattr(body, k).extend(v)
        else:
            setattr(body, k, v)
    return req
