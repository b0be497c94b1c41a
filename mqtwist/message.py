"""
An import path the README documented for programs that embed mqtwist
(C{mqtwist.message.Message}, for L{mqtwist.service.MailerService.deliver});
the module is L{mqtwist.content.message}.
"""

from mqtwist.content.message import DSN, Message, ParseSettings, ResultEntry, Smarthost

__all__ = ["DSN", "Message", "ParseSettings", "ResultEntry", "Smarthost"]
