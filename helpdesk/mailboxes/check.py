"""``helpdesk mailbox test NAME``: check a configured mailbox step by step, as the daemon will use it.

Each step is reported as OK (with what was found), FAIL (with the precise error and what to do), or
SKIP (an earlier step failed). The steps: resolve the host, connect, negotiate TLS, obtain a token
(OAuth), authenticate, open the folder, check the rights the configured after-import action needs
(move, flag, delete), and check that the channel's mail can be sent. Nothing is changed except that
a missing ``move_to`` folder is created, as the daemon would.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from helpdesk.config import AfterImport, ChannelConfig, Config, MailboxConfig, TlsMode, resolve_secret
from helpdesk.mailboxes.base import ConfiguredMailbox, PermanentError, SecretResolver, mailbox_password
from helpdesk.mailboxes.imap import tls_context
from helpdesk.oauth.explain import graph_advice, identity_advice
from helpdesk.oauth.tokens import Providers, TokenError


class StepFailed(Exception):
    def __init__(self, detail: str, advice: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.advice = advice


@dataclass
class Step:
    name: str
    status: str = "SKIP"  # OK, FAIL or SKIP
    detail: str = ""
    advice: str = ""


@dataclass
class Report:
    mailbox: str
    kind: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.status == "OK" for s in self.steps)

    def lines(self) -> list[str]:
        out = [f"mailbox {self.mailbox} ({self.kind})"]
        for step in self.steps:
            out.append(f"  {step.status:<4}  {step.name}" + (f": {step.detail}" if step.detail else ""))
            if step.advice:
                out.append(f"        -> {step.advice}")
        out.append("all checks passed" if self.ok else "the mailbox is not usable as configured")
        return out


class Run:
    """Runs steps in order; after the first failure the rest are reported as skipped."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.failed = False

    def step(self, name: str, action: Callable[[], str]) -> bool:
        """Run ``action`` (it returns what it found, or raises :class:`StepFailed`) unless a step failed."""
        step = Step(name)
        self.report.steps.append(step)
        if self.failed:
            return False
        try:
            step.detail = action()
        except StepFailed as exc:
            step.status, step.detail, step.advice = "FAIL", exc.detail, exc.advice
            self.failed = True
            return False
        step.status = "OK"
        return True


# --- shared steps ------------------------------------------------------------------------------------


def _resolve(host: str, port: int) -> str:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        advice = "check the host name and this server's DNS"
        raise StepFailed(f"cannot resolve {host}: {exc.strerror}", advice) from None
    return ", ".join(sorted({str(info[4][0]) for info in infos}))


def _connect(host: str, port: int, timeout: float) -> None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except TimeoutError:
        raise StepFailed(f"{host}:{port} did not answer within {timeout:g} s",
                         "a firewall may drop the connection; check host, port and outgoing rules") from None
    except OSError as exc:
        raise StepFailed(f"cannot connect to {host}:{port}: {exc.strerror or exc}",
                         "check the port and that the service listens there") from None


def _tls_handshake(host: str, port: int, context: ssl.SSLContext, timeout: float) -> str:
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return _describe_tls(tls)
    except ssl.SSLCertVerificationError as exc:
        raise StepFailed(f"the server's certificate is not trusted: {exc.verify_message}",
                         "use ca_file for a private CA, or fix the server's certificate") from None
    except (ssl.SSLError, OSError) as exc:
        raise StepFailed(f"TLS with {host}:{port} failed: {exc}",
                         "check tls (implicit or starttls) and the port") from None


def _describe_tls(tls: ssl.SSLSocket) -> str:
    cert = tls.getpeercert() or {}
    expires = cert.get("notAfter")
    return f"{tls.version()}, certificate valid until {expires}" if expires else str(tls.version())


