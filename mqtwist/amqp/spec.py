"""
The AMQP 0-9-1 specification (RabbitMQ's dialect) that txamqp is driven by.

txamqp ships no spec file and builds its channel methods from one at run
time; this package carries its own, with RabbitMQ's extensions (publisher
confirms, C{basic.nack}, exchange-to-exchange bindings).
"""

from __future__ import annotations

import functools
import os

from txamqp.spec import Spec, load

#: the spec file shipped as package data
SPEC_PATH = os.path.join(os.path.dirname(__file__), "amqp0-9-1-rabbitmq.xml")


@functools.cache
def loadSpec() -> Spec:
    """
    Parse L{SPEC_PATH} once per process; txamqp generates a class per load,
    so every connection shares this one.

    @return: the loaded specification.
    """
    return load(SPEC_PATH)
