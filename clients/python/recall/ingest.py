"""The client side of recalld's Ingest protocol, as clients/ingest.c speaks it.

chunks    Text is cut into chunks of at most chunk_bytes bytes, each ending just after a
          newline when the text allows it; a single line longer than that is cut at a
          UTF-8 character boundary (clients/chunker.c's rule, so a session fed by Python
          holds the same chunks, hence the same tokens, as one fed by `recall ingest`).
          Each source is chunked on its own. Token ids are cut every chunk_tokens ids.
seq       Each chunk carries seq, one more than the previous; the first is the session's
          last acknowledged seq + 1, so a session grows in order and a chunk counts once.
credit    At most `credit` chunks are unacknowledged at a time; one until the daemon's
          first acknowledgement says how many it accepts.
retries   A chunk refused as BUSY, or refused for a gap behind a refused one, is sent again
          in order once nothing is in flight, after a growing pause (20 ms, 40 ms, ... then
          200 ms); 200 such rounds without an acknowledgement give up. A first send
          answered as a duplicate means another client wrote that seq: stop, not lose text.
"""

import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

from .errors import Busy, InvalidArgument, NotFound, ProtocolError, RecallError, error_for
from .messages import request

CHUNK_BYTES = 64 * 1024     # clients/ingest.h RECALL_INGEST_DEFAULT_CHUNK_BYTES
CHUNK_TOKENS = 16384        # RECALL_INGEST_DEFAULT_CHUNK_TOKENS
MAX_WINDOW = 256            # more than any credit the daemon grants is worth
MAX_BUSY_ROUNDS = 200

CODE_BUSY = -9
CODE_SEQUENCE = -10


@dataclass
class IngestProgress:
    """Where an ingest stands. session; last_seq: the highest acknowledged chunk; tokens
    and windows: the session's, as of that acknowledgement; tokens_added and chunks_acked:
    this call's; bytes_done: bytes acknowledged plus the estimated part of a chunk being
    computed (4 per id for token ids); bytes_total: the sources' size when known, else
    None; final: True on the last call, after everything was acknowledged."""
    session: str
    last_seq: int = 0
    tokens: int = 0
    windows: int = 0
    tokens_added: int = 0
    chunks_acked: int = 0
    bytes_done: float = 0.0
    bytes_total: Optional[int] = None
    final: bool = False


def chunk_split(buf, n, max_bytes, eof):
    """Length of the next chunk of buf[:n] (clients/chunker.c recall_chunk_split): 0 when
    more bytes are needed (not eof and n < max_bytes), else 1..max_bytes."""
    if n <= max_bytes:
        if eof:
            return n
        if n < max_bytes:
            return 0
    nl = buf.rfind(b"\n", 0, max_bytes)
    if nl >= 0:
        return nl + 1
    # One line longer than max_bytes: cut before the last character if it does not fit
    # whole. Its lead byte is among the last 4 bytes; invalid input may have none.
    p = max_bytes
    while p > 0 and p + 4 > max_bytes and (buf[p - 1] & 0xC0) == 0x80:
        p -= 1
    if p == 0:
        return max_bytes
    lead = buf[p - 1]
    clen = (1 if lead < 0x80 else 2 if lead & 0xE0 == 0xC0 else 3 if lead & 0xF0 == 0xE0
            else 4 if lead & 0xF8 == 0xF0 else 1)
    if (p - 1) + clen <= max_bytes or p - 1 == 0:
        return max_bytes
    return p - 1


def iter_chunks(f, max_bytes):
    """(offset, bytes) of each chunk of binary stream f, read max_bytes at a time."""
    buf = bytearray()
    eof = False
    offset = 0
    while True:
        k = chunk_split(buf, len(buf), max_bytes, eof)
        while k == 0 and not eof:
            data = f.read(max_bytes - len(buf))
            if isinstance(data, str):  # a file opened in text mode
                data = data.encode("utf-8")
            if not data:
                eof = True
            else:
                buf += data
            k = chunk_split(buf, len(buf), max_bytes, eof)
        if k == 0:
            return
        yield offset, bytes(buf[:k])
        del buf[:k]
        offset += k


def utf8_text(data, label, offset=0):
    """data (bytes) as str when it is UTF-8 without NUL (the wire's strings would end at
    one); else InvalidArgument naming label and the offset of the first bad byte."""
    try:
        s = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(-1, "%s: not UTF-8 text (bad byte at offset %d)"
                              % (label, offset + e.start), False) from None
    z = s.find("\0")
    if z >= 0:
        raise InvalidArgument(-1, "%s: not UTF-8 text (bad byte at offset %d)"
                              % (label, offset + len(s[:z].encode("utf-8"))), False)
    return s