def _token_step(run: Run, box: ConfiguredMailbox, protocol: Any) -> str | None:
    """Obtain a token; returns it (never printed) or None when the step failed or was skipped."""
    obtained: list[str] = []

    def obtain() -> str:
        try:
            provider = box.token_provider()
            scope = box.oauth_scope(protocol)
            obtained.append(provider.token(scope))
        except PermanentError as exc:
            raise StepFailed(str(exc)) from None
        except TokenError as exc:
            raise StepFailed(str(exc), identity_advice(str(exc), exc.codes) or "") from None
        roles = jwt_claims(obtained[0]).get("roles")
        return f"for {scope}" + (f", roles: {', '.join(roles)}" if isinstance(roles, list) else "")

    run.step("obtain OAuth token", obtain)
    return obtained[0] if obtained else None


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token, unverified (only to show the roles granted); {} otherwise."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


# --- IMAP and POP3 -------------------------------------------------------------------------------------


def _network_steps(run: Run, host: str, port: int, tls: str, cfg: MailboxConfig) -> None:
    """Resolve, connect and (implicit TLS) handshake; ``tls`` is implicit, starttls or none."""
    run.step(f"resolve {host}", lambda: _resolve(host, port))

    def connect() -> str:
        _connect(host, port, cfg.timeout)
        return ""

    def handshake() -> str:
        if tls == TlsMode.IMPLICIT:
            return _tls_handshake(host, port, tls_context(cfg.verify_tls, cfg.ca_file), cfg.timeout)
        if tls == TlsMode.STARTTLS:
            return "STARTTLS (checked while logging in)"
        return "none: credentials travel unencrypted"

    run.step(f"connect to {host}:{port}", connect)
    run.step("TLS", handshake)


def _check_mail_protocol(run: Run, cfg: MailboxConfig, secret: SecretResolver, providers: Providers) -> None:
    _network_steps(run, cfg.host or "", cfg.effective_port, cfg.tls.value, cfg)
    box = ConfiguredMailbox(cfg, secret, providers)
    token = _token_step(run, box, cfg.kind) if cfg.auth == "oauth2" else None
    if cfg.kind == "imap":
        _check_imap(run, cfg, box, token)
    else:
        _check_pop3(run, cfg, box, token)


def _check_sending(run: Run, config: Config, name: str, secret: SecretResolver, providers: Providers) -> None:
    """How the mailbox's channel sends: through another mailbox (checked there) or the SMTP relay,
    which is connected to and logged in to as sending would."""
    from helpdesk.outbound.transport import SmtpTransport, SmtpUnavailable

    channel = next(c for c, m in config.mailboxes() if m.name == name)
    if channel.send_through is not None:
        through = channel.send_through
        run.step("may send", lambda: f"channel {channel.name} sends through mailbox {through}: "
                                     f"check it with 'helpdesk mailbox test {through}'")
        return

    def probe() -> str:
        try:
            return SmtpTransport(config.smtp, secret, providers).probe()
        except SmtpUnavailable as exc:
            raise StepFailed(str(exc), "check the smtp: section (host, port, tls, user and its secret)") from None

    run.step("may send (SMTP relay)", probe)


def _credential(box: ConfiguredMailbox) -> str:
    try:
        return mailbox_password(box.config, box._secret)
    except PermanentError as exc:
        raise StepFailed(str(exc), "set the environment variable in the service's environment file") from None


