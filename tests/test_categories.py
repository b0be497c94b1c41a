"""
Bounce categories (L{mqtwist.delivery.categories}): the shipped rules on
replies as servers send them, parsed by mqtwist's own reply parser, and on
mqtwist's own failures as its code words them; the rule tables of the
configuration and of C{--category-rules}; C{[[backoff]]} rules that name a
category.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from mqtwist.config import BackoffRule, Config
from mqtwist.config.rules import CategoryRule
from mqtwist.content.message import ResultEntry, invalidResultJSON
from mqtwist.delivery.categories import CATEGORIES, OTHER, Categories, lastCategory, readRules, shipped, shippedRules
from mqtwist.delivery.policy import DeliveryPolicy
from mqtwist.delivery.routing import Route
from mqtwist.errors import AttemptFailed, InvalidMessage
from mqtwist.smtp.pool import Destination
from mqtwist.smtp.reply import Reply

#: (step, reply as the server sent it, one line per line, category).
#: Addresses, IP addresses and message ids are made up; the wording is
#: that of the servers.
REPLIES = [
    # -- Gmail
    ("rcptto", "550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
               "550-5.1.1 double-checking the recipient's email address for typos or\n"
               "550-5.1.1 unnecessary spaces. For more information, go to\n"
               "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser a1si2345678qkb.123 - gsmtp",
     "bad-recipient"),
    ("rcptto", "550 5.2.1 The email account that you tried to reach is disabled. "
               "https://support.google.com/mail/?p=DisabledUser x12si - gsmtp", "bad-recipient"),
    ("rcptto", "452-4.2.2 The email account that you tried to reach is over quota. Please direct\n"
               "452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp b5si - gsmtp",
     "mailbox-full"),
    ("message", "552-5.2.2 The email account that you tried to reach is over quota and inactive.\n"
                "552 5.2.2 https://support.google.com/mail/?p=OverQuotaPerm q7si - gsmtp", "mailbox-full"),
    ("rcptto", "450-4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
               "450-4.2.1 prevents additional messages from being delivered. Please resend your\n"
               "450 4.2.1 message at a later time. https://support.google.com/mail/?p=ReceivingRate - gsmtp",
     "rate-limited"),
    ("message", "550-5.7.1 [192.0.2.10      12] Our system has detected that this message is\n"
                "550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n"
                "550 5.7.1 this message has been blocked. https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp",
     "spam-block"),
    ("message", "421-4.7.0 [192.0.2.10      15] Our system has detected that this message is\n"
                "421-4.7.0 suspicious due to the very low reputation of the sending IP address.\n"
                "421 4.7.0 https://support.google.com/mail/answer/188131 f3si - gsmtp", "spam-block"),
    ("message", "421-4.7.28 [192.0.2.10      15] Our system has detected an unusual rate of\n"
                "421-4.7.28 unsolicited mail originating from your IP address. To protect our\n"
                "421 4.7.28 users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp",
     "rate-limited"),
    ("message", "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\n"
                "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\n"
                "550 5.7.26  Authentication results: DKIM = did not pass SPF [example.com] with ip: [192.0.2.10] = did not pass - gsmtp",
     "policy"),
    ("message", "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy. - gsmtp",
     "policy"),
    ("message", "421-4.7.0 This message does not have authentication information or fails to\n"
                "421 4.7.0 pass authentication checks (SPF or DKIM). To best protect our users - gsmtp",
     "policy"),
    ("mailfrom", "550-5.7.25 [192.0.2.10] The IP address sending this message does not have a\n"
                 "550 5.7.25 PTR record setup, or the corresponding forward DNS entry does not point to the sending IP. - gsmtp",
     "policy"),
    ("message", "552-5.7.0 This message was blocked because its content presents a potential\n"
                "552 5.7.0 security issue. https://support.google.com/mail/?p=BlockedMessage - gsmtp",
     "content-rejected"),
    ("message", "552-5.3.4 Your message exceeded Google's message size limits. Please visit\n"
                "552 5.3.4 https://support.google.com/mail/?p=MaxSizeError - gsmtp", "content-rejected"),
    ("rcptto", "421-4.7.0 TLS required for RCPT domain, closing connection. - gsmtp", "tls"),
    ("message", "550-5.7.1 The user or domain that you are sending to (or from) has a policy that\n"
                "550 5.7.1 prohibited the mail that you sent. - gsmtp", "policy"),
    # -- Microsoft (Outlook.com, Exchange Online)
    ("rcptto", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). "
               "[BN1NAM02FT033.eop-nam02.prod.protection.outlook.com]", "bad-recipient"),
    ("rcptto", "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
               "[DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]", "bad-recipient"),
    ("rcptto", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "bad-recipient"),
    ("mailfrom", "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. Please contact your "
                 "Internet service provider since part of their network is on our block list (S3150). "
                 "You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. "
                 "[AM5EUR02FT010.eop-EUR02.prod.protection.outlook.com]", "spam-block"),
    ("intro", "550 5.7.1 Service unavailable, Client host [192.0.2.10] blocked using Spamhaus. To request "
              "removal from this list see https://www.spamhaus.org/query/ip/192.0.2.10 (AS3130). "
              "[VI1EUR04FT011.eop-eur04.prod.protection.outlook.com]", "spam-block"),
    ("message", "451 4.7.650 The mail server [192.0.2.10] has been temporarily rate limited due to IP "
                "reputation. For e-mail delivery information, see https://postmaster.live.com (S775) "
                "[MW2NAM10FT011.eop-nam10.prod.protection.outlook.com]", "spam-block"),
    ("intro", "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. For more "
              "information please go to http://go.microsoft.com/fwlink/?LinkId=526653 AS(7) "
              "[DM6NAM11FT055.eop-nam11.prod.protection.outlook.com]", "spam-block"),
    ("intro", "550 5.7.606 Access denied, banned sending IP [192.0.2.10]. To request removal from this list "
              "please visit https://sender.office.com/ and follow the directions. For more information "
              "please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)", "spam-block"),
    ("message", "550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification "
                "and has a DMARC policy of reject.", "policy"),
    ("message", "550 5.7.520 Access denied, Your organization does not allow external forwarding. Please "
                "contact your administrator for further assistance. AS(7555)", "policy"),
    ("message", "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
     "mailbox-full"),
    ("intro", "421 4.3.2 The maximum number of concurrent server connections has exceeded a limit, "
              "closing transmission channel", "rate-limited"),
    ("intro", "451 4.7.500 Server busy. Please try again later from [192.0.2.10]. (S77714) "
              "[CO1NAM11FT023.eop-nam11.prod.protection.outlook.com]", "rate-limited"),
    ("message", "550 5.6.211 Invalid MIME Content: Single text value size (32768) limit exceeded", "content-rejected"),
    # -- Yahoo and AOL
    ("rcptto", "554 delivery error: dd This user doesn't have a yahoo.com account (someone@yahoo.com) [0] "
               "- mta1234.mail.bf1.yahoo.com", "bad-recipient"),
    ("rcptto", "554 delivery error: dd Sorry your message to someone@yahoo.com cannot be delivered. This "
               "mailbox is disabled (554.30). - mta4321.mail.gq1.yahoo.com", "bad-recipient"),
    ("intro", "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume or "
              "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "rate-limited"),
    ("intro", "553 5.7.2 [TSS09] All messages from 192.0.2.10 will be permanently deferred; Retrying will "
              "NOT succeed. See https://postmaster.yahooinc.com/error-codes", "spam-block"),
    ("intro", "421 4.7.1 [TS03] All messages from 192.0.2.10 will be permanently deferred; Retrying will NOT "
              "succeed. See https://postmaster.yahooinc.com/error-codes", "spam-block"),
    ("intro", "550 5.7.1 [BL21] Connections will not be accepted from 192.0.2.10, because the ip is in "
              "Spamhaus's list; see https://postmaster.yahooinc.com/error-codes", "spam-block"),
    ("message", "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes",
     "policy"),
    ("mailfrom", "451 Message temporarily deferred due to unresolvable RFC.5321 from address; see "
                 "https://postmaster.yahooinc.com/error-codes", "policy"),
    ("rcptto", "552 1 Requested mail action aborted, mailbox not found", "bad-recipient"),
    # -- Apple iCloud
    ("rcptto", "550 5.1.1 <someone@icloud.com>: user does not exist", "bad-recipient"),
    ("rcptto", "552 5.2.2 <someone@icloud.com>: user is over quota", "mailbox-full"),
    ("message", "554 5.7.1 [CS01] Message rejected due to local policy. Please visit "
                "https://support.apple.com/en-us/HT204137", "policy"),
    ("intro", "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=192.0.2.10",
     "spam-block"),
    # -- Proofpoint
    ("intro", "554 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.10", "spam-block"),
    ("message", "550 5.7.1 Message rejected as spam by Content Filtering.", "spam-block"),
    # -- Mimecast
    ("rcptto", "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [Xa1bCdEfGh.uk21]",
     "bad-recipient"),
    ("message", "550 Rejected by header based Anti-Spoofing policy: sender@example.com - "
                "https://community.mimecast.com/docs/DOC-1369#550 [ZxYwVu.us122]", "policy"),
    ("mailfrom", "550 Administrative prohibition - envelope blocked - "
                 "https://community.mimecast.com/docs/DOC-1369#550", "policy"),
    ("message", "554 Email rejected due to security policies - https://community.mimecast.com/docs/DOC-1369#554",
     "policy"),
    # -- block lists behind Postfix, Exim and others
    ("rcptto", "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org; "
               "https://www.spamhaus.org/query/ip/192.0.2.10", "spam-block"),
    ("rcptto", "554 5.7.1 Service unavailable; Sender address [sender@example.com] blocked using "
               "dbl.spamhaus.org; https://www.spamhaus.org/query/dbl?domain=example.com", "spam-block"),
    ("rcptto", "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using bl.spamcop.net; "
               "Blocked - see https://www.spamcop.net/bl.shtml?192.0.2.10", "spam-block"),
    ("intro", "554 Service unavailable; Client host [192.0.2.10] blocked using b.barracudacentral.org; "
              "https://www.barracudanetworks.com/reputation/?pr=1&ip=192.0.2.10", "spam-block"),
    ("rcptto", "550-Rejected because 192.0.2.10 is in a black list at zen.spamhaus.org\n"
               "550 Listed: https://www.spamhaus.org/query/ip/192.0.2.10", "spam-block"),
    ("message", "550 5.7.1 Message content rejected, UBE, id=12345-01", "spam-block"),
    # -- Postfix
    ("rcptto", "550 5.1.1 <someone@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
     "bad-recipient"),
    ("rcptto", "550 5.1.1 <someone@example.com>: Recipient address rejected: User unknown in local recipient table",
     "bad-recipient"),
    ("rcptto", "450 4.1.1 <someone@example.com>: Recipient address rejected: unverified address: "
               "host mx.example.com[198.51.100.7] said: 550 5.1.1 no such user", "bad-recipient"),
    ("rcptto", "450 4.1.2 <someone@nowhere.example>: Recipient address rejected: Domain not found",
     "bad-domain"),
    ("mailfrom", "450 4.1.8 <sender@example.com>: Sender address rejected: Domain not found", "policy"),
    ("rcptto", "554 5.7.1 <someone@example.org>: Relay access denied", "policy"),
    ("rcptto", "450 4.7.1 Client host rejected: cannot find your hostname, [192.0.2.10]", "policy"),
    ("rcptto", "450 4.2.0 <someone@example.com>: Recipient address rejected: Greylisted, see "
               "http://postgrey.schweikert.ch/help/example.com.html", "greylisted"),
    ("rcptto", "451 4.7.1 Greylisting in action, please come back later", "greylisted"),
    ("message", "552 5.3.4 Message size exceeds fixed limit", "content-rejected"),
    ("message", "554 5.7.1 Rejected: Virus found: Eicar-Test-Signature", "content-rejected"),
    ("message", "550 5.6.0 Message contains invalid header", "content-rejected"),
    ("mailfrom", "530 5.7.0 Must issue a STARTTLS command first", "tls"),
    ("message", "421 4.4.2 mx.example.com Error: timeout exceeded", "timeout"),
    ("message", "451 4.4.1 No answer from host", "connection"),
    # -- Exim, cPanel, Sendmail and others
    ("rcptto", "550 Unrouteable address", "bad-recipient"),
    ("rcptto", "550 No Such User Here", "bad-recipient"),
    ("rcptto", "550 5.1.1 <someone@example.com>... User unknown", "bad-recipient"),
    ("rcptto", "550-Verification failed for <sender@example.com>\n550-Unrouteable address\n550 Sender verify failed",
     "policy"),
    ("rcptto", "550 5.1.2 <someone@nowhere.example>... Host unknown (Name server: nowhere.example: host not found)",
     "bad-domain"),
    ("rcptto", "552 Mailbox size limit exceeded", "mailbox-full"),
    ("message", "552 Message size exceeds maximum permitted", "content-rejected"),
    ("intro", "421 Too many concurrent SMTP connections from this IP address; please try again later.",
     "rate-limited"),
    ("rcptto", "451-The server has reached its limit for processing requests from your host.\n"
               "451 Please try again later.", "other"),
    ("rcptto", "550 Administrative prohibition", "policy"),
    ("rcptto", "550 relay not permitted", "policy"),
    ("rcptto", "550 5.1.10 <someone@nomx.example>: Recipient address has null MX", "bad-domain"),
    ("rcptto", "452 4.5.3 Too many recipients", "rate-limited"),
    ("message", "451 4.3.0 Temporary local problem - please try later", "other"),
    ("message", "452 4.3.1 Insufficient system storage", "other"),
    ("rcptto", "552 Requested mail action aborted: exceeded storage allocation", "mailbox-full"),
    ("message", "554 Transaction failed", "other"),
    ("rcptto", "421 4.7.0 try again later", "rate-limited"),
    ("intro", "421 mx.example.com Service not available, closing transmission channel", "rate-limited"),
]


def replyCategory(state: str, text: str) -> str:
    """The shipped rules' category of a reply as a server sends it."""
    lines = text.split("\n")
    code = int(lines[0][:3])
    reply = Reply.fromLines(code, tuple(line[4:] for line in lines))
    return shipped().categorize(state, "error", reply.code, reply.status, reply.text)


