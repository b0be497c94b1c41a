"""
From the outbox queue to published results: L{processor} takes each outbox
message, has it delivered and publishes what happened before it
acknowledges the message; L{schedule} decides when a message is tried
again, through which delay queue, and when it expires; L{journal} remembers
recent deliveries, so that a message the broker hands out again is not
sent twice.
"""
