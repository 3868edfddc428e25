"""recall.Client: a synchronous client for recalld, speaking proto/recall.proto over ZeroMQ.

The transport, as the C client (clients/client.c) speaks it: one DEALER socket connected
to the daemon's ROUTER; every request is one frame holding a serialized Request with a
fresh id, and every answer one frame holding a Response with that id. Long work streams
several Responses (more=True on all but the last): Progress while a chunk or a score is
computed, one AskResponse per generated token. Answers that carry an id this client is
not waiting for (a request abandoned earlier) are dropped, never mistaken for the current
one.

Time limits: ``connect_timeout`` bounds how long a send waits for a connection to exist
(nothing is queued for an absent peer, so a dead endpoint fails in seconds), ``timeout``
how long each next Response may take. Either raises recall.Timeout.

A Client is not thread-safe: use one per thread. It runs one request at a time; an ask
stream that is still open must be finished or closed before the next request.
"""

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import List

import zmq
from google.protobuf.message import DecodeError

from . import ingest as _ingest
from .errors import InvalidArgument, ProtocolError, Timeout, error_for
from .messages import pb, request, session_options, to_dict

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT = 600.0
DEFAULT_CONNECT_TIMEOUT = 3.0


@dataclass
class Answer:
    """What ask() returns. ``text``: the answer; ``tokens``: the generated token ids, in
    order; ``generated``: how many; ``stop_reason``: "eos", "length" or "stop";
    ``prompt_tokens``: the session's pending tail plus the question, as processed;
    ``prefill_ms`` / ``decode_ms``: the daemon's time for the prompt and for generating;
    ``chat_template``: for chat(), the template the daemon formatted the messages with.
    str(answer) is the text."""
    text: str = ""
    tokens: List[int] = field(default_factory=list)
    generated: int = 0
    stop_reason: str = ""
    prompt_tokens: int = 0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    chat_template: str = ""

    def __str__(self):
        return self.text


class AskStream:
    """The answer of ask(..., stream=True), token by token. Iterating yields each piece of
    text as the daemon sends it (a token's text may be "" when it completes no character
    yet); "".join of the pieces is the whole answer. Once the iteration ends, ``answer``
    holds the Answer (ids, stop reason, timings). close() abandons the rest: the daemon
    finishes the request, and this client drops its late tokens."""

    def __init__(self, client, req_id):
        self._client = client
        self._id = req_id
        self._pending = []
        self._done = False
        self.answer = None
        self._acc = Answer()

    def __iter__(self):
        return self

    def __next__(self):
        while not self._pending:
            if self._done:
                raise StopIteration
            self._step()
        return self._pending.pop(0)

    def _step(self):
        try:
            r = self._client._recv_for([self._id])
            _check_status(r)
            kind = r.WhichOneof("body")
            if kind == "ask":
                a = r.ask
                if a.text:
                    self._acc.text += a.text
                if a.done:
                    self._acc.generated = a.generated
                    self._acc.stop_reason = a.stop_reason
                    self._acc.prompt_tokens = a.prompt_tokens
                    self._acc.prefill_ms = a.prefill_ms
                    self._acc.decode_ms = a.decode_ms
                    self._acc.chat_template = a.chat_template
                    if a.text:
                        self._pending.append(a.text)
                else:
                    self._acc.tokens.append(a.token)
                    self._pending.append(a.text)
            elif kind not in ("progress", None):
                raise ProtocolError("unexpected %s answer to Ask" % kind)
            if not r.more:
                if not (kind == "ask" and r.ask.done):
                    raise ProtocolError("the Ask stream ended without its final message")
                self._finish()
                self.answer = self._acc
        except BaseException:
            self._finish()
            raise

    def _finish(self):
        self._done = True
        if self._client._stream is self:
            self._client._stream = None

    def close(self):
        """Stops reading; the rest of the answer is dropped when it arrives."""
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_status(r):
    if r.HasField("status") and r.status.code != 0:
        raise error_for(r.status.code, r.status.message)


def _check_int(name, v, lo, hi):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InvalidArgument(-1, "%s must be a whole number in [%d, %d], not %r"
                              % (name, lo, hi, v), False)
    return v


def _check_float(name, v, lo, hi):
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InvalidArgument(-1, "%s must be a number in [%g, %g], not %r" % (name, lo, hi, v),
                              False)
    return float(v)