def _as_bytes(text, label):
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgument(-1, "%s: not UTF-8 text (unpaired surrogate at character %d)"
                              % (label, e.start), False) from None


class _Chunk:
    __slots__ = ("seq", "req_id", "text", "ids", "nbytes", "sends")

    def __init__(self, text=None, ids=None, nbytes=0):
        self.seq = 0
        self.req_id = None   # None: not awaiting an answer (to be sent again)
        self.text, self.ids, self.nbytes, self.sends = text, ids, nbytes, 0


class _Feed:
    """Chunks one after another (an iterator of _Chunk) and the bytes expected in all."""

    def __init__(self, chunks, total):
        self.chunks, self.total = chunks, total


def _check_file(path, max_bytes):
    """A file is read through once before anything is sent: a missing or non-UTF-8 file
    late in the list must not leave the session half fed."""
    try:
        if os.path.isdir(path):
            raise InvalidArgument(-1, "%s is a directory" % path, False)
        with open(path, "rb") as f:
            for off, data in iter_chunks(f, max_bytes):
                utf8_text(data, path, off)
            return f.tell()
    except OSError as e:
        raise NotFound(-4, "cannot read %s: %s" % (path, e.strerror or e), False) from None


def text_feed(source, max_bytes):
    """A _Feed of the chunks of source (see Client.ingest for what a source may be)."""
    items = list(source) if isinstance(source, (list, tuple)) else [source]
    if not items:
        raise InvalidArgument(-1, "nothing to ingest: the list of sources is empty", False)
    total = 0
    for it in items:
        if isinstance(it, str):
            size = len(_as_bytes(it, "the text"))
        elif isinstance(it, (bytes, bytearray, memoryview)):
            size = len(it)
        elif isinstance(it, os.PathLike):
            size = _check_file(os.fspath(it), max_bytes)
        elif hasattr(it, "read"):
            size = None      # a stream: its size is unknown and it is checked as it goes
        else:
            raise InvalidArgument(
                -1, "cannot ingest a %s: give text (str or bytes), a pathlib.Path, a file "
                "object, or a list of them" % type(it).__name__, False)
        total = None if total is None or size is None else total + size

    def chunks():
        for it in items:
            if isinstance(it, str):
                label, f, opened = "the text", io.BytesIO(_as_bytes(it, "the text")), False
            elif isinstance(it, (bytes, bytearray, memoryview)):
                label, f, opened = "the bytes", io.BytesIO(bytes(it)), False
            elif isinstance(it, os.PathLike):
                label, opened = os.fspath(it), True
                try:
                    f = open(label, "rb")
                except OSError as e:
                    raise NotFound(-4, "cannot read %s: %s" % (label, e.strerror), False) \
                        from None
            else:
                label, f, opened = getattr(it, "name", "the file"), it, False
            try:
                for off, data in iter_chunks(f, max_bytes):
                    yield _Chunk(text=utf8_text(data, label, off), nbytes=len(data))
            finally:
                if opened:
                    f.close()
    return _Feed(chunks(), total)


def check_ids(ids):
    """ids as a list of ints that fit an int32 (the daemon checks the vocabulary)."""
    try:
        out = [int(x) for x in ids]
    except (TypeError, ValueError):
        raise InvalidArgument(-1, "token ids must be a sequence of ints", False) from None
    if any(not -(1 << 31) <= x < (1 << 31) for x in out):
        raise InvalidArgument(-1, "a token id does not fit an int32", False)
    return out


def token_feed(ids, per_chunk):
    ids = check_ids(ids)
    if not ids:
        raise InvalidArgument(-1, "nothing to ingest: no token ids", False)
    return _Feed((_Chunk(ids=ids[i:i + per_chunk], nbytes=4 * len(ids[i:i + per_chunk]))
                  for i in range(0, len(ids), per_chunk)), 4 * len(ids))


def read_text(text):
    """A text to score: a str as is, or the contents of a pathlib.Path (UTF-8, no NUL)."""
    if isinstance(text, os.PathLike):
        p = os.fspath(text)
        try:
            with open(p, "rb") as f:
                data = f.read()
        except OSError as e:
            raise NotFound(-4, "cannot read %s: %s" % (p, e.strerror), False) from None
        return utf8_text(data, p)
    if not isinstance(text, str):
        raise InvalidArgument(-1, "text must be a str or a pathlib.Path", False)
    utf8_text(_as_bytes(text, "the text"), "the text")
    return text


