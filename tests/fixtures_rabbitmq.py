"""RabbitMQ fixtures (filled in by the AMQP work)."""