@pytest.mark.parametrize(("state", "reply", "category"), REPLIES, ids=[r[1][:60] for r in REPLIES])
def test_a_reply_falls_in_its_category(state: str, reply: str, category: str) -> None:
    assert replyCategory(state, reply) == category


def test_the_table_is_big_and_covers_every_category_of_replies() -> None:
    assert len(REPLIES) >= 60
    shown = {category for _, _, category in REPLIES}
    assert shown == set(CATEGORIES) - {"auth", "dns", "invalid"}


#: mqtwist's own failures, worded as its code words them
OWN_FAILURES = [
    (AttemptFailed("dns", "error", "domain nowhere.example does not exist (NXDOMAIN)", permanent=True), "bad-domain"),
    (AttemptFailed("dns", "error", "domain nomx.example accepts no mail (null MX, RFC 7505)"), "bad-domain"),
    (AttemptFailed("dns", "error", "the mail exchangers of a.example (mx.a.example) have no A or AAAA record"),
     "bad-domain"),
    (AttemptFailed("dns", "error", "MX lookup for a.example failed (timeout), a temporary DNS failure"), "dns"),
    (AttemptFailed("connect", "timeout", "no TCP connection to mx.a.example within 30 seconds"), "timeout"),
    (AttemptFailed("intro", "timeout", "no greeting from mx.a.example within 300 seconds"), "timeout"),
    (AttemptFailed("connect", "error", "cannot connect to mx.a.example: Connection was refused"), "connection"),
    (AttemptFailed("message", "lost", "the connection to mx.a.example was lost"), "connection"),
    (AttemptFailed("starttls", "error", "mx.a.example does not offer STARTTLS, and the TLS policy is 'required'"),
     "tls"),
    (AttemptFailed("starttls", "error", "mx.a.example is not trusted under the TLS policy 'verified'"), "tls"),
    (AttemptFailed("auth", "error", "not sending the AUTH credentials to relay.example on a connection without TLS"),
     "auth"),
    (AttemptFailed("auth", "error", "relay.example refused the login as 'u': Authentication credentials invalid",
                   code=535, status="5.7.8"), "auth"),
    (AttemptFailed("mailfrom", "error", "the message is 2000 bytes, more than the 1000 bytes that "
                   "mx.a.example accepts (SIZE); make it smaller", permanent=True), "content-rejected"),
    (AttemptFailed("data", "error", "the message has 8-bit bytes and mx.a.example does not announce 8BITMIME"),
     "content-rejected"),
    (AttemptFailed("rcptto", "invalid", "the recipient address holds a line break"), "invalid"),
    (InvalidMessage("property 'recipient' is missing"), "invalid"),
    (AttemptFailed("bind", "error", "cannot connect to mx.a.example from local address 192.0.2.99"), OTHER),
    (AttemptFailed("data", "error", "data plugin spamcheck failed: spam detected", plugin="spamcheck"), OTHER),
    (AttemptFailed("process", "error", "mqtwist could not handle the message (KeyError: 'x')"), OTHER),
]