def _check_name(name):
    if not isinstance(name, str) or not name:
        raise InvalidArgument(-1, "a session name must be a non-empty string, not %r" % (name,),
                              False)
    return name


def _print_score_progress(done, total):
    sys.stderr.write("\rscoring %d/%d" % (done, total))
    sys.stderr.flush()


def read_key_file(path, secret):
    """(public, secret) Z85 keys from a key file in ZeroMQ's certificate form, as written
    by `recall keygen` (clients/keys.h); a directory means its client.key (secret) or
    client.pub. A file holding a secret key must not be readable by group or others."""
    if os.path.isdir(path):
        path = os.path.join(path, "client.key" if secret else "client.pub")
    mode = os.stat(path).st_mode & 0o777
    if secret and mode & 0o077:
        raise ValueError("secret key file %s has mode %04o: it must be readable by its owner "
                         "only (chmod 600 %s)" % (path, mode, path))
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            for name in ("public-key", "secret-key"):
                if line.startswith(name) and line.count('"') == 2:
                    keys[name] = line.split('"')[1]
            if len(line) == 40 and "public-key" not in keys:
                keys["public-key"] = line
    if secret and "secret-key" not in keys:
        raise ValueError("key file %s holds no secret-key line" % path)
    if secret:
        keys["public-key"] = zmq.curve_public(keys["secret-key"].encode()).decode()
    if "public-key" not in keys:
        raise ValueError("key file %s holds no public key" % path)
    return keys["public-key"], keys.get("secret-key")