def print_progress(p):
    """progress=True: one line on stderr, redrawn in place."""
    done = p.bytes_done / 1048576
    tot = "" if p.bytes_total is None else " / %.1f MiB" % (p.bytes_total / 1048576)
    sys.stderr.write("\ringest %s: %.1f MiB%s, %d tokens%s" % (
        p.session, done, tot, p.tokens_added, "\n" if p.final else ""))
    sys.stderr.flush()


def _send(client, session, k):
    req = request("ingest", session=session, seq=k.seq, text=k.text, tokens=k.ids)
    k.sends += 1
    k.req_id = client._send(req)


def pump(client, feed, st, on_progress):
    """Sends every chunk of feed into session st.session and waits for each one's
    acknowledgement, updating st (an IngestProgress filled from the session's info) as
    they come. Any exception carries ``ingested``: a copy of st as of the failure."""
    shown = [0.0]

    def report(done, final=False):
        # The estimate inside a chunk may run ahead of the next acknowledgement's count;
        # what the caller sees never goes back.
        shown[0] = max(shown[0], done)
        st.bytes_done, st.final = shown[0], final
        if on_progress is not None:
            on_progress(IngestProgress(**st.__dict__))

    try:
        _pump(client, feed, st, report)
    except RecallError as e:
        e.ingested = IngestProgress(**st.__dict__)
        raise


def _pump(client, feed, st, report):
    session = st.session
    win = []                 # chunks sent and not yet acknowledged, in seq order
    credit, busy_rounds = 1, 0
    next_seq = st.last_seq + 1
    ended = False
    acked_bytes = 0.0
    while True:
        # Fill the window with new chunks, unless refused ones wait to be sent again: they
        # go first, so the daemon sees the seqs in order.
        while len(win) < credit and len(win) < MAX_WINDOW and not ended:
            if any(k.req_id is None for k in win):
                break
            k = next(feed.chunks, None)
            if k is None:
                ended = True
                break
            k.seq = next_seq
            next_seq += 1
            win.append(k)
            _send(client, session, k)
        if not win:
            break
        awaited = [k.req_id for k in win if k.req_id is not None]
        if not awaited:      # everything in the window was refused: pause, resend in order
            busy_rounds += 1
            if busy_rounds > MAX_BUSY_ROUNDS:
                raise Busy(CODE_BUSY, "the daemon stayed busy; gave up at chunk %d of %s"
                           % (win[0].seq, session), False)
            time.sleep(0.02 * busy_rounds if busy_rounds < 10 else 0.2)
            for k in win[:credit]:
                _send(client, session, k)
            continue
        r = client._recv_for(awaited)
        k = next(c for c in win if c.req_id == r.id)
        code = r.status.code if r.HasField("status") else 0
        if code == CODE_BUSY or (code == CODE_SEQUENCE and k.seq > win[0].seq):
            # Not taken: send again later. A gap error behind a refused chunk is the daemon
            # seeing our pipeline out of order, not a real conflict.
            k.req_id = None
            if code == CODE_BUSY and credit > 1:
                credit = max(len(win) - 1, 1)
            continue
        if code:
            e = error_for(code, r.status.message)
            e.seq = k.seq
            raise e
        kind = r.WhichOneof("body")
        if r.more:           # progress inside a large chunk
            if kind == "progress" and r.progress.total > 0:
                report(acked_bytes + k.nbytes * r.progress.done / r.progress.total)
            continue
        if kind != "ingest":
            raise ProtocolError("unexpected %s answer to an ingest chunk" % (kind or "empty"))
        ack = r.ingest
        if ack.duplicate and k.sends == 1:
            raise RecallError(CODE_SEQUENCE,
                              "chunk %d of session '%s' was already written by another client; "
                              "stopping (ingest into one session from one client at a time)"
                              % (k.seq, session), False)
        if k.ids is not None and not ack.duplicate and ack.tokens_added != len(k.ids):
            raise ProtocolError("the daemon did not take chunk %d of session '%s' as sent"
                                % (k.seq, session))
        if ack.seq > st.last_seq:
            st.last_seq, st.tokens, st.windows = ack.seq, ack.tokens, ack.windows
        if not ack.duplicate:
            st.tokens_added += ack.tokens_added
        st.chunks_acked += 1
        acked_bytes += k.nbytes
        if ack.credit > 0:
            credit = min(ack.credit, MAX_WINDOW)
        busy_rounds = 0
        win.remove(k)
        report(acked_bytes)
    report(acked_bytes, final=True)
