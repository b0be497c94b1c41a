"""
The shipped AMQP spec against Debian's copy of RabbitMQ's extended 0-9-1
spec (package amqp-specs).
"""

import os

import pytest
from txamqp.spec import load

from mqtwist.amqp.spec import SPEC_PATH, loadSpec

DEBIAN_SPEC = "/usr/share/amqp/specs/0-9-1-rabbit/amqp0-9-1.stripped.extended.xml"


def describe(spec):
    """
    Everything txamqp uses from a spec, with field types after domain
    resolution and fields in wire order.
    """
    classes = {}
    for klass in spec.classes:
        methods = {
            (m.name, m.id): (
                bool(m.content),
                bool(m.synchronous),
                sorted(r.name for r in m.responses),
                [(f.name, f.type) for f in m.fields],
            )
            for m in klass.methods
        }
        classes[(klass.name, klass.id)] = ([(f.name, f.type) for f in klass.fields], methods)
    constants = {c.name: (c.id, c.klass) for c in spec.constants}
    return (spec.major, spec.minor), constants, classes


@pytest.mark.skipif(not os.path.exists(DEBIAN_SPEC), reason="amqp-specs is not installed")
def test_same_as_debian_rabbitmq_spec():
    ours = describe(loadSpec())
    theirs = describe(load(DEBIAN_SPEC))
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1]
    assert set(ours[2]) == set(theirs[2])
    for klass in theirs[2]:
        assert ours[2][klass] == theirs[2][klass], klass


def test_rabbitmq_extensions_present():
    spec = loadSpec()
    confirm = spec.classes.byname["confirm"]
    assert confirm.id == 85
    assert [(m.name, m.id) for m in confirm.methods] == [("select", 10), ("select-ok", 11)]
    nack = spec.classes.byname["basic"].methods.byname["nack"]
    assert nack.id == 120
    assert [(f.name, f.type) for f in nack.fields] == [
        ("delivery-tag", "longlong"), ("multiple", "bit"), ("requeue", "bit"),
    ]
    exchange = spec.classes.byname["exchange"].methods
    assert (exchange.byname["bind"].id, exchange.byname["unbind-ok"].id) == (30, 51)


def test_loaded_once_and_shipped_as_package_data():
    assert loadSpec() is loadSpec()
    assert os.path.dirname(SPEC_PATH).endswith(os.path.join("mqtwist", "amqp"))
    assert SPEC_PATH.endswith(".xml")