@pytest.mark.parametrize(("failure", "category"), OWN_FAILURES, ids=[str(f[0])[:60] for f in OWN_FAILURES])
def test_mqtwists_own_failures_fall_in_their_category(failure: AttemptFailed, category: str) -> None:
    assert shipped().ofFailure(failure) == category


def test_every_shipped_rule_names_a_documented_category() -> None:
    assert {rule.category for rule in shippedRules()} == set(CATEGORIES) - {OTHER}


def test_the_readme_lists_the_categories() -> None:
    readme = (Path(__file__).parent.parent / "README.rst").read_text()
    for category in CATEGORIES:
        assert f"``{category}``" in readme


def test_configured_rules_come_before_the_shipped_ones() -> None:
    config = Config(
        ehloName="x",
        categories=[CategoryRule.fromTable({"category": "vip-full", "text": "vip mailbox"}, "t")],
    )
    categories = Categories.fromConfig(config)
    assert categories.categorize("rcptto", "error", 552, "5.2.2", "the VIP mailbox is full") == "vip-full"
    assert categories.categorize("rcptto", "error", 552, "5.2.2", "mailbox full") == "mailbox-full"
    # a pattern with capitals ignores case as well
    capitals = Categories([CategoryRule("vip", text=r"VIP\S+ Mailbox")])
    assert capitals.categorize("rcptto", "error", 550, None, "the vip-list mAILBOX") == "vip"