def _check_imap(run: Run, cfg: MailboxConfig, box: ConfiguredMailbox, token: str | None) -> None:
    import imapclient
    from imapclient.exceptions import IMAPClientError, LoginError

    clients: list[Any] = []
    selected: dict[bytes, Any] = {}

    def authenticate() -> str:
        try:
            client = imapclient.IMAPClient(
                cfg.host or "", port=cfg.effective_port, ssl=cfg.tls is TlsMode.IMPLICIT,
                ssl_context=tls_context(cfg.verify_tls, cfg.ca_file), timeout=cfg.timeout,
            )
            clients.append(client)
            if cfg.tls is TlsMode.STARTTLS:
                client.starttls(tls_context(cfg.verify_tls, cfg.ca_file))
            if token is None:
                client.login(cfg.user, _credential(box))
                return "password"
            if cfg.sasl == "oauthbearer":
                client.oauthbearer_login(cfg.user, token)
                return "OAUTHBEARER"
            client.oauth2_login(cfg.user, token, mech="XOAUTH2")
            return "XOAUTH2"
        except LoginError as exc:
            raise StepFailed(f"login refused: {_text(exc)}", _login_advice(cfg)) from None
        except (OSError, IMAPClientError) as exc:
            raise StepFailed(f"{type(exc).__name__}: {exc}") from None

    def open_folder() -> str:
        try:
            selected.update(clients[0].select_folder(cfg.folder))
        except IMAPClientError as exc:
            raise StepFailed(f"cannot open {cfg.folder}: {_text(exc)}", "check folder (names are exact)") from None
        if b"READ-WRITE" not in selected and selected.get(b"READ-ONLY") is not None:
            raise StepFailed(f"{cfg.folder} opens read-only", "the account needs write access to the folder")
        return f"{int(selected.get(b'EXISTS', 0))} messages"

    try:
        run.step(f"authenticate as {cfg.user}", authenticate)
        run.step(f"open folder {cfg.folder}", open_folder)
        run.step(f"may {cfg.action.value} messages", lambda: _imap_rights(clients[0], cfg, selected))
    finally:
        for client in clients:
            try:
                client.logout()
            except Exception:  # the check's outcome is already recorded
                client.shutdown()


def _imap_rights(client: Any, cfg: MailboxConfig, selected: dict[bytes, Any]) -> str:
    """What the folder's PERMANENTFLAGS allow, and the move target (created when missing)."""
    from imapclient.exceptions import IMAPClientError

    action = cfg.action
    if action is AfterImport.KEEP:
        return "nothing to do (after_import: keep)"
    permanent = {bytes(f).lower() for f in selected.get(b"PERMANENTFLAGS", ())}
    flag = b"\\deleted" if action in (AfterImport.MOVE, AfterImport.DELETE) else cfg.flag.encode().lower()
    if permanent and flag not in permanent and b"\\*" not in permanent:
        raise StepFailed(f"the folder does not keep the flag {flag.decode()} (PERMANENTFLAGS: "
                         f"{' '.join(sorted(f.decode() for f in permanent))})",
                         "grant the account full access to the mailbox")
    if action is not AfterImport.MOVE:
        return f"{flag.decode()} can be set"
    try:
        if client.folder_exists(cfg.move_to):
            return f"{cfg.move_to} exists"
        client.create_folder(cfg.move_to)
    except IMAPClientError as exc:
        raise StepFailed(f"cannot create {cfg.move_to}: {_text(exc)}", "create the folder or change move_to") from None
    return f"created {cfg.move_to}"


def _check_pop3(run: Run, cfg: MailboxConfig, box: ConfiguredMailbox, token: str | None) -> None:
    import poplib

    from helpdesk.mailboxes.pop3 import Pop3Mailbox

    clients: list[poplib.POP3] = []

    def authenticate() -> str:
        try:
            clients.append(Pop3Mailbox(cfg, box._secret, box._providers)._connect())
        except PermanentError as exc:
            raise StepFailed(str(exc), _login_advice(cfg)) from None
        except Exception as exc:
            raise StepFailed(f"{type(exc).__name__}: {exc}") from None
        return "token" if token is not None else "password"

    def open_mailbox() -> str:
        count, size = clients[0].stat()
        clients[0].uidl()
        return f"{count} messages, {size} bytes; UIDL supported"

    def rights() -> str:
        if cfg.action is AfterImport.DELETE:
            return "POP3 deletes when the session ends; the server grants it to any logged-in user"
        return "nothing to do (after_import: keep)"

    try:
        run.step(f"authenticate as {cfg.user}", authenticate)
        run.step("open the mailbox", open_mailbox)
        run.step(f"may {cfg.action.value} messages", rights)
    finally:
        for client in clients:
            try:
                client.quit()
            except Exception:  # the check's outcome is already recorded
                client.close()


def _login_advice(cfg: MailboxConfig) -> str:
    if cfg.auth == "oauth2":
        return ("the token was refused: for Microsoft 365 register the app's service principal in Exchange Online "
                "(New-ServicePrincipal) and give it FullAccess to the mailbox; for Google the token's account must "
                "be the mailbox user")
    return "check user and the password in its environment variable"


