"""
Shared fixtures: a private RabbitMQ node and real SMTP servers, each in its
own module so that they can be read (and reused) separately.
"""

pytest_plugins = ["fixtures_rabbitmq", "fixtures_smtp"]
