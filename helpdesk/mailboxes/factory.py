"""Build the adapter for a configured mailbox, sharing one set of token providers."""

from __future__ import annotations

from helpdesk.config import MailboxConfig
from helpdesk.mailboxes.base import Mailbox, PermanentError
from helpdesk.oauth.tokens import Providers


def make_mailbox(config: MailboxConfig, providers: Providers) -> Mailbox:
    if config.kind == "imap":
        from helpdesk.mailboxes.imap import ImapMailbox

        return ImapMailbox(config, providers=providers)
    if config.kind == "graph":
        from helpdesk.mailboxes.graph import GraphMailbox

        return GraphMailbox(config, providers=providers)
    if config.kind == "pop3":
        from helpdesk.mailboxes.pop3 import Pop3Mailbox

        return Pop3Mailbox(config, providers=providers)
    if config.kind == "ews":
        from helpdesk.mailboxes.ews import EwsMailbox

        return EwsMailbox(config, providers=providers)
    raise PermanentError(f"mailbox {config.name}: no adapter for {config.kind} mailboxes")
