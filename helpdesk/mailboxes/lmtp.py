"""LMTP (or SMTP) listener with aiosmtpd: the MTA delivers straight into the pipeline.

A recipient gets ``250`` only after the raw message is committed; if the database cannot take it,
every recipient gets ``451`` and the MTA keeps the mail queued and tries again. A redelivery of the
same bytes to the same recipients is recognised and answered ``250`` without a second ticket.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from helpdesk.config import Config, ListenerConfig
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.mail.threading import base_address

log = logging.getLogger(__name__)

SOURCE = "lmtp"


class DeliveryHandler:
    """aiosmtpd handler: accept our channel addresses, store and process in a worker thread."""

    def __init__(self, intake: Intake, config: Config) -> None:
        self.intake = intake
        self.addresses = config.all_own_addresses()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if base_address(address) not in self.addresses:
            return f"550 5.1.1 <{address}>: no such support address here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        recipients = tuple(envelope.rcpt_tos)
        digest = hashlib.sha256(data).hexdigest()
        key = f"{digest}:{','.join(sorted(a.lower() for a in recipients))}"
        incoming = Incoming(
            key=key,
            data=data,
            envelope_from=str(envelope.mail_from or "") or None,
            envelope_to=tuple(base_address(a) for a in recipients),
        )
        loop = asyncio.get_running_loop()
        try:
            stored = await loop.run_in_executor(None, self.intake.store, SOURCE, [incoming])
        except Exception:
            log.exception("could not store an LMTP delivery; asking the MTA to retry")
            return self._per_recipient(server, recipients, "451 4.3.0 temporary storage failure, try again")
        raw_id = stored[0][1]
        result = await loop.run_in_executor(None, self.intake.process, raw_id, key)
        log.info(
            "%s delivery stored as message %s: %s %s",
            "LMTP" if isinstance(server, LMTP) else "SMTP", raw_id, result.outcome, result.ticket_number or "",
        )
        return self._per_recipient(server, recipients, f"250 2.0.0 stored as message {raw_id}")

    @staticmethod
    def _per_recipient(server: SMTP, recipients: tuple[str, ...], status: str) -> str:
        """LMTP answers DATA once per accepted recipient; SMTP once in all."""
        if isinstance(server, LMTP):
            return "\r\n".join(status for _ in recipients) if recipients else status
        return status


class _Controller(Controller):
    def __init__(self, handler: DeliveryHandler, listener: ListenerConfig, **kwargs: Any) -> None:
        self.listener = listener
        super().__init__(
            handler,
            hostname=listener.host,
            port=listener.port,
            data_size_limit=listener.max_message_size,
            **kwargs,
        )

    def factory(self) -> SMTP:
        cls: Callable[..., SMTP] = LMTP if self.listener.protocol == "lmtp" else SMTP
        return cls(self.handler, data_size_limit=self.listener.max_message_size, decode_data=False)


class Listener:
    """Runs the listener in its own thread (aiosmtpd's Controller); ``port`` is the bound port."""

    def __init__(self, intake: Intake, config: Config) -> None:
        self.config = config.listener
        self._controller = _Controller(DeliveryHandler(intake, config), config.listener)

    def start(self) -> None:
        self._controller.start()
        log.info(
            "%s listener on %s:%s", self.config.protocol.upper(), self.config.host, self.port
        )

    @property
    def port(self) -> int:
        server = getattr(self._controller, "server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
        return self.config.port

    def stop(self) -> None:
        self._controller.stop()
