"""The ``helpdesk mailbox test`` steps for an Exchange Server mailbox read through EWS."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from helpdesk.config import AfterImport, MailboxConfig, TlsMode
from helpdesk.mailboxes.base import PermanentError, SecretResolver, TemporaryError
from helpdesk.mailboxes.check import Run, StepFailed, _network_steps, _token_step
from helpdesk.mailboxes.ews import EwsMailbox, EwsProblem
from helpdesk.oauth.tokens import Providers


def check_ews(run: Run, cfg: MailboxConfig, secret: SecretResolver, providers: Providers, sends: bool) -> None:
    url = urlsplit(cfg.service_endpoint or "")
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    _network_steps(run, host, port, TlsMode.IMPLICIT if url.scheme == "https" else TlsMode.NONE, cfg)
    box = EwsMailbox(cfg, secret, providers)
    if cfg.auth == "oauth2":
        _token_step(run, box, "ews")

    def ews(work: Any) -> Any:
        try:
            return box.client.run(work)
        except EwsProblem as problem:
            raise StepFailed(problem.detail) from None
        except (PermanentError, TemporaryError) as exc:
            raise StepFailed(str(exc)) from None

    def open_folder() -> str:
        def first_page(account: Any) -> int:
            return len(box._sync(account, box.folders.resolve(account, cfg.folder, create=False), None).items)

        count = ews(first_page)
        return f"readable, {count} messages in the first sync page"

    def rights() -> str:
        if cfg.action is AfterImport.MOVE:
            ews(lambda account: box.folders.resolve(account, cfg.move_to, create=True))
            return f"{cfg.move_to} is there"
        if cfg.action is AfterImport.KEEP:
            return "nothing to do (after_import: keep)"
        return "granted with full access to the mailbox"

    def may_send() -> str:
        return "not checked without sending: CreateItem needs no more than the access the steps above proved"

    try:
        run.step(f"authenticate as {cfg.user} and open folder {cfg.folder} of {cfg.mailbox_address}", open_folder)
        run.step(f"may {cfg.action.value} messages", rights)
        if sends:
            run.step("may send", may_send)
    finally:
        box.close()