class Client:
    """A connection to recalld.

    endpoint: "tcp://HOST:PORT" or "ipc://PATH"; None means $RECALL_CONNECT, else
    tcp://127.0.0.1:5555, as for the `recall` CLI. timeout: seconds to wait for each next
    answer (None: forever; a long ingest chunk or answer is normal, and streams send
    progress meanwhile). connect_timeout: seconds a send waits for the connection.

    curve_keys, server_key: CURVE authentication, as the CLI's --curve-keys and
    --server-key: this client's key file (or the directory `recall keygen` wrote) and the
    daemon's public key file; None means $RECALL_CURVE_KEYS and $RECALL_SERVER_KEY. A daemon
    that refuses the key looks like one that does not answer (recall.Timeout).

    ZeroMQ connects in the background: an unreachable daemon is noticed by the first
    request (recall.Timeout), not here. Use it as a context manager, or call close().
    """

    def __init__(self, endpoint=None, timeout=DEFAULT_TIMEOUT,
                 connect_timeout=DEFAULT_CONNECT_TIMEOUT, curve_keys=None, server_key=None):
        if endpoint is None:
            endpoint = os.environ.get("RECALL_CONNECT") or DEFAULT_ENDPOINT
        if not isinstance(endpoint, str) or not endpoint.startswith(("tcp://", "ipc://")):
            raise InvalidArgument(-1, "bad endpoint %r: expected tcp://HOST:PORT or ipc://PATH"
                                  % (endpoint,), False)
        if timeout is not None and not timeout > 0:
            raise InvalidArgument(-1, "timeout must be > 0 seconds (or None for no limit)", False)
        if not connect_timeout > 0:
            raise InvalidArgument(-1, "connect_timeout must be > 0 seconds", False)
        self.endpoint = endpoint
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._stream = None
        # Ids start at a random point below 2^48, so that two clients (or this program run
        # twice against a daemon still holding an old answer) do not reuse each other's.
        self._next_id = random.SystemRandom().randrange(1, 1 << 48)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        # LINGER 0: closing never waits on unsent frames to a dead peer. IMMEDIATE: queue
        # only to a completed connection, so a send to nobody times out instead of sitting.
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)
        self._sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        curve_keys = curve_keys or os.environ.get("RECALL_CURVE_KEYS") or None
        server_key = server_key or os.environ.get("RECALL_SERVER_KEY") or None
        if curve_keys or server_key:
            if not (curve_keys and server_key):
                self.close()
                raise InvalidArgument(-1, "CURVE needs both curve_keys (this client's key "
                                      "file) and server_key (the daemon's public key file)",
                                      False)
            try:
                public, secret = read_key_file(curve_keys, secret=True)
                server, _ = read_key_file(server_key, secret=False)
            except (OSError, ValueError, zmq.ZMQError) as e:
                self.close()
                raise InvalidArgument(-1, str(e), False) from None
            self._sock.curve_publickey = public.encode()
            self._sock.curve_secretkey = secret.encode()
            self._sock.curve_serverkey = server.encode()
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as e:
            self.close()
            raise InvalidArgument(-1, "cannot connect to '%s': %s" % (endpoint, e), False) from None

    # ---- life cycle --------------------------------------------------------------------

    def close(self):
        """Closes the socket at once (answers still on their way are dropped). Idempotent."""
        if getattr(self, "_sock", None) is not None:
            self._sock.close(linger=0)
            self._sock = None
        if getattr(self, "_ctx", None) is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- transport ---------------------------------------------------------------------

    def _send(self, req):
        """Stamps a fresh id on req, sends it and returns the id."""
        if self._sock is None:
            raise InvalidArgument(-1, "the client is closed", False)
        if self._stream is not None:
            raise InvalidArgument(
                -1, "an ask stream is still open on this client: read it to the end or close() "
                "it before the next request", False)
        req.id = self._next_id
        self._next_id += 1
        self._sock.setsockopt(zmq.SNDTIMEO, max(1, int(self.connect_timeout * 1000)))
        try:
            self._sock.send(req.SerializeToString())
        except zmq.Again:
            raise Timeout("cannot connect to %s within %g s (is recalld running?)"
                          % (self.endpoint, self.connect_timeout)) from None
        return req.id

    def _recv_for(self, ids):
        """The next Response whose id is in ids; others (stale answers) are dropped. The
        time limit is for a matching answer: stale ones do not extend it."""
        if self._sock is None:
            raise InvalidArgument(-1, "the client is closed", False)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            wait = None
            if deadline is not None:
                wait = max(0, int((deadline - time.monotonic()) * 1000) + 1)
            if not self._sock.poll(wait, zmq.POLLIN):
                raise Timeout("no answer from %s within %g s (is recalld running?)"
                              % (self.endpoint, self.timeout))
            frames = self._sock.recv_multipart(zmq.NOBLOCK)
            try:
                r = pb.Response.FromString(frames[0])
            except DecodeError:
                raise ProtocolError("malformed response from %s (not a recall.Response)"
                                    % self.endpoint) from None
            if r.id in ids:
                return r

    def _call(self, req, want, on_more=None):
        """One request, one final answer whose body must be `want`; intermediate answers
        (more=True) go to on_more. Raises the daemon's error as its exception."""
        rid = self._send(req)
        while True:
            r = self._recv_for([rid])
            _check_status(r)
            if r.more:
                if on_more is not None:
                    on_more(r)
                continue
            kind = r.WhichOneof("body")
            if kind != want:
                raise ProtocolError("unexpected answer to %s: %s"
                                    % (req.WhichOneof("body"), kind or "no body"))
            return getattr(r, want)

    def _simple(self, kind, want, **fields):
        try:
            req = request(kind, **fields)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(-1, "bad argument for %s: %s" % (kind, e), False) from None
        return self._call(req, want)

    # ---- sessions ----------------------------------------------------------------------

    def create(self, name, if_not_exists=False, **options):
        """Creates session `name` with the given session options (keyword arguments named
        as recall.proto's SessionOptions fields: window, positional, group, neighbor,
        chunk_size, local_window, memory, k, knn_nlist (or nlist), knn_nprobe (or nprobe),
        last_context, mem_dtype, rope_scaling, rope_factor, gpu_memory_budget (bytes, "8G"
        or "none"), ...; omitted ones take the daemon's defaults).

        Returns the session's info (as info()) plus "created": False when if_not_exists
        was given and the session already existed (it keeps its own options). Raises
        AlreadyExists without if_not_exists, InvalidArgument for options the daemon
        refuses."""
        so = session_options(options)
        r = self._simple("create_session", "create_session", session=_check_name(name),
                         options=so, if_not_exists=bool(if_not_exists))
        out = to_dict(r.info) if r.HasField("info") else {}
        out["created"] = r.created
        return out

    def info(self, name):
        """Everything the daemon knows about one session, as a dict of recall.proto's
        SessionInfo fields: name, options (a dict of the resolved SessionOptions), tokens,
        windows, pending_tokens, memory_tokens, memory_bytes_device/host/disk, last_seq,
        created_unix, ingest_chunks, tier ("gpu", "host", "disk" or "unavailable") and
        problem ("" unless its stored data is damaged). Raises NotFound."""
        r = self._simple("session_info", "session_info", session=_check_name(name))
        if not r.HasField("info"):
            raise ProtocolError("the daemon sent no session info")
        return to_dict(r.info)

    def sessions(self):
        """Every session, as a list of info() dicts (damaged ones included, with their
        problem set)."""
        return [to_dict(s) for s in self._simple("list_sessions", "list_sessions").sessions]

    def drop(self, name):
        """Deletes session `name` and its memory from the daemon and its disk; no undo.
        Raises NotFound for an unknown session."""
        self._simple("drop_session", "drop_session", session=_check_name(name))

    def verify(self, name):
        """Reads every stored memory row of the session back and checks its checksum, and
        the token count against the catalogue. Returns a dict: ok, windows, bad_windows,
        bytes_read, tokens, problem ("" when ok), seconds. A damaged session is reported
        with ok False, not raised; a session that passes is available again."""
        return to_dict(self._simple("verify_session", "verify_session",
                                    session=_check_name(name)))

    # ---- the daemon --------------------------------------------------------------------

    def health(self):
        """A dict: ok, version, model (a one-line description of the checkpoint), device.
        Answered at once whatever the daemon is doing: a cheap liveness check."""
        return to_dict(self._simple("health", "health"))

    def stats(self):
        """The daemon's counters as a dict of recall.proto's StatsResponse fields: uptime_s,
        sessions, requests, errors, tokens_ingested, tokens_generated, memory_* bytes,
        device, model, budgets, sessions per tier, loads and evictions."""
        return to_dict(self._simple("stats", "stats"))

    def tokenize(self, text, add_bos=False):
        """The ids of `text` under the daemon's tokenizer (BOS first with add_bos)."""
        if not isinstance(text, str):
            raise InvalidArgument(-1, "tokenize takes a str", False)
        return list(self._simple("tokenize", "tokenize", text=text, add_bos=bool(add_bos)).tokens)

    # ---- work --------------------------------------------------------------------------

    def ingest(self, name, source, progress=False, create=True, chunk_bytes=_ingest.CHUNK_BYTES,
               **options):
        """Streams text into session `name` and returns the number of tokens it added.

        source: a str (the text itself), bytes (UTF-8 text), a path as a pathlib.Path (or
        any os.PathLike; a plain str is text, never a file name), an open file object, or
        a list or tuple of these, ingested in order. The text is cut as `recall ingest`
        cuts it: each source separately, into chunks of at most chunk_bytes bytes that end
        after a newline where the text has one (a longer line is cut between characters).
        Files are read through once first: one that is missing or not UTF-8 stops the call
        before anything is sent. Text with NUL characters is refused (the wire's strings
        would end there).

        The session is created first when create is True and it does not exist, with the
        given session options (as create()); an existing one keeps its own. With
        create=False an unknown session raises NotFound.

        Flow control is the daemon's: at most as many chunks are unacknowledged as its
        last acknowledgement allowed (one until the first), chunks refused as busy are
        resent in order after a growing pause, and an acknowledged chunk is never resent.
        An acknowledgement means the chunk and the windows it completed are on disk.

        progress: True prints a progress line on stderr; a callable is called with an
        IngestProgress after every acknowledgement, at every progress report inside a
        large chunk, and once more at the end with final=True; its counts never decrease.

        On failure the exception (the daemon's, with its message) carries ``ingested``:
        an IngestProgress of what was acknowledged, which is durable."""
        _check_name(name)
        chunk_bytes = _check_int("chunk_bytes", chunk_bytes, 16, 256 << 20)
        feed = _ingest.text_feed(source, chunk_bytes)
        return self._ingest_feed(name, feed, progress, create, options)

    def ingest_tokens(self, name, ids, progress=False, create=True,
                      chunk_tokens=_ingest.CHUNK_TOKENS, **options):
        """As ingest(), for a sequence of token ids sent as they are (no BOS is added):
        for clients that build exact token sequences. Returns the tokens added."""
        _check_name(name)
        chunk_tokens = _check_int("chunk_tokens", chunk_tokens, 1, 1 << 26)
        feed = _ingest.token_feed(ids, chunk_tokens)
        return self._ingest_feed(name, feed, progress, create, options)

    def _ingest_feed(self, name, feed, progress, create, options):
        if create:
            i = self.create(name, if_not_exists=True, **options)
            if options and not i.get("created"):
                warnings.warn("session '%s' exists; it keeps its own options, not %s"
                              % (name, ", ".join("%s=%r" % kv for kv in options.items())),
                              stacklevel=3)
        elif options:
            raise InvalidArgument(-1, "session options go with create=True (an existing "
                                  "session keeps the options it was created with)", False)
        else:
            i = self.info(name)
        if progress is True:
            progress = _ingest.print_progress
        elif progress is False or progress is None:
            progress = None
        elif not callable(progress):
            raise InvalidArgument(-1, "progress must be True, False or a callable", False)
        st = _ingest.IngestProgress(session=name, last_seq=i.get("last_seq", 0),
                                    tokens=i.get("tokens", 0), windows=i.get("windows", 0),
                                    bytes_total=feed.total)
        _ingest.pump(self, feed, st, progress)
        return st.tokens_added

    def ask(self, name, prompt, stream=False, max_tokens=None, temperature=None, top_p=None,
            seed=None, stop=None, append=False, ignore_eos=False):
        """Asks a question about session `name`: the question is processed after the
        session's text, with the memory of all of it.

        max_tokens: stop after that many generated tokens (None: the daemon's default);
        temperature: 0 or None is greedy and deterministic; top_p: nucleus sampling (None,
        0 or 1: off); seed: the sampling seed; stop: a string or list of strings (up to 16)
        that end the answer early: the daemon stops generating at the first one and the
        answer ends before it (stop_reason "stop"; checked here too, for a daemon that
        predates them); append: add the question and the answer (up to a stop string) to
        the session; ignore_eos: generate past the end-of-sequence token.

        Returns an Answer (str() of it is the text), or with stream=True an AskStream that
        yields the text of each token as it arrives. Raises NotFound for an unknown
        session, InvalidArgument for bad arguments."""
        _check_name(name)
        if not isinstance(prompt, str):
            raise InvalidArgument(-1, "the prompt must be a str", False)
        if "\0" in prompt:
            raise InvalidArgument(-1, "the prompt contains a NUL character", False)
        fields = dict(session=name, question=prompt,
                      max_tokens=_check_int("max_tokens", max_tokens, 1, (1 << 32) - 1),
                      temperature=_check_float("temperature", temperature, 0, 100),
                      top_p=_check_float("top_p", top_p, 0, 1),
                      seed=_check_int("seed", seed, 0, (1 << 64) - 1),
                      append=bool(append), ignore_eos=bool(ignore_eos))
        stops = _stop_list(stop)
        fields["stop"] = stops
        try:
            prompt.encode("utf-8")
            req = request("ask", **fields)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(-1, "bad argument for ask: %s" % e, False) from None
        s = AskStream(self, self._send(req))
        self._stream = s
        if stops:
            s = _StopStream(s, stops)
        if stream:
            return s
        for _ in s:
            pass
        return s.answer

    def chat(self, name, messages, stream=False, max_tokens=None, temperature=None, top_p=None,
             seed=None, stop=None, append=False, ignore_eos=False):
        """A chat about session `name`, as `recall ask --chat` and /v1/chat/completions:
        messages is a list of {"role": ..., "content": ...} dicts (or (role, content) pairs),
        roles "system", "user", "assistant"; the daemon formats them with the checkpoint's
        chat template (recalld --chat-template) and adds the template's stop strings.
        The other arguments and the result are ask()'s; Answer.chat_template names the
        template used. Raises InvalidArgument for messages the template refuses (llama2:
        roles that do not alternate user/assistant)."""
        _check_name(name)
        msgs = []
        try:
            for m in messages:
                role, content = (m["role"], m["content"]) if isinstance(m, dict) else m
                if not isinstance(role, str) or not role or not isinstance(content, str):
                    raise TypeError("role and content must be strings")
                msgs.append(pb.ChatMessage(role=role, content=content))
        except (TypeError, KeyError, ValueError) as e:
            raise InvalidArgument(-1, "messages must be a list of {role, content}: %s" % e,
                                  False) from None
        if not msgs:
            raise InvalidArgument(-1, "a chat needs at least one message", False)
        stops = _stop_list(stop)
        try:
            req = request("ask", session=name, messages=msgs, stop=stops,
                          max_tokens=_check_int("max_tokens", max_tokens, 1, (1 << 32) - 1),
                          temperature=_check_float("temperature", temperature, 0, 100),
                          top_p=_check_float("top_p", top_p, 0, 1),
                          seed=_check_int("seed", seed, 0, (1 << 64) - 1),
                          append=bool(append), ignore_eos=bool(ignore_eos))
        except (TypeError, ValueError) as e:
            raise InvalidArgument(-1, "bad argument for chat: %s" % e, False) from None
        s = AskStream(self, self._send(req))
        self._stream = s
        if stops:
            s = _StopStream(s, stops)
        if stream:
            return s
        for _ in s:
            pass
        return s.answer

    def ppl(self, session=None, text=None, tokens=None, add_bos=True, logprobs=False,
            progress=None, **options):
        """Perplexity, as `recall ppl`: of a session's tokens (session=NAME), or of a text
        (a str, or a file as a pathlib.Path) or a list of token ids scored from an empty
        memory with the given session options (as create()'s). add_bos puts BOS before a
        text (as the CLI does). Exactly one of session, text, tokens.

        Returns a dict: tokens (in the scored sequence), scored (tokens - 1), nll (sum of
        -log p), ppl (exp(nll / scored)), and logprobs (a list of scored floats,
        logprobs[i] = log p(token[i+1] | tokens[..i])) when logprobs=True.
        progress: True prints "scoring done/total" on stderr; a callable gets (done, total)."""
        given = [x is not None for x in (session, text, tokens)]
        if sum(given) != 1:
            raise InvalidArgument(-1, "ppl takes a session, or text=, or tokens=: exactly one",
                                  False)
        fields = dict(want_logprobs=bool(logprobs))
        if session is not None:
            if options:
                raise InvalidArgument(-1, "session options apply to text= or tokens= only (a "
                                      "session keeps the options it was created with)", False)
            fields["session"] = _check_name(session)
        else:
            fields["options"] = session_options(options)
            if text is not None:
                fields["text"] = _ingest.read_text(text)
                fields["add_bos"] = bool(add_bos)
            else:
                fields["tokens"] = _ingest.check_ids(tokens)
        if progress is True:
            progress = _print_score_progress
        elif progress is not None and progress is not False and not callable(progress):
            raise InvalidArgument(-1, "progress must be True, False, None or a callable", False)

        def on_more(r):
            if progress and r.WhichOneof("body") == "progress" and r.progress.total:
                progress(r.progress.done, r.progress.total)
        try:
            req = request("score", **fields)
        except (TypeError, ValueError) as e:
            raise InvalidArgument(-1, "bad argument for ppl: %s" % e, False) from None
        try:
            out = to_dict(self._call(req, "score", on_more))
        finally:
            if progress is _print_score_progress:
                sys.stderr.write("\n")
        if not logprobs:
            del out["logprobs"]
        return out