def test_a_rules_file_replaces_the_shipped_ones(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[categories]]\ncategory = "unknown-user"\nstatus = \'^5\\.1\\.1$\'\n')
    config = Config(ehloName="x", categoryRules=str(path))
    categories = Categories.fromConfig(config)
    assert categories.rules == (CategoryRule("unknown-user", status=r"^5\.1\.1$"),)
    assert categories.categorize("rcptto", "error", 550, "5.1.1", "no such user") == "unknown-user"
    # nothing of the shipped rules is left
    assert categories.categorize("rcptto", "error", 552, "5.2.2", "mailbox full") == OTHER


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[[categories]]\ncategory = \"x\"\n", "give at least one of 'code', 'status', 'text'"),
        ("[[categories]]\ncategory = \"Bad Name\"\ntext = \"x\"\n", "'Bad Name' is not a category name"),
        ("[[categories]]\ncategory = \"x\"\ntext = \"(\"\n", "'text' is not a regular expression"),
        ("[[categories]]\ncategory = \"x\"\nreply = \"yes\"\n", "'reply' is 'yes'; give true"),
        ("[[categories]]\ncategory = \"x\"\nstate = 3\n", "'state' is 3; give a state"),
        ("[[categories]]\ncategory = \"x\"\nwords = \"y\"\n", "unknown key 'words'"),
        ("[[backoff]]\naction = \"pause\"\n", "unknown key 'backoff'; a rules file has only [[categories]]"),
        ("category = [", "is not valid TOML"),
    ],
)
def test_a_bad_rules_file_is_refused_naming_the_file_and_rule(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(content)
    with pytest.raises(ValueError) as raised:
        Config(ehloName="x", categoryRules=str(path))
    message = str(raised.value)
    assert message.startswith("setting categoryRules (--category-rules): ") and str(path) in message
    assert problem in message


def test_a_missing_rules_file_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("cannot read /nonexistent/rules.toml: No such file")):
        readRules("/nonexistent/rules.toml")


