"""
The settings of one mqtwist service.

L{Config} (in L{mqtwist.config.settings}) declares every setting once, with
its type, default, help and check; L{mqtwist.config.sources} reads them from
the command line, the environment and a TOML file; L{mqtwist.config.rules}
reads the settings that are TOML tables (C{[[throttles]]}, C{[[backoff]]},
C{[[dkim-keys]]}).
"""

from mqtwist.config.rules import BackoffRule, DKIMKeyRule, PoolRule, ThrottleRule
from mqtwist.config.settings import Config
from mqtwist.smtp.timeouts import SMTPTimeouts

__all__ = ["BackoffRule", "Config", "DKIMKeyRule", "PoolRule", "SMTPTimeouts", "ThrottleRule"]