def _stop_list(stop):
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    stop = list(stop)
    if not all(isinstance(s, str) and s for s in stop):
        raise InvalidArgument(-1, "stop must be a non-empty string or a list of them", False)
    return stop


class _StopStream:
    """An AskStream cut before the first stop string: text is held back while it could be
    the start of one, so nothing from a stop string on is ever yielded. Once cut, the
    daemon's remaining tokens are dropped (it finishes the request on its side)."""

    def __init__(self, inner, stops):
        self._inner = inner
        self._stops = stops
        self._held = ""      # received, not yet yielded: may be the start of a stop string
        self._yielded = ""
        self._out = []
        self._ended = False
        self.answer = None

    def __iter__(self):
        return self

    def _emit(self, s):
        if s:
            self._out.append(s)
            self._yielded += s

    def __next__(self):
        while not self._out:
            if self._ended:
                raise StopIteration
            try:
                self._held += next(self._inner)
            except StopIteration:
                self._ended = True
                self._emit(self._held)
                self.answer = self._inner.answer
                continue
            found = [i for i in (self._held.find(s) for s in self._stops) if i >= 0]
            if found:
                self._inner.close()
                self._ended = True
                self._emit(self._held[:min(found)])
                got = self._inner._acc
                self.answer = Answer(text=self._yielded, tokens=list(got.tokens),
                                     generated=len(got.tokens), stop_reason="stop")
                continue
            keep = max((n for s in self._stops for n in range(1, min(len(s), len(self._held) + 1))
                        if s.startswith(self._held[-n:])), default=0)
            self._emit(self._held[:len(self._held) - keep])
            self._held = self._held[len(self._held) - keep:]
        return self._out.pop(0)

    def close(self):
        self._inner.close()
        self._ended = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
