"""The Python side of the JSON comparison in tests/benches/throughput.rs.

A confluent-kafka consumer doing what the json-router example does: parse
each value as a JSON object, add "routed_by": "json-router", route it by its
"priority" field ("high" to the high topic, anything else to the default
topic) and serialise it again. Delivery is at least once, as in the event
bus's consumer: outputs are produced for a poll of up to 500 messages, the
producer is flushed, and only then are the offsets stored.

argv: bootstrap input_topic output_topic count
Both routes go to output_topic, so the bench can count outputs on one
topic. A value that is not a JSON object is skipped and counted.
"""
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer

bootstrap, source, target, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
high_topic = default_topic = target

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "python-json-" + uuid.uuid4().hex,
    "auto.offset.reset": "earliest",
    "enable.auto.offset.store": False,
})
producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
})
consumer.subscribe([source])

acknowledged = 0
rejected = 0


def on_delivery(error, _message):
    global acknowledged
    if error is None:
        acknowledged += 1


while acknowledged + rejected < expected:
    batch = consumer.consume(500, 0.5)
    last = {}
    for message in batch:
        if message.error():
            continue
        try:
            body = json.loads(message.value())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            rejected += 1
        else:
            topic = high_topic if body.get("priority") == "high" else default_topic
            body["routed_by"] = "json-router"
            value = json.dumps(body, separators=(",", ":")).encode()
            while True:
                try:
                    producer.produce(topic, key=message.key(), value=value,
                                     headers=message.headers(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        last[message.partition()] = message
    if batch:
        producer.flush(30)
        for message in last.values():
            consumer.store_offsets(message)
consumer.close()
