"""A Python handler that fails on request: the value is an instruction.

- ``ok:T``: one output ``T`` to ``<topic>.out``
- ``permanent`` / ``retry``: raises PermanentError / RetryableError
- ``raise``: raises a ValueError the handler does not catch
- ``bad-return``: returns a str instead of an Output
- ``loop``: never returns
- ``oom``: allocates until the memory limit stops it
- ``recurse``: recurses without end
- ``log``: logs ``logged <offset>`` at info level, no output
- ``headers``: one output whose value is header ``trace`` and whose key is the value of config ``k``
- anything else: passed on to ``<topic>.out``

Exercised by tests/tests/polyglot.rs.
"""

import sluice_guest
from sluice_guest import Message, Output, PermanentError, RetryableError


def recurse(n):
    return recurse(n + 1) + 1


@sluice_guest.handler
def handle(msg: Message):
    value = msg.text()
    out = msg.topic + ".out"
    if value.startswith("ok:"):
        return Output(out, value[3:])
    if value == "permanent":
        raise PermanentError("asked to fail for good")
    if value == "retry":
        raise RetryableError(f"asked to fail, attempt {msg.attempt}")
    if value == "raise":
        raise ValueError("asked to raise")
    if value == "bad-return":
        return "not an output"
    if value == "loop":
        while True:
            pass
    if value == "oom":
        hoard = []
        while True:
            hoard.append(bytearray(1 << 20))
    if value == "recurse":
        return Output(out, str(recurse(0)))
    if value == "log":
        sluice_guest.info(f"logged {msg.offset}")
        return None
    if value == "headers":
        return Output(out, msg.header("trace"), key=sluice_guest.config("k", "no-k"))
    return Output(out, msg.value, key=msg.key)


Handler = sluice_guest.Handler
