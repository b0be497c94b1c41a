"""
An import path the README documented for programs that embed mqtwist (the
exceptions of L{mqtwist.service.MailerService.whenFailed}); the private
RabbitMQ node is L{mqtwist.localnode}, outside the AMQP client package.
"""

from mqtwist.localnode import (
    LocalRabbitMQ,
    LocalRabbitMQService,
    RabbitMQEnded,
    RabbitMQNotInstalled,
    RabbitMQStartFailed,
)

__all__ = ["LocalRabbitMQ", "LocalRabbitMQService", "RabbitMQEnded", "RabbitMQNotInstalled", "RabbitMQStartFailed"]
