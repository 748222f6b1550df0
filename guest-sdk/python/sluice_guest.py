"""Helpers for Sluice handlers written in Python.

A handler is a module with a function decorated with :func:`handler`, built
with ``componentize-py`` against Sluice's ``wit/`` folder, world ``plugin``
(``scripts/build-polyglot`` does it; the README shows it step by step)::

    import sluice_guest
    from sluice_guest import Message, Output

    @sluice_guest.handler
    def handle(msg: Message) -> Output:
        return Output(sluice_guest.config("output_topic", msg.topic + ".out"), msg.text().upper())

    # componentize-py exports the class named `Handler` of the app module.
    Handler = sluice_guest.Handler

What ``handle`` may return: one :class:`Output`, a list (or any iterable) of
them, or ``None`` for no output.

Errors: raise :class:`PermanentError` for a message that can never succeed
(Sluice dead-letters it) and :class:`RetryableError` for a passing condition
(Sluice retries it with backoff). Any other exception that escapes ``handle``
is a permanent error whose reason names the exception's type, its message and
the line it was raised at (the traceback is logged at debug level).
``MemoryError`` is the exception: it is let through, so the call traps and
Sluice reports ``MemoryLimitExceeded``, as it does for a handler in any other
language that outgrows its route's ``memory_limit_mb``.
"""

import json as _json
import traceback as _traceback

from componentize_py_types import Err as _Err
from wit_world import exports as _exports
from wit_world.exports import handler as _wit
from wit_world.imports import host as _host

__all__ = [
    "Handler",
    "Message",
    "Output",
    "PermanentError",
    "RetryableError",
    "config",
    "debug",
    "error",
    "handler",
    "info",
    "trace",
    "warn",
]


class PermanentError(Exception):
    """The message itself is bad: retrying cannot help, Sluice dead-letters it."""


class RetryableError(Exception):
    """A passing condition (a dependency is down): Sluice delivers the message again."""


class Message:
    """One consumed Kafka message.

    Attributes are those of the contract: ``topic``, ``partition``,
    ``offset``, ``timestamp`` (ms since the epoch, or ``None``), ``key`` and
    ``value`` (``bytes`` or ``None``), ``headers`` (a list of ``(key,
    value)`` pairs, value as ``bytes``) and ``attempt`` (1 on first delivery).
    """

    __slots__ = ("topic", "partition", "offset", "timestamp", "key", "value", "headers", "attempt")

    def __init__(self, msg):
        self.topic = msg.topic
        self.partition = msg.partition
        self.offset = msg.offset
        self.timestamp = msg.timestamp
        self.key = msg.key
        self.value = msg.value
        self.headers = [(h.key, h.value) for h in msg.headers]
        self.attempt = msg.attempt

    def text(self) -> str:
        """The value as UTF-8 text. No value or invalid UTF-8 is a PermanentError."""
        return _as_text("value", self.value)

    def key_text(self) -> str:
        """The key as UTF-8 text. No key or invalid UTF-8 is a PermanentError."""
        return _as_text("key", self.key)

    def json(self):
        """The value parsed as JSON. No value or invalid JSON is a PermanentError
        quoting the parser's line and column."""
        text = self.text()
        try:
            return _json.loads(text)
        except ValueError as e:
            raise PermanentError(f"message value is not JSON: {e}") from None

    def header(self, name: str):
        """The value (bytes) of header ``name``; the last one when it repeats, as
        Kafka's ``lastHeader``; ``None`` when absent."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def header_text(self, name: str):
        """:meth:`header` as text; ``None`` when absent or not UTF-8."""
        value = self.header(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None


class Output:
    """A record for Sluice to produce. ``value`` and ``key`` are ``bytes``,
    ``str`` (sent as UTF-8) or ``None``; ``headers`` are ``(key, value)``
    pairs. The topic must be one of the route's ``output_topics``.

    ``Output("t", "v").with_key("k").with_header("h", b"1")`` chains.
    """

    __slots__ = ("topic", "value", "key", "headers")

    def __init__(self, topic: str, value=None, *, key=None, headers=()):
        self.topic = topic
        self.value = value
        self.key = key
        self.headers = list(headers)

    @classmethod
    def json(cls, topic: str, document, *, key=None, headers=()):
        """An output whose value is ``document`` as compact JSON."""
        text = _json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        return cls(topic, text, key=key, headers=headers)

    def with_key(self, key):
        self.key = key
        return self

    def with_header(self, key: str, value):
        self.headers.append((key, value))
        return self

    def _to_wit(self):
        if not isinstance(self.topic, str):
            raise TypeError(f"an output topic must be a str, not {type(self.topic).__name__}")
        headers = [_wit.Header(k, _as_bytes(f"header {k!r}", v)) for k, v in self.headers]
        return _wit.Output(
            self.topic,
            _as_bytes("key", self.key),
            _as_bytes("value", self.value),
            headers,
        )


_config = {}


def config(key: str, default=None):
    """The value of ``key`` in the route's ``[routes.config]`` table, or
    ``default``. The host is asked once per key: the table is fixed for the
    life of an instance."""
    try:
        value = _config[key]
    except KeyError:
        value = _config[key] = _host.config(key)
    return default if value is None else value


def trace(message: str):
    _host.log(_host.Level.TRACE, message)


def debug(message: str):
    _host.log(_host.Level.DEBUG, message)


def info(message: str):
    _host.log(_host.Level.INFO, message)


def warn(message: str):
    _host.log(_host.Level.WARN, message)


def error(message: str):
    _host.log(_host.Level.ERROR, message)


_handle = None


def handler(function):
    """Registers ``function(msg: Message)`` as the module's handler."""
    global _handle
    _handle = function
    return function


class Handler(_exports.Handler):
    """The export componentize-py looks for: runs the registered function and
    maps its result and exceptions onto the contract."""

    def handle(self, msg):
        if _handle is None:
            raise _Err(_wit.HandlerError_Permanent("no function is registered with @sluice_guest.handler"))
        try:
            return _outputs(_handle(Message(msg)))
        except PermanentError as e:
            raise _Err(_wit.HandlerError_Permanent(str(e))) from None
        except RetryableError as e:
            raise _Err(_wit.HandlerError_Retryable(str(e))) from None
        except (MemoryError, _Err):
            raise
        except Exception as e:  # noqa: BLE001 - every other exception is the handler's fault
            raise _Err(_wit.HandlerError_Permanent(_describe(e))) from None


def _outputs(result):
    if result is None:
        return []
    if isinstance(result, Output):
        return [result._to_wit()]
    if isinstance(result, (str, bytes)):
        raise TypeError(f"handle returned a {type(result).__name__}; return Output(topic, value) instead")
    outputs = []
    for item in result:
        if not isinstance(item, Output):
            raise TypeError(f"handle returned a {type(item).__name__} among its outputs; expected Output")
        outputs.append(item._to_wit())
    return outputs


def _describe(e: Exception) -> str:
    """``uncaught ValueError at app.py:12: reason``, with the traceback logged."""
    frames = _traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        frame = frames[-1]
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    reason = str(e)
    _host.log(_host.Level.DEBUG, "".join(_traceback.format_exception(e)))
    return f"uncaught {type(e).__name__}{where}" + (f": {reason}" if reason else "")


def _as_text(what, data):
    if data is None:
        raise PermanentError(f"message has no {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PermanentError(f"message {what} is not UTF-8: invalid byte at {e.start}") from None


def _as_bytes(what, data):
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"an output {what} must be bytes, str or None, not {type(data).__name__}")