def _text(exc: BaseException) -> str:
    text = str(exc)
    return text.removeprefix("b'").removesuffix("'") if text.startswith("b'") else text


# --- Microsoft Graph -----------------------------------------------------------------------------------


def _check_graph(run: Run, cfg: MailboxConfig, secret: SecretResolver, providers: Providers,
                 sends: bool) -> None:
    from helpdesk.mailboxes.graph import GraphMailbox
    from helpdesk.mailboxes.graphapi import GraphError

    url = urlsplit(cfg.graph_url)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    _network_steps(run, host, port, TlsMode.IMPLICIT if url.scheme == "https" else TlsMode.NONE, cfg)
    box = GraphMailbox(cfg, secret, providers)
    token = _token_step(run, box, "graph")
    roles = jwt_claims(token or "").get("roles")
    granted = set(roles) if isinstance(roles, list) else None
    folder = box.source_folder

    def graph_failure(exc: GraphError, what: str) -> StepFailed:
        advice = graph_advice(exc.status, exc.code) or identity_advice(exc.message) or ""
        return StepFailed(f"{what}: {exc}", advice)

    def missing(role: str) -> StepFailed:
        return StepFailed(f"the token grants {', '.join(sorted(granted or ())) or 'no roles'}",
                          f"add the {role} application permission (Microsoft Graph) and grant admin consent, "
                          f"or assign the 'Application {role}' role through RBAC for Applications")

    def open_folder() -> str:
        try:
            ref = box.folder_ref(folder, create=False)
            info = box.client.json("GET", f"/mailFolders/{ref}",
                                   params={"$select": "displayName,totalItemCount,unreadItemCount"})
            box.client.json("GET", f"/mailFolders/{ref}/messages/delta",
                            params={"$select": "id"}, headers={"Prefer": "odata.maxpagesize=1"})
        except GraphError as exc:
            raise graph_failure(exc, "Graph refused") from None
        return f"{info.get('displayName', folder)}: {info.get('totalItemCount', '?')} messages"

    def rights() -> str:
        if cfg.action is AfterImport.KEEP:
            return "nothing to do (after_import: keep)"
        if granted is not None and "Mail.ReadWrite" not in granted:
            raise missing("Mail.ReadWrite")
        if cfg.action is AfterImport.MOVE:
            try:
                box.folder_ref(cfg.move_to, create=True)
            except GraphError as exc:
                raise graph_failure(exc, f"cannot use folder {cfg.move_to}") from None
            return f"{cfg.move_to} is there"
        return "Mail.ReadWrite granted" if granted is not None else "roles not visible in the token"

    def may_send() -> str:
        if granted is not None and "Mail.Send" not in granted:
            raise missing("Mail.Send")
        return "Mail.Send granted" if granted is not None else "roles not visible in the token"

    try:
        run.step(f"open folder {cfg.folder} of {cfg.user}", open_folder)
        run.step(f"may {cfg.action.value} messages", rights)
        if sends:
            run.step("may send", may_send)
    finally:
        box.close()


# --- entry point ---------------------------------------------------------------------------------------



def _sending_channels(config: Config, name: str) -> list[ChannelConfig]:
    return [c for c in config.channels if c.send_through == name]


def check_mailbox(config: Config, name: str, secret: SecretResolver = resolve_secret,
                  providers: Providers | None = None) -> Report:
    box = config.mailbox(name)
    if box is None:
        known = ", ".join(m.name for _c, m in config.mailboxes()) or "none"
        raise KeyError(f"no mailbox named {name!r} (configured: {known})")
    providers = providers or Providers(config.oauth, secret)
    report = Report(box.name, f"{box.kind}, {box.user}")
    run = Run(report)
    sends = bool(_sending_channels(config, name))
    if box.kind in ("imap", "pop3"):
        _check_mail_protocol(run, box, secret, providers)
    elif box.kind == "graph":
        _check_graph(run, box, secret, providers, sends)
    else:
        from helpdesk.mailboxes.ews_check import check_ews

        check_ews(run, box, secret, providers, sends)
    if not sends:
        _check_sending(run, config, name, secret, providers)
    return report
