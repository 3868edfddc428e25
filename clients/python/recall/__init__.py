"""recall — a Python client for recalld, the daemon that keeps long LongLLaMA sessions.

    import pathlib, recall

    with recall.Client() as c:                      # tcp://127.0.0.1:5555 or $RECALL_CONNECT
        c.ingest("notes", pathlib.Path("app.log"), progress=True)
        print(c.ask("notes", "When did the disk first fill up?").text)
        for piece in c.ask("notes", "Summarise the outage.", stream=True, max_tokens=200):
            print(piece, end="", flush=True)

Client (recall/client.py) has one method per request of proto/recall.proto: create,
ingest, ask, ppl, sessions, info, drop, verify, health, stats, tokenize. Failures raise
RecallError and its subclasses (recall/errors.py), carrying the daemon's status code and
message. The message classes (recall.recall_pb2) are generated from proto/recall.proto by
protoc when the package is built.
"""

from .client import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, Answer,
                     AskStream, Client)
from .errors import (AlreadyExists, Busy, InvalidArgument, LimitExceeded, NotFound,
                     ProtocolError, RecallError, Timeout, Unavailable, UnknownSession)
from .ingest import IngestProgress

__version__ = "0.1.0"

__all__ = [
    "Client", "Answer", "AskStream", "IngestProgress",
    "RecallError", "InvalidArgument", "NotFound", "UnknownSession", "AlreadyExists",
    "LimitExceeded", "Busy", "Unavailable", "ProtocolError", "Timeout",
    "DEFAULT_ENDPOINT", "DEFAULT_TIMEOUT", "DEFAULT_CONNECT_TIMEOUT",
]