def test_failure_entries_carry_their_category() -> None:
    failure = AttemptFailed("rcptto", "error", "User unknown", code=550, status="5.1.1", permanent=True)
    assert ResultEntry.fromFailure(failure, 0).toJSON()["category"] == "bad-recipient"
    assert ResultEntry.fromFailure(failure, 0, category="mine").toJSON()["category"] == "mine"
    accepted = ResultEntry("message", "accepted", 0, True, code=250, description="ok")
    assert "category" not in accepted.toJSON()


def test_an_invalid_jobs_result_is_in_the_invalid_category() -> None:
    import json

    result = json.loads(invalidResultJSON(b'{"envelope": "a@b.example"}', InvalidMessage("no recipient"), 0))
    assert result["results"][-1]["category"] == "invalid"


@pytest.mark.parametrize(
    ("results", "category"),
    [
        ([], OTHER),
        ([{"result": "error", "category": "mailbox-full"}, {"result": "deferred"}], "mailbox-full"),
        ([{"category": "timeout"}, {"category": "rate-limited"}], "rate-limited"),
        ([{"category": {"not": "a name"}}, "junk", 3], OTHER),
    ],
)
def test_an_expired_job_takes_its_last_category(results: list[object], category: str) -> None:
    assert lastCategory(results) == category


