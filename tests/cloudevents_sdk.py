"""Parse Kafka messages with the official CloudEvents SDK for Python (PyPI `cloudevents`).

Used by tests/cloudevents.rs: one JSON object per input line —
{"mode": "binary" | "structured", "key": str, "value": str, "headers": [[name, value], ...]} —
and one JSON object per output line with the event's attributes as the SDK parsed them
(`time` as microseconds since the epoch), its data, and whether the SDK's own mode detection
(`from_kafka_event`) read the same event.
"""

import json
import sys
from datetime import datetime, timezone

from cloudevents.core.bindings.kafka import (
    KafkaMessage,
    from_binary_event,
    from_kafka_event,
    from_structured_event,
)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def plain(attrs):
    out = {}
    for k, v in attrs.items():
        if isinstance(v, datetime):
            delta = v - EPOCH
            v = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
        out[k] = v
    return out


for line in sys.stdin:
    m = json.loads(line)
    msg = KafkaMessage(
        headers={k: v.encode("utf-8") for k, v in m["headers"]},
        key=m["key"].encode("utf-8"),
        value=m["value"].encode("utf-8"),
    )
    parse = from_binary_event if m["mode"] == "binary" else from_structured_event
    event = parse(msg)
    detected = from_kafka_event(msg)
    print(
        json.dumps(
            {
                "attributes": plain(event.get_attributes()),
                "data": event.get_data(),
                "detected_same": plain(detected.get_attributes()) == plain(event.get_attributes())
                and detected.get_data() == event.get_data(),
            }
        )
    )
