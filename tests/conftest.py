"""
Shared fixtures: a private RabbitMQ node and real SMTP servers, each in its
own module so that they can be read (and reused) separately.
"""

pytest_plugins = ["fixtures_rabbitmq", "fixtures_smtp"]


import pytest


@pytest.fixture(autouse=True)
def _inTemporaryDirectory(tmp_path, monkeypatch):
    """
    Each test runs in a directory of its own, so that what a service keeps
    under its working directory by default (the delivery journal in
    C{.state/}) is never shared by two tests, nor left in the checkout.
    """
    monkeypatch.chdir(tmp_path)