def _policy(**settings: object) -> DeliveryPolicy:
    clock = Clock()
    clock.advance(1000)
    return DeliveryPolicy(Config(ehloName="x", **settings), clock, lambda destination: 0)


def _route() -> Route:
    return Route(Destination((("127.0.0.2", 25),), None), "a.test", ("mx.a.test",), "a.test")


def test_a_backoff_rule_may_match_a_category() -> None:
    policy = _policy(backoff=[BackoffRule.fromTable({"action": "pause", "seconds": 60, "category": "spam-block"}, "t")])
    permit = policy.admit(_route()).result
    unknown = AttemptFailed("rcptto", "error", "no such user", code=550, status="5.1.1")
    assert policy.failed(permit, unknown) is None
    blocked = AttemptFailed("intro", "error", "blocked using zen.spamhaus.org", code=554, status="5.7.1")
    backoff = policy.failed(permit, blocked)
    assert backoff is not None and backoff.action == "pause"
    # the messages it defers say why, by category too
    policy.release(permit)
    deferral = policy.admitNow(_route())
    assert deferral.category == "spam-block" and "spamhaus" in deferral.reason


def test_a_backoff_rules_category_is_checked() -> None:
    with pytest.raises(ValueError, match="'category': 'Spam Block' is not a category name"):
        BackoffRule.fromTable({"action": "pause", "seconds": 60, "category": ["Spam Block"]}, "t")
