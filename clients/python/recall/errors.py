"""Exceptions raised by the recall client.

Every failure is a :class:`RecallError`. When the daemon refused a request, ``code`` is
the daemon's ``Status.code`` (one of recall's negative status codes, ``common/rc.h``) and
``message`` is the daemon's own sentence, unchanged; ``remote`` is True. Failures found on
this side (a bad argument, no answer in time, a frame that does not decode) use the same
codes with ``remote`` False, so one ``except`` clause can handle both::

    try:
        client.ask("notes", "What failed first?")
    except recall.NotFound as e:        # no session "notes" (code -4)
        print("no such session:", e.message)
    except recall.Timeout:              # recalld not running, or too slow
        ...

The subclasses exist for the codes a program usually wants to tell apart; any other
code is a plain RecallError whose ``name`` says which ("LIMIT", "SEQUENCE", ...).
"""

# The project's status codes (common/rc.h). They travel on the wire in Status.code and
# are never renumbered, so a table here cannot drift from the daemon's meaning.
CODE_NAMES = {
    0: "OK",
    -1: "INVALID",
    -2: "NOMEM",
    -3: "IO",
    -4: "NOT_FOUND",
    -5: "EXISTS",
    -6: "FORMAT",
    -7: "LIMIT",
    -8: "UNSUPPORTED",
    -9: "BUSY",
    -10: "SEQUENCE",
    -11: "SHUTDOWN",
    -12: "DEVICE",
    -13: "INTERNAL",
    -14: "UNAVAILABLE",
}


class RecallError(Exception):
    """A request failed. ``code``: recall's status code (negative int); ``message``: a
    sentence for a person; ``remote``: True when the daemon said so, False when the
    failure was found by this client."""

    def __init__(self, code, message, remote=True):
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.remote = remote

    @property
    def name(self):
        """The code's stable short name, as ``recall --json`` prints it ("NOT_FOUND")."""
        return CODE_NAMES.get(self.code, "UNKNOWN")

    def __repr__(self):
        return "%s(%d, %r)" % (type(self).__name__, self.code, self.message)


class InvalidArgument(RecallError, ValueError):
    """Code -1: a bad argument, from this client's own checks or the daemon's."""


class NotFound(RecallError, LookupError):
    """Code -4: no session of that name (or, locally, a file that cannot be opened)."""


UnknownSession = NotFound


class AlreadyExists(RecallError):
    """Code -5: create() of a session that exists (pass if_not_exists=True to accept it)."""


class LimitExceeded(RecallError):
    """Code -7: over a configured limit of the daemon (chunk size, budget, sessions)."""


class Busy(RecallError):
    """Code -9: the daemon's queue is full; try again later. ingest() retries by itself."""


class Unavailable(RecallError):
    """Code -14: the session's stored data is damaged; ``message`` says which part.
    ``Client.verify`` checks it again; ``Client.drop`` removes it."""


class ProtocolError(RecallError):
    """Code -6 (FORMAT), raised locally: an answer that is not what the protocol allows
    (a frame that does not decode, a body of the wrong kind)."""

    def __init__(self, message):
        super().__init__(-6, message, remote=False)


class Timeout(RecallError, TimeoutError):
    """Code -3 (IO), raised locally: the daemon could not be reached within the connect
    timeout, or sent nothing within the receive timeout. Usually recalld is not running
    at that endpoint; a very long request may also need a larger ``timeout``."""

    def __init__(self, message):
        super().__init__(-3, message, remote=False)


_BY_CODE = {
    -1: InvalidArgument,
    -4: NotFound,
    -5: AlreadyExists,
    -7: LimitExceeded,
    -9: Busy,
    -14: Unavailable,
}


def error_for(code, message, remote=True):
    """The exception for a status code: its subclass when it has one, else RecallError.
    An empty message is replaced by the code's name so that str(e) is never blank."""
    if not message:
        message = "%s (code %d)" % (CODE_NAMES.get(code, "unknown error"), code)
    return _BY_CODE.get(code, RecallError)(code, message, remote)
