"""The smallest useful Python handler: upper-cases each value and forwards it.
Exercised by tests/tests/polyglot.rs.

Upper-casing is ASCII-only and works on the bytes (``bytes.upper``), so any
payload, binary included, passes through unharmed. The key and headers are
kept; a message without a value yields an output without a value.

Route config:
- ``output_topic``: where outputs go (default ``<input topic>.out``).
"""

import sluice_guest
from sluice_guest import Message, Output


@sluice_guest.handler
def handle(msg: Message) -> Output:
    topic = sluice_guest.config("output_topic") or msg.topic + ".out"
    value = None if msg.value is None else msg.value.upper()
    return Output(topic, value, key=msg.key, headers=msg.headers)


# componentize-py exports the class named `Handler` of the app module.
Handler = sluice_guest.Handler
