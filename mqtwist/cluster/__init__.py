"""
The mqtwist processes of one outbox as one cluster: they hear one another
on a control exchange of their broker, split every limit of a destination
between the live ones, and tell one another of the pauses and backoff that
replies cause and of the operators' actions.
"""
