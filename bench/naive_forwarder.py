"""The baseline a user could write in an afternoon: paho (public API), json per message,
per-topic 1 s tumbling windows by arrival time, one JSON message per window upstream.

    python bench/naive_forwarder.py LOCAL_PORT UPSTREAM_PORT COUNT_FILE

It writes the number of readings it processed to COUNT_FILE every 0.2 s.
"""

from __future__ import annotations

import json
import sys
import threading
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def main() -> int:
    local_port, up_port, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    up = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive-up")
    up.connect("127.0.0.1", up_port)
    up.loop_start()
    windows: dict[str, list[float]] = {}  # topic -> [second, count, min, max, sum]
    processed = [0]

    def on_message(client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
            value = float(doc["value"]) if isinstance(doc, dict) else float(doc)
        except (ValueError, KeyError, TypeError):
            return
        now = int(time.time())
        w = windows.get(msg.topic)
        if w is None or w[0] != now:
            if w is not None:
                up.publish(
                    "naive/" + msg.topic,
                    json.dumps(
                        {
                            "start": w[0],
                            "count": w[1],
                            "min": w[2],
                            "max": w[3],
                            "mean": w[4] / w[1],
                        }
                    ),
                    qos=0,
                )
            w = windows[msg.topic] = [now, 0, value, value, 0.0]
        w[1] += 1
        w[2] = min(w[2], value)
        w[3] = max(w[3], value)
        w[4] += value
        processed[0] += 1

    def report() -> None:
        while True:
            with open(count_file + ".tmp", "w") as f:
                f.write(str(processed[0]))
            import os

            os.replace(count_file + ".tmp", count_file)
            time.sleep(0.2)

    threading.Thread(target=report, daemon=True).start()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive-in")
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("sensors/#", 0)
    c.connect("127.0.0.1", local_port)
    c.loop_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
