"""Send a channel's mail through its on-premises Exchange Server mailbox with EWS (exchangelib).

Each mail goes as its own MIME in a ``CreateItem`` with ``MessageDisposition="SendAndSaveCopy"``
(a copy is kept in the mailbox's Sent Items, as when an agent sends from Outlook). Exchange sends
the MIME as written, so our Message-ID, In-Reply-To, References, Auto-Submitted and signed
Reply-To survive; the service gives no other Message-ID, so none is reported.

Recipients: EWS has no envelope. Exchange sends a MIME message to the addresses in its To, Cc and
Bcc headers and never shows Bcc to the others. An envelope recipient missing from those headers is
added as a Bcc recipient of the item (it gets the mail and nobody sees it, as with an SMTP envelope);
an address in the headers that is not an envelope recipient would get a copy it should not, so such
a mail is refused (``PERMANENT``, naming the address) instead of being sent with rewritten headers.

Results: ``SENT`` once Exchange took the mail; ``HELD`` (not attempted, no attempt counted) while
the server throttles with a back-off (``ErrorServerBusy`` with ``BackOffMilliseconds``, a 503 with
``Retry-After``, the submission quota), together with the rest of the batch; ``TEMPORARY`` when the
server cannot be reached, times out or fails, or our own login, rights or settings are wrong (then
the rest of the batch waits too); ``PERMANENT`` when Exchange refuses the message itself (too large,
invalid recipients, MIME it cannot convert).
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import logging
import threading
from collections.abc import Sequence
from typing import Any

from exchangelib.folders import Root, SentItems
from exchangelib.items import SEND_AND_SAVE_COPY, SEND_TO_NONE, Message
from exchangelib.services import CreateItem

from helpdesk.config import MailboxConfig, resolve_secret
from helpdesk.mailboxes.base import ConfiguredMailbox, PermanentError, SecretResolver, TemporaryError
from helpdesk.mailboxes.ews import EwsClient, EwsProblem, Folders
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.transport import Delivery, DeliveryStatus, Envelope

log = logging.getLogger(__name__)


def header_recipients(data: bytes) -> tuple[set[str], set[str]]:
    """The addresses in To and Cc, and those in Bcc, of a MIME message (lower case)."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)

    def addresses(*names: str) -> set[str]:
        values = [str(v) for name in names for v in headers.get_all(name, [])]
        return {address.lower() for _name, address in email.utils.getaddresses(values) if address}

    return addresses("To", "Cc"), addresses("Bcc")


class EwsTransport:
    """Sends envelopes through one Exchange Server mailbox, one CreateItem request per mail."""

    def __init__(
        self, config: MailboxConfig, providers: Providers | None = None, secret: SecretResolver = resolve_secret
    ) -> None:
        self.config = config
        self.client = EwsClient(ConfiguredMailbox(config, secret, providers), secret)
        self._folders = Folders(config.mailbox_address)
        self._lock = threading.Lock()  # one request at a time over the mailbox's connection

    def close(self) -> None:
        with self._lock:
            self.client.close()

    def deliver(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """Send ``envelopes`` in order; one result per envelope."""
        results: list[Delivery] = []
        with self._lock:
            for index, envelope in enumerate(envelopes):
                delivery, server_wide = self._send(envelope)
                results.append(delivery)
                if server_wide:  # the server is not taking mail now: the rest waits as well
                    detail = f"not attempted: {delivery.detail}"
                    results.extend(
                        Delivery(e.key, delivery.status, detail, retry_in=delivery.retry_in)
                        for e in envelopes[index + 1 :]
                    )
                    self.client.close()
                    break
        self._log(results)
        return results

    def _send(self, envelope: Envelope) -> tuple[Delivery, bool]:
        """The outcome for one envelope, and whether it stands for the whole server."""

        def result(status: DeliveryStatus, detail: str, retry_in: float | None = None) -> Delivery:
            return Delivery(envelope.key, status, detail, retry_in=retry_in)

        wanted = {r.lower() for r in envelope.recipients if r}
        if not wanted:
            return result(DeliveryStatus.PERMANENT, "no recipients"), False
        shown, hidden = header_recipients(envelope.data)
        unwanted = (shown | hidden) - wanted
        if unwanted:
            return result(
                DeliveryStatus.PERMANENT,
                "EWS sends to every address in To, Cc and Bcc, and "
                f"{', '.join(sorted(unwanted))} is not a recipient of this mail; it was not sent",
            ), False
        extra = wanted - shown - hidden
        bcc = sorted(hidden | extra) if extra else None  # set only when needed: it replaces the MIME's Bcc
        try:
            answer = self.client.run(lambda account: self._create(account, envelope.data, bcc))
        except EwsProblem as failure:
            return self._failed(envelope, failure)
        except (TemporaryError, PermanentError) as exc:  # our credentials or token: keep the mail
            return result(DeliveryStatus.TEMPORARY, str(exc)), True
        if isinstance(answer, Exception):  # Exchange's answer about this one message
            problem = self.client.problem(answer)
            status = DeliveryStatus.PERMANENT if problem.kind == "message" else DeliveryStatus.TEMPORARY
            return result(status, problem.detail), False
        sent = f"sent through EWS {self.client.endpoint} as {self.config.mailbox_address}"
        return result(DeliveryStatus.SENT, sent), False

    def _failed(self, envelope: Envelope, problem: EwsProblem) -> tuple[Delivery, bool]:
        if problem.kind == "message":
            return Delivery(envelope.key, DeliveryStatus.PERMANENT, problem.detail), False
        if problem.kind == "busy":
            return Delivery(envelope.key, DeliveryStatus.HELD, f"held back: {problem.detail}",
                            retry_in=problem.retry_after), True
        return Delivery(envelope.key, DeliveryStatus.TEMPORARY, problem.detail), True

    def _create(self, account: Any, data: bytes, bcc: list[str] | None) -> Any:
        """One CreateItem: the MIME sent as it is, a copy saved to Sent Items; returns the item's answer."""
        root = Root(account=account, _distinguished_id=self._folders.distinguished("root"))
        sent = SentItems(root=root, _distinguished_id=self._folders.distinguished("sentitems"))
        message = Message(account=account, mime_content=data, bcc_recipients=bcc)
        answers = list(CreateItem(account=account).call(
            items=[message], folder=sent, message_disposition=SEND_AND_SAVE_COPY,
            send_meeting_invitations=SEND_TO_NONE,
        ))
        return answers[0] if answers else True

    def _log(self, results: Sequence[Delivery]) -> None:
        counts = {status: 0 for status in DeliveryStatus}
        for delivery in results:
            counts[delivery.status] += 1
        log.info(
            "ews %s: %d sent, %d deferred, %d failed, %d held back", self.config.user, counts[DeliveryStatus.SENT],
            counts[DeliveryStatus.TEMPORARY], counts[DeliveryStatus.PERMANENT], counts[DeliveryStatus.HELD],
        )
