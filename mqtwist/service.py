"""
L{MailerService}: the whole of mqtwist as one Twisted service.

It is what C{twistd mqtwist} runs, and what an existing Twisted application
adds to its own service tree.  Its children are, in start order: the private
RabbitMQ node (only when no broker URL is configured) and the AMQP client
that consumes the outbox.

When it cannot work (no broker) it logs why and tells L{whenFailed}'s
callers, but stops nothing: whoever runs it decides.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from mqtwist import __version__
from mqtwist.admin.api import adminRoot
from mqtwist.admin.controls import ControlError, Controls, NotTold
from mqtwist.admin.history import History
from mqtwist.admin.token import readTokenFile
from mqtwist.amqp.client import BrokerClient
from mqtwist.amqp.url import BrokerURL, parseBrokerURLs
from mqtwist.cluster.control import ClusterControl
from mqtwist.config import Config
from mqtwist.config.settings import kebab
from mqtwist.content.dkimsign import DKIMKeys
from mqtwist.content.joblimits import JobLimits
from mqtwist.content.message import Message, ParseSettings, ResultEntry
from mqtwist.dataplugin.chain import PluginChain
from mqtwist.dataplugin.discovery import selectPlugins
from mqtwist.dataplugin.interfaces import IDataPlugin
from mqtwist.delivery.deferrallog import DeferralLog
from mqtwist.delivery.engine import DeliveryEngine
from mqtwist.delivery.policy import DeliveryPolicy, mostConnections
from mqtwist.delivery.routing import Router
from mqtwist.listening import HTTPService, ListenFailed
from mqtwist.localnode import (
    LocalRabbitMQ,
    LocalRabbitMQService,
    RabbitMQEnded,
    RabbitMQNotInstalled,
    RabbitMQStartFailed,
)
from mqtwist.messagestore.loader import storedMessages
from mqtwist.metrics import Metrics, MetricsPage
from mqtwist.outbox.journal import DeliveryJournal, DeliveryJournalError
from mqtwist.outbox.processor import OutboxProcessor
from mqtwist.outbox.schedule import RetrySchedule, reservedQueues
from mqtwist.smtp.connect import Credentials
from mqtwist.smtp.pool import ConnectionPool
from mqtwist.smtp.tls import TLSSettings
from mqtwist.submission.access import Access
from mqtwist.submission.envelope import Submission
from mqtwist.submission.listener import ServerTLS, SubmissionListener
from mqtwist.submission.server import ServerSettings, SubmissionServer
from mqtwist.timeformat import formatTime
from mqtwist.validation import canonicalIP

#: What to do when the private RabbitMQ node fails, by the type of its error
#: (whose message says what happened).
_NODE_FAILURE_ADVICE: dict[type, str] = {
    RabbitMQNotInstalled: "install what the message names, then start mqtwist again.",
    RabbitMQStartFailed: (
        "fix what the node's output and log show (eaddrinuse: one of its ports is in "
        "use; free it, or choose another AMQP port with --broker-port), then start "
        "mqtwist again; or give the URL of a running broker with --amqp."
    ),
    RabbitMQEnded: (
        "find in the node's log, and in its last output logged above, why it ended, "
        "then start mqtwist again; or give the URL of a running broker with --amqp."
    ),
}


#: the settings that L{MailerService.reconfigure} applies while running
_LIVE_SETTINGS = frozenset({"pools", "defaultIps"})
#: those it applies while the submission server runs: who may submit
_LIVE_SUBMISSION_SETTINGS = frozenset({"submissionUsers", "submissionTrustedNetworks", "submissionMessagesPerMinute"})


def submissionAccess(config: Config, parseSettings: ParseSettings) -> Access:
    """
    Who may submit over SMTP under C{config}: its trusted networks and what
    its users file holds, each account's defaults checked as the outbox
    reads jobs under C{parseSettings}.

    @raise ValueError: naming the users file and what is wrong in it.
    """
    return Access.fromSettings(
        config.submissionTrustedNetworks,
        config.submissionUsers,
        config.submissionMessagesPerMinute,
        parseSettings,
    )


def _sourceAddresses(config: Config) -> dict[str, Any]:
    """
    The L{ParseSettings} fields that come from C{config}'s IP pools and
    default source addresses.
    """
    return {
        "pools": {pool.name: pool.ips for pool in config.pools},
        "defaultIps": tuple(canonicalIP(ip) for ip in config.defaultIps),
    }


def deliveryEngine(
    config: Config,
    plugins: Sequence[IDataPlugin],
    reactor: Any,
    *,
    metrics: Metrics | None = None,
    controls: Controls | None = None,
) -> DeliveryEngine:
    """
    The delivery core of C{config}, with its router, policy, connection pool
    and plugin chain: what L{MailerService} delivers with, and what a
    program that has its own queue can use alone.

    @param plugins: the data plugins, in the order they run.
    @param metrics: where the engine and the plugin chain count.
    @param controls: the operators' pauses.
    @raise ValueError: when the configured TLS files cannot be loaded, or
        no installed backend serves the C{--message-store} URL.
    """
    tls = TLSSettings(config.tlsCertificate, config.tlsKey, config.tlsCaFile)
    # loaded now, so that a bad file stops the start instead of every
    # STARTTLS later on
    tls.context()
    pool = ConnectionPool(
        reactor,
        ehloName=config.ehloName,
        timeouts=config.timeouts,
        maxConnectionsPerDestination=mostConnections(config),
        maxMessagesPerConnection=config.maxMessagesPerConnection,
        idleTimeout=config.idleTimeout,
        tls=tls,
        authCleartextHosts=config.authCleartextHosts,
    )
    router = Router(
        smarthost=config.smarthost,
        mxPort=config.mxPort,
        nameservers=config.nameservers,
        dnsTimeout=config.dnsTimeout,
        minCacheTime=config.dnsMinCacheTime,
        addressesPerAttempt=config.mxAddressesPerAttempt,
        security=config.security,
        smarthostCredentials=(
            Credentials(config.smarthostUsername, config.smarthostPassword or "")
            if config.smarthostUsername
            else None
        ),
        reactor=reactor,
    )
    return DeliveryEngine(
        router,
        DeliveryPolicy(config, reactor, pool.openConnections),
        pool,
        PluginChain(plugins, reactor=reactor, config=config, metrics=metrics),
        DeferralLog(config.deferralLogInterval, reactor),
        concurrency=config.concurrency,
        parkDelayMax=config.parkDelayMax,
        reactor=reactor,
        store=storedMessages(config, reactor),
        metrics=metrics,
        controls=controls,
    )


class MailerService(MultiService):
    """
    Consumes the outbox, delivers, publishes results.

    @param config: the settings; see L{Config}.
    @param plugins: the data plugins to run, in order; by default those that
        C{config.plugins} names, found with Twisted's plugin system.
    @param adminToken: the bearer token of the admin API (C{config.admin});
        by default the first line of C{config.adminTokenFile}.
    @raise ValueError: for a configuration that cannot work (a setting that
        L{Config.check} refuses, an unknown plugin name, an admin endpoint
        without a token), with a message that says which.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        *,
        reactor: Any = None,
        plugins: Sequence[IDataPlugin] | None = None,
        adminToken: str | None = None,
    ) -> None:
        super().__init__()
        config.check()
        if reactor is None:
            from twisted.internet import reactor
        self.config = config
        self.reactor = reactor
        self.brokerURL: BrokerURL | tuple[BrokerURL, ...] | None = (
            parseBrokerURLs(config.amqp) if config.amqp else None
        )
        self.plugins = list(plugins) if plugins is not None else selectPlugins(config.plugins)
        self.schedule = RetrySchedule(
            config.outbox, config.delayBuckets, config.retries, config.maxDeliverTime, config.queueType
        )
        self.parseSettings = ParseSettings(
            hostname=config.ehloName,
            limits=JobLimits(config.maxJobBytes, config.maxJobDepth, config.maxJobItems, config.maxJobString),
            # a result published to one of these would come back as a job
            reservedQueues=reservedQueues(config),
            **_sourceAddresses(config),
            outbox=config.outbox,
            dkimMatching=config.dkimSign == "matching",
            dkimKeys=DKIMKeys(
                {
                    rule.domain: {"selector": rule.selector, "keyfile": rule.keyfile, "protocols": rule.protocols}
                    for rule in config.dkimKeys
                },
                cacheSize=config.dkimKeyCache,
            ),
        )
        self.metrics = Metrics(maxDestinations=config.metricsDestinations)
        self.controls = Controls(reactor)
        self.controls.onPauseEnded = lambda: self.releaseHeld("a pause ended")
        self._releasing: Deferred[None] | None = None
        self._releaseAgain = False
        self.engine = deliveryEngine(config, self.plugins, reactor, metrics=self.metrics, controls=self.controls)
        #: this process's side of the control exchange (C{--cluster shared})
        self.cluster: ClusterControl | None = None
        if config.cluster == "shared":
            self.cluster = self._joinCluster(config)
        self.journal = DeliveryJournal(config.deliveryJournal or None, config.deliveryJournalSize)
        self.broker: BrokerClient | None = None
        self.processor: OutboxProcessor | None = None
        self.localNode: LocalRabbitMQService | None = None
        if self.brokerURL is None:
            self.localNode = LocalRabbitMQService(
                LocalRabbitMQ(
                    config.brokerDir, amqpPort=config.brokerPort, niceness=config.brokerNice, reactor=reactor
                )
            )
            self.localNode.setServiceParent(self)
        self._history: History | None = None
        #: the services of C{--metrics} and C{--admin}, by option, when set
        self.httpServices: dict[str, HTTPService] = {}
        self._addHTTPEndpoints(config, adminToken)
        #: the SMTP submission server of C{--submission}, when set
        self.submission: SubmissionServer | None = None
        self.submissionListeners: list[SubmissionListener] = []
        self._submissionQueue: Any = None
        self._addSubmission(config)
        self._draining: Deferred[None] | None = None
        #: the wait of a drain under way for the deliveries in flight
        self._drainWait: Deferred[None] | None = None
        self._brokerWaiters: list[Deferred[None]] = []
        self._failure: Failure | None = None
        self._failureWaiters: list[Deferred[None]] = []
        self._stopping = False
        self._stopped = False

    def _joinCluster(self, config: Config) -> ClusterControl:
        cluster = ClusterControl(
            config.clusterMember or f"{socket.gethostname()}:{os.getpid()}",
            self.reactor,
            heartbeat=config.clusterHeartbeat,
            timeout=config.clusterMemberTimeout,
            settle=config.clusterSettle,
            metrics=self.metrics,
        )
        policy = self.engine.policy
        policy.holdUntilSettled()
        policy.onBackoff = cluster.announceBackoff
        cluster.onBackoff = policy.applyShared
        cluster.onMembers = lambda members: policy.setMembers(members, cluster.me)
        self.controls.announce = self._announceAdmin
        cluster.inForce = self.controls.inForce
        cluster.backoffsInForce = policy.backoffsInForce
        cluster.onAdmin = self._adminFromPeer
        return cluster

    def _adminFromPeer(self, member: str, action: dict[str, Any]) -> None:
        """
        Take an operator's action that another process of the cluster
        took (L{ClusterControl.onAdmin}).
        """
        assert self.cluster is not None
        kind = action.get("action")
        self.log.warn(
            "cluster: {action} {selector}as {member} was asked by {by}",
            action=kind,
            selector=f"{' '.join(f'{k}={v}' for k, v in action['selector'].items())} "
            if isinstance(action.get("selector"), dict)
            else "",
            member=member,
            by=action.get("by", "an operator"),
        )
        if kind in ("drain", "undrain"):
            if action.get("target") in (None, self.cluster.me):
                self._drainHere() if kind == "drain" else self._undrainHere()
            return
        try:
            self.controls.fromPeer(action)
        except ControlError as e:
            self.log.warn("cluster: ignored the {action} of {member}: {error}", action=kind, member=member, error=e)

    def _usageFromPeer(self, kind: str, name: str, count: int) -> None:
        """
        Another process of the cluster took C{count} messages from the
        submission account C{kind} C{name}: they count against its rate here.
        """
        assert self.submission is not None
        account = self.submission.access.account(kind, name)
        if account is not None:
            self.submission.limiter.takenElsewhere(account, count)

    def _announceAdmin(self, action: dict[str, Any]) -> bool:
        """
        Tell the other members of an operator's action taken here; warn
        when they cannot be told (the broker is away).

        @return: whether they were told.
        """
        assert self.cluster is not None
        told = self.cluster.announceAdmin(action)
        if not told:
            self.log.warn(
                "cluster: the other processes were not told of the {action} (not connected to the "
                "broker): it holds in this process only; make it again once connected",
                action=action.get("action"),
            )
        return told

    def _toOtherMembers(self, action: str, member: str | None, by: str) -> bool:
        """
        Tell the other members of a drain or undrain of C{member} (C{None}:
        all of them), asked by C{by}.

        @return: whether this process is not one it is for.
        @raise ControlError: for a C{member} that is not alive, or given
            without a cluster.
        @raise NotTold: for another member, when it cannot be told.
        """
        if self.cluster is None:
            if member is not None:
                raise ControlError("'member' needs --cluster shared: this process is on its own")
            return False
        if member is not None and member not in self.cluster.members.live:
            raise ControlError(
                f"no live member {member!r}; GET /api/status lists them under cluster.members"
            )
        if member != self.cluster.me:
            told = self._announceAdmin({"action": action, "target": member, "by": by})
            if not told and member is not None:
                raise NotTold(
                    f"{member} was not told to {action}: this process is not connected to the broker; "
                    "ask again later, or through another process"
                )
        return member is not None and member != self.cluster.me

    def reconfigure(self, config: Config) -> list[str]:
        """
        Apply a new configuration to the running service, as far as it can
        change without a restart: the IP pools (C{pools}) and the default
        source addresses (C{defaultIps}), for the jobs read from now on;
        and who may submit over SMTP (the users file, read again, the
        trusted networks and the rate), for the sessions that start from
        now on.

        @return: the option names (C{max-job-bytes}) of the other settings
            that differ in C{config}, which wait for a restart.
        @raise ValueError: when C{config} does not pass L{Config.check}, or
            its users file cannot be read; nothing is changed then.
        """
        config.check()
        live = _LIVE_SETTINGS
        access: Access | None = None
        if self.submission is not None:
            # read before anything changes: a bad users file changes nothing
            access = submissionAccess(
                config, dataclasses.replace(self.parseSettings, **_sourceAddresses(config))
            )
            live = live | _LIVE_SUBMISSION_SETTINGS
        waiting = [
            kebab(field.name)
            for field in dataclasses.fields(Config)
            if field.name not in live and getattr(config, field.name) != getattr(self.config, field.name)
        ]
        if self.submission is not None and access is not None:
            self.submission.access = access
            for name in _LIVE_SUBMISSION_SETTINGS:
                setattr(self.config, name, getattr(config, name))
            self.log.info(
                "--submission: {users} user(s) and {networks} trusted network(s) from now on",
                users=len(access.users),
                networks=len(access.networks),
            )
        self.config.pools, self.config.defaultIps = config.pools, config.defaultIps
        self.parseSettings = dataclasses.replace(self.parseSettings, **_sourceAddresses(config))
        if self.processor is not None:
            self.processor.parseSettings = self.parseSettings
        self.log.info(
            "IP pools now {pools}; default source addresses {defaultIps}",
            pools={name: list(ips) for name, ips in self.parseSettings.pools.items()},
            defaultIps=list(self.parseSettings.defaultIps) or "the system's choice",
        )
        return waiting

    def _addHTTPEndpoints(self, config: Config, adminToken: str | None) -> None:
        """
        The children that serve C{--metrics} and C{--admin}, when set.

        @raise ValueError: for an endpoint string Twisted does not know, or
            an admin endpoint without a token.
        """
        if config.metrics:
            root = Resource()
            root.putChild(b"metrics", MetricsPage(self.metrics))
            metrics = HTTPService("metrics", config.metrics, root, self.reactor, self._failed)
            self.httpServices["metrics"] = metrics
            metrics.setServiceParent(self)
        if not config.admin:
            return
        token = adminToken or (readTokenFile(config.adminTokenFile) if config.adminTokenFile else None)
        if not token:
            raise ValueError(
                f"--admin {config.admin} needs a token: put it in a file named by --admin-token-file, "
                f"or in the environment as MQTWIST_ADMIN_TOKEN"
            )
        self._history = History(self.metrics, self.reactor)
        self._history.setServiceParent(self)
        admin = HTTPService("admin", config.admin, adminRoot(self, token), self.reactor, self._failed)
        self.httpServices["admin"] = admin
        admin.setServiceParent(self)

    def _addSubmission(self, config: Config) -> None:
        """
        The children that listen on the C{--submission} endpoints, when set.

        @raise ValueError: for an endpoint string Twisted does not know, TLS
            files that cannot be loaded, or a users file that cannot be read.
        """
        if not config.submission:
            return
        tls = (
            ServerTLS(config.submissionTlsCertificate, config.submissionTlsKey)
            if config.submissionTlsCertificate
            else None
        )
        if config.submissionTls == "required" and tls is None:
            raise ValueError(
                "--submission-tls required needs a certificate: give --submission-tls-certificate "
                "(and --submission-tls-key)"
            )
        access = submissionAccess(config, self.parseSettings)
        settings = ServerSettings(
            hostname=config.submissionHostname or config.ehloName,
            maxSize=config.submissionMaxSize,
            maxRecipients=config.submissionMaxRecipients,
            maxConnections=config.submissionMaxConnections,
            maxConnectionsPerClient=config.submissionMaxConnectionsPerClient,
            ipv6ClientPrefix=config.submissionIpv6ClientPrefix,
            commandTimeout=config.submissionCommandTimeout,
            dataTimeout=config.submissionDataTimeout,
            queueTimeout=config.submissionQueueTimeout,
            maxBadCommands=config.submissionMaxBadCommands,
            maxAuthFailures=config.submissionMaxAuthFailures,
            tls=tls,
            authCleartext=config.submissionAuthCleartext,
            requireTls=config.submissionTls == "required",
            authThreads=config.submissionAuthThreads,
            maxMemory=config.submissionMaxMemory,
        )
        self.submission = SubmissionServer(settings, access, self._queueSubmission, self.reactor, self.metrics)
        cluster = self.cluster
        if cluster is not None:
            # the accounts' rates hold for every process of the outbox
            self.submission.limiter.onTaken = lambda account, count: cluster.announceUsage(
                account.kind, account.name, count
            )
            cluster.onUsage = self._usageFromPeer
        self.metrics.watchSubmission(self.submission.openConnections)
        for text in config.submission:
            listener = SubmissionListener(text, self.submission, self.reactor, self._failed, tls)
            self.submissionListeners.append(listener)
            listener.setServiceParent(self)
        if not access.users and not access.networks:
            self.log.warn(
                "--submission: no users (--submission-users) and no trusted networks "
                "(--submission-trusted-networks): every recipient will be refused"
            )
        if access.users and tls is None:
            self.log.warn(
                "--submission: users but no --submission-tls-certificate: AUTH is offered only "
                "{where}",
                where="to loopback clients, in clear"
                if config.submissionAuthCleartext == "loopback"
                else "nowhere (it needs TLS, or --submission-auth-cleartext loopback)",
            )

    def _queueSubmission(self, submission: Submission) -> Deferred[None]:
        """
        Queue a message taken in over SMTP: one job per recipient on
        C{--submission-queue} (the outbox by default), confirmed by the broker.
        """
        if self.broker is None:
            return fail(RuntimeError("not connected to the broker yet"))
        if self._submissionQueue is None:
            from mqtwist.submission.queueing import OutboxQueue

            self._submissionQueue = OutboxQueue(
                self.broker,
                self.config.submissionQueue or self.config.outbox,
                self.config.submissionHostname or self.config.ehloName,
                maxJobBytes=self.config.maxJobBytes,
            )
        queued: Deferred[None] = self._submissionQueue(submission)
        return queued

    # -- what the admin API reads and steers ------------------------------------

    def status(self) -> dict[str, Any]:
        """
        The service's state (C{consuming}, C{draining}, C{drained},
        C{connecting} or C{stopped}) and counts, for the admin API.
        """
        if not self.running:
            state = "stopped"
        elif self._draining is not None:
            state = "draining" if not self._draining.called else "drained"
        elif self.broker is None or not self.broker.connected:
            state = "connecting"
        else:
            state = "consuming"
        totals = self.metrics.totals("mqtwist_outcomes_total", "outcome")
        return {
            "version": __version__,
            "state": state,
            "outbox": self.config.outbox,
            "outboxDepth": self.metrics.lastOutboxDepth,
            "inFlight": len(self.processor.inFlight) if self.processor is not None else 0,
            "consumed": self.metrics.value("mqtwist_consumed_total"),
            "totals": {outcome: int(count) for outcome, count in sorted(totals.items())},
            "cluster": None
            if self.cluster is None
            else {
                "member": self.cluster.me,
                "members": list(self.cluster.members.live),
                "settled": self.cluster.settled,
            },
        }

    def destinations(self, limit: int = 200) -> dict[str, Any]:
        """
        The destinations with their state, for the admin API: those an
        operator paused, those the delivery policy knows now (the busiest
        first) and the most recent ones that had a reply (the policy
        forgets a destination once idle; the dashboard lists it still,
        between two bursts of traffic, so that it can be paused), C{limit}
        of them at most, by name; and the servers with connections.

        @return: C{destinations}, C{omitted} (how many more there are) and
            C{servers}.
        """
        pauses = {
            control.selector.destination: control
            for control in self.controls.pauses()
            if control.selector.destination is not None
        }
        states = {state.destination: state for state in self.engine.policy.destinationStates()}
        busiest = sorted(states.values(), key=lambda state: state.inFlight + state.waiting, reverse=True)
        names = list(dict.fromkeys(
            list(pauses)
            + [state.destination for state in busiest]
            + list(reversed(self.engine.lastReplies))[: self.config.metricsDestinations]
        ))
        parked = self.metrics.totals("mqtwist_parked_total", "destination")
        listed = []
        for name in sorted(names[:limit]):
            state = states.get(name)
            paused: dict[str, Any] | None = None
            if name in pauses:
                paused = dict(pauses[name].toJSON(), admin=True)
            elif state is not None and state.pausedUntil is not None:
                paused = {"until": formatTime(state.pausedUntil), "reason": state.pauseReason, "admin": False}
            listed.append(
                {
                    "destination": name,
                    "inFlight": state.inFlight if state is not None else 0,
                    "waiting": state.waiting if state is not None else 0,
                    "parked": int(parked.get(name, 0)),
                    "limits": dataclasses.asdict(state.limits) if state is not None else None,
                    "paused": paused,
                    "lastReply": self.engine.lastReplies.get(name),
                }
            )
        servers = sorted(self.engine.serverFigures(), key=lambda figures: figures.server)
        return {
            "destinations": listed,
            "omitted": max(0, len(names) - limit),
            "servers": [dataclasses.asdict(figures) for figures in servers],
        }

    def history(self) -> dict[str, Any]:
        """The counts per interval that the dashboard draws."""
        assert self._history is not None, "kept only with --admin"
        return self._history.toJSON()

    def drain(self, member: str | None = None, by: str = "an operator") -> Deferred[None]:
        """
        Stop consuming and let the deliveries in flight finish, as a stop
        does (at most C{config.shutdownTimeout} seconds; those unfinished
        then go back to the outbox), without stopping: for a rolling
        restart, or to let other processes take the outbox.

        @param member: the member of the cluster to drain (this one or
            another); C{None}: every one.
        @param by: who asked, for the other members' logs.
        @return: a Deferred firing when this process is drained (at once
            when it is not one to drain).
        @raise ControlError: for a C{member} that is not alive.
        @raise NotTold: for another member, when it cannot be told.
        """
        if self._toOtherMembers("drain", member, by):
            return succeed(None)
        return self._drainHere()

    def _drainHere(self) -> Deferred[None]:
        if self._draining is None:
            self._draining = ensureDeferred(self._drain())
        drained: Deferred[None] = Deferred()

        def done(result: object) -> object:
            if isinstance(result, Failure):
                drained.errback(result)
            else:
                drained.callback(None)
            return result

        self._draining.addBoth(done)
        return drained

    async def _drain(self) -> None:
        self.log.warn("draining: no more outbox messages are taken until undrained")
        if self.broker is not None:
            await self.broker.stopConsuming()
        if self.processor is not None:
            self._drainWait = self.processor.drain(self.config.shutdownTimeout)
            try:
                await self._drainWait
            except CancelledError:
                self.log.warn("undrained before the deliveries in flight were done")
                return
            finally:
                self._drainWait = None
        self.log.warn("drained: the deliveries in flight are done")

    def releaseHeld(self, why: str) -> None:
        """
        Send the messages in the held queue back to the outbox, where those
        that a pause still matches are held again and the others go on.
        One release at a time; one asked for meanwhile follows it.
        """
        if self._releasing is not None:
            self._releaseAgain = True
            return
        if self.broker is None:
            return
        self._releaseAgain = False
        if not self.broker.connected:
            # once connected again (a pause that ends while the broker is
            # away must not leave its messages held)
            self._releasing = self.broker.whenConnected().addBoth(lambda _: None)
            self._releaseAgain = True
            self._releasing.addBoth(self._released, why)
            return
        releasing = self.broker.moveAll(self.config.heldQueueName, self.config.outbox)

        def released(moved: int) -> None:
            if moved:
                self.log.info(
                    "{why}: {count} held message(s) went back to the outbox {outbox}",
                    why=why,
                    count=moved,
                    outbox=self.config.outbox,
                )

        def failed(failure: Failure) -> None:
            self.log.warn(
                "{why}: the held messages could not all go back to the outbox ({error}); they "
                "go once the broker is connected again",
                why=why,
                error=failure.getErrorMessage(),
            )
            self._releaseAgain = True

        self._releasing = releasing.addCallbacks(released, failed)
        self._releasing.addBoth(self._released, why)

    def _released(self, _: object, why: str) -> None:
        self._releasing = None
        if self._releaseAgain and not self._stopping:
            self.releaseHeld(why)

    def undrain(self, member: str | None = None, by: str = "an operator") -> None:
        """
        Consume the outbox again after L{drain}; the deliveries of a drain
        under way go on, no longer stopped at its time-out.

        @param member: the member of the cluster to undrain (this one or
            another); C{None}: every one.
        @param by: who asked, for the other members' logs.
        @raise ControlError: for a C{member} that is not alive.
        @raise NotTold: for another member, when it cannot be told.
        """
        if not self._toOtherMembers("undrain", member, by):
            self._undrainHere()

    def _undrainHere(self) -> None:
        if self._drainWait is not None:
            self._drainWait.cancel()
        self._draining = None
        if self.broker is not None:
            self.broker.resumeConsuming()
        self.log.warn("undrained: taking outbox messages again")

    def deliver(self, message: Message) -> Deferred[ResultEntry]:
        """
        Deliver one message now, without the outbox: the delivery core for
        programs that have their own queue.

        @return: a Deferred firing with the attempt's L{ResultEntry}.
        """
        return self.engine.deliver(message)

    def whenConnected(self) -> Deferred[None]:
        """
        @return: a Deferred firing once the service consumes the outbox
            (broker connected, queues declared).
        """
        if self.broker is not None:
            return self.broker.whenConnected()
        waiter: Deferred[None] = Deferred()
        self._brokerWaiters.append(waiter)
        return waiter

    def whenFailed(self) -> Deferred[None]:
        """
        Learn when the service cannot work any more, to stop the
        application: the service logs the failure as critical but goes on
        running, idle, until it is stopped.

        @return: a Deferred that errbacks with what stopped the service from
            working, at once if that has happened since it started: its
            private RabbitMQ node could not start (L{RabbitMQNotInstalled},
            L{RabbitMQStartFailed}) or ended while the service was running
            (L{RabbitMQEnded}), or the AMQP client could not be set up (any
            other exception).  Without such a failure it fires with C{None}
            when L{stopService} has finished (at once if it has).  Asked
            before the service starts, it waits for the start and what
            follows.
        """
        if self._failure is not None:
            return fail(self._failure)
        if self._stopped:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._failureWaiters.append(waiter)
        return waiter

    def startService(self) -> None:
        self._failure = None
        self._stopping = self._stopped = False
        super().startService()
        self.log.info(
            "mqtwist {version} starting: outbox {outbox}, plugins {plugins}",
            version=__version__,
            outbox=self.config.outbox,
            plugins=[plugin.name for plugin in self.plugins],
        )
        if self.localNode is not None:
            # first: a node that cannot start (one already runs on its data
            # directory) fails at once, and says so better than the journal
            # that the same other mqtwist holds
            self.localNode.whenEnded().addErrback(self._failed)
        try:
            # before the first message: a redelivered one is looked up in it
            self.journal.open()
        except DeliveryJournalError:
            self._failed(Failure())
            return
        ensureDeferred(self._startBroker()).addErrback(self._brokerFailed)

    def _brokerFailed(self, failure: Failure) -> None:
        waiters, self._brokerWaiters = self._brokerWaiters, []
        for waiter in waiters:
            waiter.errback(failure)
        self._failed(failure)

    def _failed(self, failure: Failure) -> None:
        if self._stopping or self._failure is not None:
            # a stop ends the start of the node and of the client; and a
            # node that could not start fails the client's start as well
            return
        self._failure = failure
        advice = _NODE_FAILURE_ADVICE.get(type(failure.value))
        if failure.check(DeliveryJournalError):
            self.log.critical("mqtwist cannot deliver: {error}", error=failure.value)
        elif failure.check(ListenFailed):
            self.log.critical(
                "mqtwist cannot listen: {error}\nWhat to do: free that port, or give the option "
                "another endpoint, then start mqtwist again.",
                error=failure.value,
            )
        elif advice is None:
            self.log.failure("mqtwist cannot deliver: could not start the AMQP client", failure)
        else:
            self.log.critical(
                "mqtwist cannot deliver without its broker: {error}\nWhat to do: {advice}",
                error=failure.value,
                advice=advice,
            )
        waiters, self._failureWaiters = self._failureWaiters, []
        for waiter in waiters:
            waiter.errback(failure)

    async def _startBroker(self) -> None:
        if self.brokerURL is None:
            assert self.localNode is not None
            self.brokerURL = await self.localNode.whenStarted()
        config = self.config
        # a priority queue orders the jobs by their AMQP priority, which
        # the copies put back in it keep (OutboxProcessor, delay queues)
        outboxArguments = {"x-max-priority": config.maxPriority} if config.maxPriority else {}
        queues = [self.schedule.queueSpec(config.outbox, outboxArguments)]
        queues += [
            self.schedule.queueSpec(name)
            for name in (
                config.results,
                config.success,
                config.failure,
                config.retry,
                config.deadLetterQueue,
                config.heldQueueName,
            )
            if name
        ]
        if config.dsnQueue and config.dsnQueue != config.outbox:
            queues.append(self.schedule.queueSpec(config.dsnQueue))
        if config.submission and config.submissionQueue and config.submissionQueue not in (
            config.outbox,
            config.dsnQueue,
        ):
            queues.append(self.schedule.queueSpec(config.submissionQueue))
        queues += self.schedule.delayQueues()
        self.processor = OutboxProcessor(
            config,
            self.engine.deliver,
            self,
            self.schedule,
            self.reactor,
            self.parseSettings,
            self.journal,
            metrics=self.metrics,
            controls=self.controls,
        )
        self.broker = BrokerClient(
            self.brokerURL,
            queues,
            consumeFrom=config.outbox,
            prefetch=config.prefetch,
            onDelivery=self.processor.handle,
            reactor=self.reactor,
            reconnectMaxDelay=config.reconnectMaxDelay,
            metrics=self.metrics,
            declareArguments=self.schedule.typeArguments,
            controlExchange=config.clusterExchangeName if self.cluster is not None else None,
            controlListener=self.cluster,
        )
        if self.cluster is not None:
            self.cluster.publisher = self.broker
        if self.running:
            self.broker.setServiceParent(self)
        # what a pause held before a restart goes again: the pause is forgotten
        self.broker.whenConnected().addCallbacks(lambda _: self.releaseHeld("mqtwist started"), lambda _: None)
        waiters, self._brokerWaiters = self._brokerWaiters, []
        for waiter in waiters:
            self.broker.whenConnected().chainDeferred(waiter)

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int | None = None,
        headers: Mapping[str, object] | None = None,
    ) -> Deferred[None]:
        """
        Publish to the broker with confirms (the L{OutboxProcessor}'s
        publisher).

        @return: a Deferred firing once the broker confirmed the message.
        """
        assert self.broker is not None
        return self.broker.publish(queue, body, priority=priority, headers=headers)

    async def _stopSubmission(self) -> None:
        """
        Stop taking mail in: no new connections, every session closed with
        421, those waiting for the broker's confirmation once answered (at
        most C{config.shutdownTimeout} seconds).
        """
        assert self.submission is not None
        for listener in self.submissionListeners:
            stopped = listener.stopService()
            if stopped is not None:
                await stopped
        closing = self.submission.closeAll()
        closing.addTimeout(self.config.shutdownTimeout, self.reactor)
        try:
            await closing
        except Exception:
            self.log.warn("submission sessions still waiting for the broker when stopping: closed")
            for connection in list(self.submission.connections):
                connection.transport.abortConnection()

    def stopService(self) -> Deferred[None]:
        """
        Stop consuming, let deliveries in flight finish (at most
        C{config.shutdownTimeout} seconds) and publish their results, close
        the SMTP connections, then the broker connection and the private
        node.

        @return: a Deferred firing when all of it is done.
        """
        self._stopping = True
        return ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.controls.stop()
        if self.submission is not None:
            await self._stopSubmission()
        if self.cluster is not None:
            # first: the others take this one's shares while it finishes
            self.cluster.stop()
        if self.broker is not None and self.broker.running:
            try:
                await self.broker.stopConsuming()
            except Exception as e:
                self.log.info("outbox consumer already gone: {error}", error=e)
        if self._releasing is not None:
            if self.broker is not None and self.broker.connected:
                # it moves what the held queue had when it began, each move
                # confirmed: what it has not moved yet stays held, for the
                # next start
                await self._releasing
            else:
                # it waits for a connection that the stop ends
                self._releasing.cancel()
        if self.processor is not None:
            await self.processor.drain(self.config.shutdownTimeout)
        await self.engine.close()
        self.journal.close()
        await super().stopService()
        self.log.info("mqtwist stopped")
        self._stopped = True
        waiters, self._failureWaiters = self._failureWaiters, []
        for waiter in waiters:
            waiter.callback(None)
