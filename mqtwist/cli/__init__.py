"""
The C{mqtwist} command, for senders and operators: C{mqtwist send}
publishes delivery jobs to the outbox and can follow their results,
C{mqtwist results} follows a result queue, and C{status}, C{pause},
C{resume}, C{cancel}, C{uncancel}, C{drain} and C{undrain} call the
service's admin API (L{mqtwist.cli.adminclient}); C{hash-password} makes
the password hash of a user of the SMTP submission server.  It reads the same
C{--amqp} URL, C{--admin} endpoint, C{--config} file and C{MQTWIST_*}
variables as the service (L{mqtwist.config.sources}).

L{mqtwist.cli.main} holds the command and its options; each subcommand is
a module of its own with C{NAME}, C{HELP}, C{addArguments(parser)} and
C{run(reactor, arguments, settings)} (L{mqtwist.cli.common} has what they
share: the settings and the connection).  Adding one is adding its module
to L{mqtwist.cli.main.SUBCOMMANDS}.
"""
