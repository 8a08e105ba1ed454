"""A private, throw-away Dovecot (IMAP + POP3) for tests.

``Dovecot`` runs the system's ``/usr/sbin/dovecot`` binary in the foreground
(``dovecot -F -c <conf>``) with its own configuration file, written into a fresh
temporary directory that also holds the run directory (sockets, pid file), the
state directory, the logs, the passwd-files and every user's Maildir.  Nothing
outside that directory is written and the system Dovecot service is never
touched, so several instances (e.g. one per pytest-xdist worker) can run side by
side.  Ports are free loopback ports picked at the first ``start()`` and kept
for the life of the object, so ``restart()`` brings the server back on the
same ports with the same mail.

Mail processes run as ``nobody``/``nogroup`` when the tests run as root
(Dovecot refuses mail access as UID 0), or as the current user otherwise.

Typical use::

    with Dovecot() as server:
        server.add_user("alice", "secret")
        uid = server.append("alice", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        with server.connect("alice") as imap:
            imap.select_folder("INBOX")

With ``oauth2_introspection_url`` the server also takes OAuth 2.0 bearer tokens (SASL XOAUTH2 and
OAUTHBEARER) through Dovecot's ``oauth2`` passdb, which asks that RFC 7662 introspection endpoint
(plain http) about every token and accepts it when the answer is ``active`` and its ``email``
is the login name. Passwords (PLAIN, LOGIN) keep going to the passwd-files.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import os
import poplib
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl as ssl_module
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from imapclient import IMAPClient
from imapclient.imap_utf7 import encode as _imap_utf7_encode

DOVECOT_BIN = Path(os.environ.get("HELPDESK_DOVECOT_BIN", "/usr/sbin/dovecot"))
# Debian's libexec directory; only used to give a precise "not installed" reason.
_DOVECOT_LIBEXEC = Path("/usr/lib/dovecot")
# Read-only DH parameters shipped by Debian's dovecot-core (used only with ssl=True).
_SYSTEM_DH = Path("/usr/share/dovecot/dh.pem")

_USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$")
_APPENDUID_RE = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]")
_LITERAL_RE = re.compile(rb"\{(\d+)\}\r\n$")

_MAIL_INDEX_FILES = (
    "dovecot-uidlist",
    "dovecot.index",
    "dovecot.index.log",
    "dovecot.index.log.2",
    "dovecot.index.cache",
)


class DovecotError(RuntimeError):
    """The test Dovecot could not be started, stopped or driven."""


def dovecot_available() -> str | None:
    """Return None when a Dovecot binary is installed, else the reason to skip."""
    if not (DOVECOT_BIN.is_file() and os.access(DOVECOT_BIN, os.X_OK)):
        return f"Dovecot not installed ({DOVECOT_BIN} missing; apt-get install dovecot-imapd dovecot-pop3d)"
    if _DOVECOT_LIBEXEC.is_dir():
        missing = [name for name in ("imap", "pop3") if not (_DOVECOT_LIBEXEC / name).exists()]
        if missing:
            return f"Dovecot lacks {' and '.join(missing)} (apt-get install dovecot-imapd dovecot-pop3d)"
    return None


class Dovecot:
    """Controller for one private Dovecot instance listening on 127.0.0.1.

    Attributes set at the first ``start()``: ``imap_port``, ``pop3_port`` and,
    with ``ssl=True``, ``imaps_port`` / ``pop3s_port`` (implicit TLS; the plain
    ports then also offer STARTTLS/STLS).  ``base_dir`` exists from
    construction on, so users can be added before the server starts.
    """

    host: str = "127.0.0.1"

    def __init__(
        self,
        *,
        ssl: bool = False,
        startup_timeout: float = 15.0,
        extra_config: str = "",
        keep_files: bool = False,
        parent_dir: str | Path | None = None,
        oauth2_introspection_url: str | None = None,
    ) -> None:
        """Create the temporary directory; nothing runs until ``start()``.

        ``extra_config`` is appended to the generated dovecot.conf (later settings
        win in Dovecot).  ``keep_files`` leaves ``base_dir`` behind on ``close()``
        for post-mortem debugging.  ``base_dir`` is created in ``parent_dir``
        (default: the system temp dir), which the unprivileged mail processes
        must be able to traverse.  ``oauth2_introspection_url`` turns on token
        logins (see the module docstring); it may also be set before a ``restart()``.
        """
        self.ssl = ssl
        self.oauth2_introspection_url = oauth2_introspection_url
        self.startup_timeout = startup_timeout
        self.extra_config = extra_config
        self.keep_files = keep_files

        self.base_dir = Path(tempfile.mkdtemp(prefix="helpdesk-dovecot-", dir=parent_dir))
        # The unprivileged mail and auth processes must be able to traverse it.
        self.base_dir.chmod(0o755)
        self.instance_name = f"hdtest-{secrets.token_hex(4)}"
        self.config_path = self.base_dir / "dovecot.conf"
        self.log_path = self.base_dir / "dovecot.log"
        self.oauth2_config_path = self.base_dir / "dovecot-oauth2.conf.ext"
        self.stderr_path = self.base_dir / "dovecot.stderr"
        self.passwd_dir = self.base_dir / "passwd.d"
        self.run_dir = self.base_dir / "run"
        self.state_dir = self.base_dir / "state"
        self.home_root = self.base_dir / "home"
        self.cert_path: Path | None = None
        self.key_path: Path | None = None

        self.imap_port = 0
        self.pop3_port = 0
        self.imaps_port: int | None = None
        self.pop3s_port: int | None = None

        self.users: dict[str, str] = {}

        if os.geteuid() == 0:
            # Dovecot never lets a mail process run as UID/GID 0.
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            for parent in self.base_dir.parents:
                if not parent.stat().st_mode & 0o001:
                    shutil.rmtree(self.base_dir)
                    raise DovecotError(
                        f"{parent} is not world-traversable, so Dovecot's mail processes "
                        f"(user nobody) cannot reach {self.base_dir}; pass parent_dir= or set TMPDIR"
                    )
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()

        self.state_dir.mkdir()
        self.passwd_dir.mkdir()
        self.home_root.mkdir()
        os.chown(self.home_root, self.mail_uid, self.mail_gid)

        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offsets: dict[Path, int] = {}
        self._kill_finalizer: weakref.finalize[[int, int], Dovecot] | None = None
        self._cleanup_finalizer = weakref.finalize(self, _remove_tree, self.base_dir, keep_files)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        """True while the Dovecot master process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the Dovecot master (also its process group id), if started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start Dovecot and wait until every port greets; no-op when running."""
        if self.running:
            return
        if self._proc is not None:  # died on its own: clean up what is left
            self.stop()
        first_start = self.imap_port == 0
        if self.ssl and self.cert_path is None:
            self._make_certificate()
        attempts = 3 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self._pick_ports()
            self._write_config()
            try:
                self._launch()
                self._wait_ready()
                return
            except _PortClash:
                self.stop()
                if attempt == attempts - 1:
                    raise DovecotError(
                        "Dovecot could not bind its ports "
                        f"(imap={self.imap_port}, pop3={self.pop3_port}, "
                        f"imaps={self.imaps_port}, pop3s={self.pop3s_port})\n" + self.log_tail()
                    ) from None
            except BaseException:
                self.stop()
                raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Dovecot and every process it spawned; keeps ports and mail.

        The whole process group gets SIGTERM at once, so mail processes say
        ``* BYE Server shutting down`` to connected clients as in a normal
        shutdown.  Once only the master is left it gets SIGKILL: it otherwise
        often idles ~1 s before exiting, with nothing left to clean up that
        matters here.  Anything still alive after 2 s gets SIGKILL.  Raises
        DovecotError if a process of this instance survives ``timeout`` seconds.
        """
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        if proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            grace_end = time.monotonic() + 2.0
            while proc.poll() is None:
                if not self._instance_pids(pgid) - {pgid}:
                    _kill(pgid, signal.SIGKILL)
                    break
                if time.monotonic() > grace_end:
                    _killpg(pgid, signal.SIGKILL)
                    break
                time.sleep(0.005)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise DovecotError(f"Dovecot master {pgid} did not exit") from None
        deadline = time.monotonic() + timeout
        while True:
            leftovers = self._instance_pids(pgid)
            if not leftovers:
                break
            for pid in leftovers:
                _kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise DovecotError(f"Dovecot processes still alive after stop: {sorted(leftovers)}")
            time.sleep(0.02)
        self._proc = None
        if self._kill_finalizer is not None:
            self._kill_finalizer.detach()
            self._kill_finalizer = None

    def restart(self) -> None:
        """Really stop and start the process: same ports, users and mail."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete ``base_dir`` (unless ``keep_files``)."""
        self.stop()
        self._cleanup_finalizer()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Dovecot {state} imap={self.imap_port} pop3={self.pop3_port} dir={self.base_dir}>"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the Dovecot log and of its stderr, for error messages."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            tail = "\n".join(text.splitlines()[-lines:])
            if tail:
                parts.append(f"--- {path} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts) if parts else "(no Dovecot log output)"

    # ---------------------------------------------------------------------- users

    def add_user(self, name: str, password: str) -> None:
        """Add (or re-password) a user; works before and after ``start()``.

        Names are case-insensitive (Dovecot lowercases logins); any password
        is allowed.  Each user has its own passwd-file, so a user added to a
        running server can log in at once.  Changing the password of an
        existing user while the server runs sleeps ~1 s, because Dovecot
        checks a passwd-file for changes at most once per second.
        """
        if not _USERNAME_RE.match(name):
            raise ValueError(f"unsupported test user name: {name!r}")
        key = name.lower()
        changed = key in self.users and self.users[key] != password
        self.users[key] = password
        home = self.home_root / key
        home.mkdir(exist_ok=True)
        os.chown(home, self.mail_uid, self.mail_gid)
        home.chmod(0o700)
        self._write_passwd(key, password)
        if changed and self.running:
            time.sleep(1.1)

    def password(self, user: str) -> str:
        """The password registered for ``user``."""
        try:
            return self.users[user.lower()]
        except KeyError:
            raise KeyError(f"unknown test user {user!r}; call add_user() first") from None

    def maildir_path(self, user: str, folder: str = "INBOX") -> Path:
        """On-disk Maildir++ directory of ``folder`` (which need not exist yet)."""
        root = self.home_root / user.lower() / "Maildir"
        if folder.upper() == "INBOX":
            return root
        parts = [_imap_utf7_encode(part).decode("ascii") for part in folder.split("/")]
        return root / ("." + ".".join(parts))

    # -------------------------------------------------------------------- clients

    def connect(self, user: str, password: str | None = None, *, timeout: float = 30.0) -> IMAPClient:
        """A logged-in IMAPClient on the plain IMAP port (usable as ``with``).

        Logs in with AUTHENTICATE PLAIN, which (unlike imaplib's LOGIN) copes
        with non-ASCII passwords.
        """
        client = IMAPClient(self.host, port=self._port("imap"), ssl=False, timeout=timeout)
        try:
            client.plain_login(user, self.password(user) if password is None else password)
        except BaseException:
            client.shutdown()
            raise
        return client

    def connect_pop3(self, user: str, password: str | None = None, *, timeout: float = 30.0) -> poplib.POP3:
        """A logged-in ``poplib.POP3`` on the plain POP3 port; call ``quit()``."""
        client = poplib.POP3(self.host, self._port("pop3"), timeout=timeout)
        try:
            client.user(user)
            client.pass_(self.password(user) if password is None else password)
        except BaseException:
            client.close()
            raise
        return client

    def ssl_context(self) -> ssl_module.SSLContext:
        """A client SSLContext that trusts this instance's self-signed certificate."""
        if self.cert_path is None:
            raise DovecotError("this Dovecot was created without ssl=True")
        return ssl_module.create_default_context(cafile=str(self.cert_path))

    # ------------------------------------------------------------- mail helpers

    def append(
        self,
        user: str,
        raw: bytes,
        folder: str = "INBOX",
        flags: Sequence[str] = (),
        msg_time: datetime | None = None,
    ) -> int:
        """IMAP APPEND one message (via imapclient); returns its UID (from APPENDUID)."""
        with self.connect(user) as client:
            response = client.append(folder, raw, flags=tuple(flags), msg_time=msg_time)
        uids = _parse_appenduid(response if isinstance(response, bytes) else b"")
        if len(uids) != 1:
            raise DovecotError(f"unexpected APPEND response: {response!r}")
        return uids[0]

    def append_many(
        self,
        user: str,
        raws: Iterable[bytes],
        folder: str = "INBOX",
        flags: Sequence[str] = (),
        *,
        batch_size: int = 500,
    ) -> list[int]:
        """Append many messages in order over one connection; returns their UIDs.

        Uses IMAP MULTIAPPEND with non-synchronising literals (LITERAL+) over a
        raw socket (imapclient has no MULTIAPPEND): the same server code path as
        any client APPEND, but one round trip per ``batch_size`` messages.  For
        1,000 messages of ~600 bytes: ~0.05-0.1 s on an idle disk, versus
        ~0.85 s for a loop of ``IMAPClient.append``.  All messages get the same
        ``flags``.
        """
        messages = list(raws)
        if not messages:
            return []
        flag_list = b"(" + " ".join(flags).encode("ascii") + b")"
        mailbox = _quote(_imap_utf7_encode(folder))
        uids: list[int] = []
        with _RawImap(self.host, self._port("imap")) as conn:
            conn.authenticate_plain(user, self.password(user))
            max_bytes = 16 * 1024 * 1024
            start = 0
            while start < len(messages):
                end, size = start, 0
                while end < len(messages) and end - start < batch_size and (end == start or size < max_bytes):
                    size += len(messages[end])
                    end += 1
                parts = [b"APPEND ", mailbox]
                for raw in messages[start:end]:
                    parts += [b" ", flag_list, b" {%d+}\r\n" % len(raw), raw]
                tagged = conn.command(b"".join(parts))
                got = _parse_appenduid(tagged)
                if len(got) != end - start:
                    raise DovecotError(f"APPEND of {end - start} messages answered {tagged!r}")
                uids += got
                start = end
            conn.command(b"LOGOUT")
        return uids

    def create_folder(self, user: str, name: str, *, subscribe: bool = False) -> None:
        """CREATE (and optionally SUBSCRIBE) a folder; ``/`` is the separator."""
        with self.connect(user) as client:
            client.create_folder(name)
            if subscribe:
                client.subscribe_folder(name)

    def message_count(self, user: str, folder: str = "INBOX") -> int:
        """Number of messages in ``folder`` (IMAP STATUS MESSAGES)."""
        with self.connect(user) as client:
            return int(client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"])

    def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """Current UIDVALIDITY of ``folder`` (IMAP STATUS UIDVALIDITY)."""
        with self.connect(user) as client:
            return int(client.folder_status(folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"])

    def list_folder(self, user: str, folder: str = "INBOX") -> list[tuple[int, tuple[str, ...]]]:
        """``[(uid, flags), ...]`` sorted by UID, read with EXAMINE (no side effects).

        Flags are strings in server order, without the session-dependent
        ``\\Recent``.
        """
        with self.connect(user) as client:
            client.select_folder(folder, readonly=True)
            # imapclient 4 drops FETCH results not listed explicitly: no "1:*".
            uids = client.search("ALL")
            data = client.fetch(uids, [b"FLAGS"]) if uids else {}
        return sorted(
            (int(uid), tuple(flag for f in item[b"FLAGS"] if (flag := _flag_str(f)) != "\\Recent"))
            for uid, item in data.items()
        )

    def fetch(self, user: str, folder: str = "INBOX") -> dict[int, bytes]:
        """``{uid: raw message}`` for every message (BODY.PEEK[], \\Seen untouched)."""
        with self.connect(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, [b"BODY.PEEK[]"]) if uids else {}
        return {int(uid): bytes(item[b"BODY[]"]) for uid, item in sorted(data.items())}

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        """Make Dovecot hand out a new UIDVALIDITY for ``folder``, keeping its mail.

        Stops the server (connected clients are dropped, as in a real server
        rebuild), deletes the folder's dovecot-uidlist and index files plus the
        mailbox-list index, and starts it again.  Dovecot then rescans the
        Maildir, renumbers the messages from UID 1 and takes the next value of
        the user's dovecot-uidvalidity counter, so the new UIDVALIDITY is
        guaranteed to differ.  Message files and flags are untouched.  Returns
        the new UIDVALIDITY.
        """
        if not self.running:
            raise DovecotError("reset_uidvalidity() needs a running server")
        path = self.maildir_path(user, folder)
        if not (path / "cur").is_dir():
            raise DovecotError(f"folder {folder!r} of {user!r} does not exist ({path})")
        old = self.uidvalidity(user, folder)
        self.stop()
        for name in _MAIL_INDEX_FILES:
            (path / name).unlink(missing_ok=True)
        root = self.maildir_path(user, "INBOX")
        for index in root.glob("dovecot.list.index*"):
            index.unlink()
        self.start()
        new = self.uidvalidity(user, folder)
        if new == old:
            raise DovecotError(f"UIDVALIDITY of {folder!r} did not change ({old})")
        return new

    # ------------------------------------------------------------------ internals

    def _port(self, name: str) -> int:
        port = {"imap": self.imap_port, "pop3": self.pop3_port}[name]
        if not port:
            raise DovecotError("Dovecot has not been started")
        return port

    def _write_passwd(self, user: str, password: str) -> None:
        path = self.passwd_dir / user
        # {PLAIN.b64}: base64 lets passwords contain ':' or anything else.
        encoded = base64.b64encode(password.encode()).decode("ascii")
        previous = path.stat().st_mtime_ns if path.exists() else 0
        tmp = path.with_name(f".{user}.tmp")
        tmp.write_text(f"{user}:{{PLAIN.b64}}{encoded}::::::\n")
        tmp.chmod(0o644)  # read by the auth process (user "dovecot")
        # Dovecot re-reads a passwd-file when its size or mtime (in seconds)
        # changed; force a new mtime second so a same-size rewrite is seen too.
        stamp = max(time.time_ns(), previous + 1_000_000_000)
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, path)

    def _pick_ports(self) -> None:
        count = 4 if self.ssl else 2
        sockets = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind((self.host, 0))
                sockets.append(sock)
            ports = [sock.getsockname()[1] for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        self.imap_port, self.pop3_port = ports[0], ports[1]
        if self.ssl:
            self.imaps_port, self.pop3s_port = ports[2], ports[3]

    def _make_certificate(self) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise DovecotError("ssl=True needs the openssl command")
        cert, key = self.base_dir / "cert.pem", self.base_dir / "key.pem"
        args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost"
        result = subprocess.run(
            [
                openssl,
                *args.split(),
                *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                *("-keyout", str(key), "-out", str(cert)),
            ],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            raise DovecotError(f"openssl failed: {result.stderr.decode(errors='replace')}")
        self.cert_path, self.key_path = cert, key

    def _write_config(self) -> None:
        as_root = os.geteuid() == 0
        lines = [
            "# Generated by tests/servers/dovecot.py for one test run; do not edit.",
            f"instance_name = {self.instance_name}",
            f"base_dir = {self.run_dir}",
            f"state_dir = {self.state_dir}",
            f"log_path = {self.log_path}",
            "protocols = imap pop3",
            f"listen = {self.host}",
            "shutdown_clients = yes",
            "",
            "disable_plaintext_auth = no",
            f"auth_mechanisms = plain login{' xoauth2 oauthbearer' if self.oauth2_introspection_url else ''}",
            "auth_failure_delay = 0",
            "auth_cache_size = 0",
            "auth_verbose = yes",
            "",
            "# Dovecot refuses mail access as root, whatever first_valid_uid says.",
            f"mail_uid = {self.mail_uid}",
            f"mail_gid = {self.mail_gid}",
            "first_valid_uid = 1",
            "first_valid_gid = 1",
            "mail_location = maildir:~/Maildir",
            "mail_fsync = never",
            "pop3_uidl_format = %08Xu%08Xv",  # uid + uidvalidity; Dovecot's %X is lowercase hex
            "",
            "namespace inbox {",
            "  inbox = yes",
            "  separator = /",
            "  mailbox Drafts {\n    special_use = \\Drafts\n  }",
            "  mailbox Sent {\n    special_use = \\Sent\n  }",
            "  mailbox Junk {\n    special_use = \\Junk\n  }",
            "  mailbox Trash {\n    special_use = \\Trash\n  }",
            "}",
            "",
            "passdb {",
            "  driver = passwd-file",
            "  # One file per user: a new user needs no re-read of a cached file.",
            f"  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u",
            *(["  mechanisms = plain login"] if self.oauth2_introspection_url else []),
            "}",
            *self._oauth2_passdb(),
            "userdb {",
            "  driver = static",
            f"  args = home={self.home_root}/%u",
            "}",
            "",
            "# No anvil-auth-penalty socket => no growing delay after failed logins.",
            "service anvil {",
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",
            "  }",
            *([] if as_root else ["  chroot ="]),
            "}",
            "protocol imap {",
            "  mail_max_userip_connections = 1000",
            "}",
            "protocol pop3 {",
            "  mail_max_userip_connections = 1000",
            "}",
        ]
        if not as_root:
            user = pwd.getpwuid(os.getuid()).pw_name
            group = grp.getgrgid(os.getgid()).gr_name
            lines += [
                f"default_internal_user = {user}",
                f"default_internal_group = {group}",
                f"default_login_user = {user}",
                "# chroot() needs root; these services chroot by default.",
                "service ipc {\n  chroot =\n}",
                "service old-stats {\n  chroot =\n}",
            ]
        if self.ssl:
            lines += ["", "ssl = yes", f"ssl_cert = <{self.cert_path}", f"ssl_key = <{self.key_path}"]
            if _SYSTEM_DH.is_file():
                lines.append(f"ssl_dh = <{_SYSTEM_DH}")
        else:
            lines += ["", "ssl = no"]
        for service, plain_name, plain_port, tls_name, tls_port in (
            ("imap-login", "imap", self.imap_port, "imaps", self.imaps_port),
            ("pop3-login", "pop3", self.pop3_port, "pop3s", self.pop3s_port),
        ):
            lines += [
                f"service {service} {{",
                f"  inet_listener {plain_name} {{",
                f"    address = {self.host}",
                f"    port = {plain_port}",
                "  }",
                f"  inet_listener {tls_name} {{",
                f"    address = {self.host}",
                f"    port = {tls_port or 0}",
                "    ssl = yes",
                "  }",
            ]
            if not as_root:
                lines.append("  chroot =")
            lines.append("}")
        if self.extra_config:
            lines += ["", "# extra_config", self.extra_config]
        self.config_path.write_text("\n".join(lines) + "\n")

    def _oauth2_passdb(self) -> list[str]:
        """The oauth2 passdb block (and its settings file) when token logins are on."""
        url = self.oauth2_introspection_url
        if not url:
            return []
        settings = [
            "# Written by tests/servers/dovecot.py: every token is checked by RFC 7662 introspection.",
            f"introspection_url = {url}",
            "introspection_mode = post",
            "force_introspection = yes",
            "username_attribute = email",
            "active_attribute = active",
            "active_value = true",
            "timeout_msecs = 10000",
        ]
        self.oauth2_config_path.write_text("\n".join(settings) + "\n")
        self.oauth2_config_path.chmod(0o644)  # read by the auth process
        return [
            "passdb {",
            "  driver = oauth2",
            "  mechanisms = xoauth2 oauthbearer",
            f"  args = {self.oauth2_config_path}",
            "}",
        ]

    def _launch(self) -> None:
        # A fresh run dir: no stale master.pid or sockets from a previous run.
        shutil.rmtree(self.run_dir, ignore_errors=True)
        # stop() may kill the master while it holds the dotlock on
        # state/instances; a stale lock would stall the next start for ~10 s.
        for lock in self.state_dir.glob("*.lock"):
            lock.unlink(missing_ok=True)
        self._log_offsets = {path: _size(path) for path in (self.log_path, self.stderr_path)}
        with open(self.stderr_path, "ab") as stderr:
            self._proc = subprocess.Popen(
                [str(DOVECOT_BIN), "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: stop() can kill it all
            )
        self._kill_finalizer = weakref.finalize(self, _killpg, self._proc.pid, signal.SIGKILL)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        pending: dict[int, tuple[bool, bytes]] = {
            self.imap_port: (False, b"* OK"),
            self.pop3_port: (False, b"+OK"),
        }
        if self.imaps_port and self.pop3s_port:
            pending[self.imaps_port] = (True, b"* OK")
            pending[self.pop3s_port] = (True, b"+OK")
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                if "Address already in use" in self._log_since_launch():
                    raise _PortClash
                raise DovecotError(f"Dovecot exited with code {code} during startup\n" + self.log_tail())
            if not pending:  # every port greeted and the master is still alive
                return
            for port, (tls, greeting) in list(pending.items()):
                if _greets(self.host, port, tls, greeting):
                    del pending[port]
            if not pending:
                continue  # re-check that the master (not some other process) answered
            if time.monotonic() > deadline:
                raise DovecotError(
                    f"Dovecot did not accept connections on ports {sorted(pending)} "
                    f"within {self.startup_timeout:.0f}s\n" + self.log_tail()
                )
            time.sleep(0.02)

    def _log_since_launch(self) -> str:
        text = ""
        for path, offset in self._log_offsets.items():
            try:
                with open(path, "rb") as log:
                    log.seek(offset)
                    text += log.read().decode(errors="replace")
            except FileNotFoundError:
                pass
        return text

    def _instance_pids(self, pgid: int) -> set[int]:
        """Live processes of this instance: its process group, or its names."""
        master_cmdline = f"{DOVECOT_BIN}\0-F\0-c\0{self.config_path}\0".encode()
        child_title = f"dovecot-{self.instance_name}/".encode()
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                stat = (entry / "stat").read_bytes()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if fields[0] in (b"Z", b"X"):  # zombies are dead already
                continue
            if int(fields[2]) == pgid or cmdline == master_cmdline or cmdline.startswith(child_title):
                found.add(int(entry.name))
        return found


class _PortClash(Exception):
    """Another process took one of the ports picked for Dovecot."""


class _RawImap:
    """Just enough IMAP over a socket for pipelined MULTIAPPEND."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rb")
        self._tag = 0
        greeting = self._file.readline()
        if not greeting.startswith(b"* OK"):
            self.close()
            raise DovecotError(f"unexpected IMAP greeting: {greeting!r}")

    def authenticate_plain(self, user: str, password: str) -> None:
        token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
        self.command(b"AUTHENTICATE PLAIN " + token)  # SASL-IR

    def command(self, command: bytes) -> bytes:
        """Send a command (literals must be LITERAL+); return the OK tagged line."""
        self._tag += 1
        tag = b"h%d" % self._tag
        self._sock.sendall(tag + b" " + command + b"\r\n")
        while True:
            line = self._read_response_line()
            if line.startswith(tag + b" "):
                status = line[len(tag) + 1 :]
                if not status.startswith(b"OK"):
                    raise DovecotError(f"IMAP {command[:60]!r}... failed: {status!r}")
                return status

    def _read_response_line(self) -> bytes:
        line = self._file.readline()
        if not line:
            raise DovecotError("IMAP server closed the connection")
        while (match := _LITERAL_RE.search(line)) is not None:
            line += self._file.read(int(match.group(1)))
            line += self._file.readline()
        return line

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _greets(host: str, port: int, tls: bool, greeting: bytes) -> bool:
    """True if a connection to ``port`` is answered with ``greeting``."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as raw:
            sock: socket.socket = raw
            if tls:
                context = ssl_module.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl_module.CERT_NONE
                sock = context.wrap_socket(raw)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(512)
                if not chunk:
                    break
                data += chunk
            if tls:
                sock.close()
            return data.startswith(greeting)
    except OSError:
        return False


def _parse_appenduid(response: bytes) -> list[int]:
    match = _APPENDUID_RE.search(response)
    if match is None:
        return []
    uids: list[int] = []
    for part in match.group(2).split(b","):
        low, _, high = part.partition(b":")
        first, last = int(low), int(high or low)
        step = 1 if last >= first else -1
        uids += range(first, last + step, step)
    return uids


def _quote(value: bytes) -> bytes:
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _flag_str(flag: object) -> str:
    return flag.decode() if isinstance(flag, bytes) else str(flag)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _remove_tree(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)
