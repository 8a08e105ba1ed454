"""Send each outgoing mail the way its channel is configured: through the SMTP relay, or through the
Microsoft 365 (Graph) or Exchange (EWS) mailbox named by the channel's ``send_through``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from helpdesk.config import Config, MailboxConfig
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.transport import Delivery, DeliveryStatus, Envelope, SmtpTransport


class Transport(Protocol):
    """What the sender needs from a transport: one result per envelope, in order."""

    def deliver(self, envelopes: Sequence[Envelope]) -> list[Delivery]: ...


def mailbox_transport(config: MailboxConfig, providers: Providers) -> Transport:
    """The sending side of a graph or ews mailbox."""
    if config.kind == "graph":
        from helpdesk.outbound.graph import GraphTransport

        return GraphTransport(config, providers)
    if config.kind == "ews":
        from helpdesk.outbound.ews import EwsTransport

        return EwsTransport(config, providers)
    raise ValueError(f"mailbox {config.name}: {config.kind} mailboxes cannot send")


class Router:
    """Groups envelopes by their sender (a channel address) and hands each group to its transport."""

    def __init__(
        self,
        config: Config,
        providers: Providers,
        for_mailbox: Callable[[MailboxConfig, Providers], Transport] = mailbox_transport,
    ) -> None:
        self.smtp: Transport = SmtpTransport(config.smtp, providers=providers)
        self._by_sender: dict[str, Transport] = {}
        made: dict[str, Transport] = {}
        for channel in config.channels:
            if channel.send_through is None:
                continue
            box = config.mailbox(channel.send_through)
            if box is None:
                continue
            if box.name not in made:
                made[box.name] = for_mailbox(box, providers)
            for address in channel.addresses:
                self._by_sender[address] = made[box.name]

    def transport_for(self, sender: str) -> Transport:
        return self._by_sender.get(sender.lower(), self.smtp)

    def deliver(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        groups: dict[int, tuple[Transport, list[Envelope]]] = {}
        for envelope in envelopes:
            transport = self.transport_for(envelope.sender)
            groups.setdefault(id(transport), (transport, []))[1].append(envelope)
        results: dict[int, Delivery] = {}
        for transport, group in groups.values():
            for delivery in transport.deliver(group):
                results[delivery.key] = delivery
        missing = Delivery(0, DeliveryStatus.TEMPORARY, "no result from the transport")
        return [results.get(e.key, Delivery(e.key, missing.status, missing.detail)) for e in envelopes]
