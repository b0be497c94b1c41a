"""
How many acknowledgements a RabbitMQ node loses when it is killed (kill -9),
and whether the messages they settled come back with C{redelivered} set:
what the delivery journal's capacity must cover (mqtwist/outbox/journal.py).

    python3 bench/lostacks.py [--messages 40000] [--acks 16000]

A private node; C{--messages} persistent messages are published with
confirms to one durable queue, a consumer (prefetch 200) acknowledges the
first C{--acks} of them, C{--wait} seconds later the node is killed and started again on the same
data, and every message in the queue is read: those acknowledged before the
kill that are back, and the C{redelivered} flag of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from mqtwist.amqp.client import BrokerClient, Delivery, QueueSpec  # noqa: E402
from mqtwist.cli.publishing import publishBodies  # noqa: E402
from mqtwist.localnode import LocalRabbitMQ, RabbitMQEnded  # noqa: E402

QUEUE = "lostacks"


async def main(reactor: Any, o: argparse.Namespace) -> None:
    directory = tempfile.mkdtemp(prefix="mqtwist-lostacks-")
    os.chmod(directory, 0o755)  # the node runs as user rabbitmq when we are root
    node = LocalRabbitMQ(os.path.join(directory, "rabbitmq"), reactor=reactor)
    url = await node.start()
    try:
        publisher = BrokerClient(url, [QueueSpec(QUEUE)], consumeFrom=None, prefetch=0,
                                 onDelivery=lambda d: None, reactor=reactor)
        publisher.startService()
        await publisher.whenConnected()
        await publishBodies(publisher, QUEUE, (json.dumps({"n": n}).encode() for n in range(o.messages)))
        await publisher.stopService()

        acked: set[int] = set()
        enough: defer.Deferred[None] = defer.Deferred()

        def ackFirst(delivery: Delivery) -> None:
            if len(acked) < o.acks:
                delivery.ack()
                acked.add(json.loads(delivery.body)["n"])
                if len(acked) == o.acks:
                    enough.callback(None)

        consumer = BrokerClient(url, [QueueSpec(QUEUE)], consumeFrom=QUEUE, prefetch=200,
                                onDelivery=ackFirst, reactor=reactor)
        consumer.startService()
        await enough
        # the last acks on their way out of our socket, or more time for the node
        await task.deferLater(reactor, o.wait, lambda: None)
        with open(os.path.join(node.dataDir, "rabbitmq.pid")) as f:
            pid = int(f.read().strip())
        ended = node.whenEnded()
        os.kill(pid, signal.SIGKILL)
        try:
            await ended
        except RabbitMQEnded:
            pass  # what was asked for
        await consumer.stopService()
        await node.start()

        redelivered: dict[int, bool] = {}

        def note(delivery: Delivery) -> None:
            redelivered[json.loads(delivery.body)["n"]] = delivery.redelivered
            delivery.ack()

        reader = BrokerClient(url, [QueueSpec(QUEUE)], consumeFrom=QUEUE, prefetch=1000,
                              onDelivery=note, reactor=reactor)
        reader.startService()
        await reader.whenConnected()
        # until nothing more arrives for 2 s; at most 10 minutes
        seen = -1
        for _ in range(300):
            if seen == len(redelivered):
                break
            seen = len(redelivered)
            await task.deferLater(reactor, 2, lambda: None)
        await reader.stopService()
    finally:
        await node.stop()
        shutil.rmtree(directory, ignore_errors=True)
    back = [n for n in redelivered if n in acked]
    others = [n for n in redelivered if n not in acked]
    print(f"{o.messages} messages, {len(acked)} acknowledged before the kill; after the restart "
          f"{len(redelivered)} in the queue:")
    print(f"  acknowledged and back (lost acknowledgements): {len(back)}, of them with redelivered "
          f"set: {sum(redelivered[n] for n in back)}")
    print(f"  never acknowledged: {len(others)}, of them with redelivered set: "
          f"{sum(redelivered[n] for n in others)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python3 bench/lostacks.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40_000, help="messages published (default: %(default)s)")
    parser.add_argument("--acks", type=int, default=16_000,
                        help="messages acknowledged before the kill (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=0.05,
                        help="seconds between the last acknowledgement and the kill (default: %(default)s)")
    options = parser.parse_args()
    if not 0 < options.acks <= options.messages:
        parser.error("--acks must be between 1 and --messages")
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
