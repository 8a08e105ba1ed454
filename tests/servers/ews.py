"""A local Exchange Web Services endpoint for tests: the SOAP operations the EWS adapter uses.

``EwsServer`` answers ``POST /EWS/Exchange.asmx`` in a thread, over HTTP or (``tls=True``) HTTPS with
a self-signed certificate (``cert_path`` is the CA file clients must trust). It holds mailboxes with
folders and MIME items and answers, in the form Microsoft documents for Exchange Server 2016:
SyncFolderItems, GetItem (MIME content), MoveItem, UpdateItem (read flag), DeleteItem, FindFolder,
GetFolder, CreateFolder and CreateItem (a MIME message sent, recorded in ``mailbox.sent``). Requests
need HTTP Basic authentication with a mailbox's address and password, or a bearer token given to
``allow_token``; a refused login is a 401 as IIS sends it.

Sync states are opaque tokens naming the folder and a position in the mailbox's change log; a sync
from a state reports what changed since (created, deleted, read flag changed), at most
``MaxChangesReturned`` changes a response. Every request is recorded (``requests``), and failures
can be injected for the next request of an operation (``fail_next``): ErrorServerBusy with
BackOffMilliseconds (HTTP 500 SOAP fault), HTTP 503 (with Retry-After), a connection dropped
without an answer (the operation is not carried out), or an EWS error response. Besides:
``invalidate_sync_states`` (every earlier state is answered with ErrorInvalidSyncStateData) and
``report_twice`` (the next sync reports an item twice, and the one after reports it once more)::

    with EwsServer() as server:
        box = server.add_mailbox("support@example.test", "secret")
        box.deliver(mime)
        server.fail_next("MoveItem", Drop())
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.message
import email.parser
import email.policy
import email.utils
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from tests.servers.certs import make_self_signed
from tests.servers.running import Running

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
TNS = "http://schemas.microsoft.com/exchange/services/2006/types"
ENS = "http://schemas.microsoft.com/exchange/services/2006/errors"
PATH = "/ews/exchange.asmx"
VERSIONS = {"Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1", "Exchange2010_SP2",
            "Exchange2013", "Exchange2013_SP1", "Exchange2015", "Exchange2016"}
# The folders every mailbox has: distinguished id -> (display name, parent's distinguished id).
STANDARD_FOLDERS = {
    "root": ("", None),
    "msgfolderroot": ("Top of Information Store", "root"),
    "inbox": ("Inbox", "msgfolderroot"),
    "sentitems": ("Sent Items", "msgfolderroot"),
    "deleteditems": ("Deleted Items", "msgfolderroot"),
    "drafts": ("Drafts", "msgfolderroot"),
}


def _t(name: str) -> str:
    return f"{{{TNS}}}{name}"


def _m(name: str) -> str:
    return f"{{{MNS}}}{name}"


def _new_id() -> str:
    """An id shaped like Exchange's: base64 with '+', '/' and '=' in it."""
    return base64.b64encode(b"\x00\x00" + os.urandom(43)).decode("ascii")


# --- faults --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Busy:
    """HTTP 500 with the ErrorServerBusy SOAP fault and its BackOffMilliseconds hint."""

    back_off_ms: int = 500


@dataclass(frozen=True)
class Unavailable:
    """HTTP 503 as IIS answers when its request queue is full; ``retry_after`` in seconds if given."""

    retry_after: int | None = None


@dataclass(frozen=True)
class Drop:
    """The connection is closed without an answer; the operation is not carried out."""


@dataclass(frozen=True)
class ErrorResponse:
    """Every response message of the operation is this EWS error (``ResponseClass="Error"``)."""

    code: str
    text: str = "The request failed."


Fault = Busy | Unavailable | Drop | ErrorResponse


# --- the store -----------------------------------------------------------------------------------


@dataclass
class StoredFolder:
    id: str
    name: str
    parent: str | None
    distinguished: str | None = None
    changekey: str = field(default_factory=lambda: _new_id()[:16])


@dataclass
class StoredItem:
    id: str
    folder: str
    mime: bytes
    is_read: bool
    created: int  # change-log position at which it appeared in its folder
    removed: int | None = None  # ... and at which it left (moved or deleted)
    read_changed: int = 0
    changekey: str = field(default_factory=lambda: _new_id()[:20])


@dataclass
class SentMail:
    """A message CreateItem sent: the MIME as received and who Exchange would send it to."""

    mime: bytes
    to: list[str]
    cc: list[str]
    bcc: list[str]
    disposition: str

    @property
    def recipients(self) -> list[str]:
        return self.to + self.cc + self.bcc


class ExchangeMailbox:
    """One mailbox: standard folders, folders made by tests or clients, items and a change log."""

    def __init__(self, address: str, password: str) -> None:
        self.address = address
        self.password = password
        self.folders: dict[str, StoredFolder] = {}
        self.items: dict[str, StoredItem] = {}
        self.sent: list[SentMail] = []
        self.seq = 0
        self.lock = threading.RLock()
        ids: dict[str, str] = {}
        for distinguished, (name, parent) in STANDARD_FOLDERS.items():
            ids[distinguished] = _new_id()
            self.folders[ids[distinguished]] = StoredFolder(
                ids[distinguished], name, ids[parent] if parent else None, distinguished
            )

    def tick(self) -> int:
        self.seq += 1
        return self.seq

    def folder(self, path: str) -> StoredFolder:
        """A folder by distinguished id (``inbox``) or display-name path under msgfolderroot."""
        with self.lock:
            found = self.distinguished(path.lower())
            if found is not None:
                return found
            current = self.distinguished("msgfolderroot")
            assert current is not None
            for part in path.split("/"):
                child = self.child(current.id, part)
                if child is None:
                    raise KeyError(f"no folder {path!r} in {self.address}")
                current = child
            return current

    def distinguished(self, name: str) -> StoredFolder | None:
        return next((f for f in self.folders.values() if f.distinguished == name), None)

    def child(self, parent: str, name: str) -> StoredFolder | None:
        return next(
            (f for f in self.folders.values() if f.parent == parent and f.name.casefold() == name.casefold()), None
        )

    def add_folder(self, name: str, parent: str = "msgfolderroot") -> StoredFolder:
        with self.lock:
            made = StoredFolder(_new_id(), name, self.folder(parent).id)
            self.folders[made.id] = made
            return made

    def deliver(self, mime: bytes, folder: str = "inbox", is_read: bool = False) -> str:
        """Put a message into a folder (as the transport does); returns its item id."""
        with self.lock:
            item = StoredItem(_new_id(), self.folder(folder).id, mime, is_read, self.tick())
            self.items[item.id] = item
            return item.id

    def present(self, folder: str = "inbox") -> list[StoredItem]:
        """The items in a folder now, oldest first."""
        with self.lock:
            target = self.folder(folder).id
            return [i for i in self.items.values() if i.folder == target and i.removed is None]

    def count(self, folder: str = "inbox") -> int:
        try:
            return len(self.present(folder))
        except KeyError:
            return 0

    def move(self, item: StoredItem, folder_id: str) -> StoredItem:
        """Exchange gives a moved item a new id in its new folder."""
        item.removed = self.tick()
        moved = StoredItem(_new_id(), folder_id, item.mime, item.is_read, self.tick())
        self.items[moved.id] = moved
        return moved

    def live(self, item_id: str) -> StoredItem | None:
        item = self.items.get(item_id)
        return item if item is not None and item.removed is None else None


@dataclass
class Recorded:
    """One request as the server saw it."""

    operation: str
    user: str | None  # None: the login was refused (HTTP 401)
    at: float  # time.monotonic()
    body: bytes


# --- the server ----------------------------------------------------------------------------------


class EwsServer(Running):
    """A threaded HTTP(S) server speaking the EWS operations above; see the module docstring."""

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = 0
        self.mailboxes: dict[str, ExchangeMailbox] = {}
        self.tokens: dict[str, str] = {}
        self.requests: list[Recorded] = []
        self.cert_path: Path | None = None
        self._faults: list[tuple[str | None, Fault]] = []
        self._generation = 1
        self._twice_pending = False
        self._repeat: list[tuple[str, str]] = []  # (mailbox, item id) to report again in the next sync
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._tmp: Path | None = None
        self._connections: set[socket.socket] = set()

    # --- setup -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/EWS/Exchange.asmx"

    def add_mailbox(self, address: str, password: str) -> ExchangeMailbox:
        with self._lock:
            box = ExchangeMailbox(address, password)
            self.mailboxes[address.lower()] = box
            return box

    def allow_token(self, token: str, address: str) -> None:
        """Accept ``Authorization: Bearer <token>`` for the mailbox ``address``."""
        with self._lock:
            self.tokens[token] = address.lower()

    def fail_next(self, operation: str | None, fault: Fault) -> None:
        """The next request of ``operation`` (any operation: None) fails with ``fault``."""
        with self._lock:
            self._faults.append((operation, fault))

    def invalidate_sync_states(self) -> None:
        """Every sync state handed out so far is refused with ErrorInvalidSyncStateData."""
        with self._lock:
            self._generation += 1

    def report_twice(self) -> None:
        """The next sync reports its first new item twice; the sync after that reports it again."""
        with self._lock:
            self._twice_pending = True

    def operations(self, name: str | None = None) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if name is None or r.operation == name]

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        httpd = _HttpServer((self.host, self.port), _Handler)
        httpd.ews = self
        if self.tls:
            self._tmp = Path(tempfile.mkdtemp(prefix="ews-test-"))
            cert, key = make_self_signed(self._tmp)
            self.cert_path = cert
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert, key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ews-test-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        with self._lock:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- request handling (called from the handler threads) --------------------------------------

    def authenticate(self, header: str | None) -> ExchangeMailbox | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        with self._lock:
            if scheme.lower() == "basic":
                try:
                    user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
                except (binascii.Error, UnicodeDecodeError):
                    return None
                box = self.mailboxes.get(user.lower())
                return box if box is not None and box.password == password else None
            if scheme.lower() == "bearer":
                address = self.tokens.get(value.strip())
                return self.mailboxes.get(address) if address else None
        return None

    def record(self, operation: str, user: str | None, body: bytes, refused: bool = False) -> Fault | None:
        """Record a request; the fault injected for it, if any (none for a refused login)."""
        with self._lock:
            self.requests.append(Recorded(operation, user, time.monotonic(), body))
            if refused:
                return None
            for index, (wanted, fault) in enumerate(self._faults):
                if wanted is None or wanted == operation:
                    del self._faults[index]
                    return fault
        return None

    def answer(
        self, operation: str, request: ET.Element, box: ExchangeMailbox, fault: Fault | None
    ) -> tuple[int, bytes]:
        """The HTTP status and SOAP response to one operation."""
        version = request.find(f"{{{SOAP}}}Header/{_t('RequestServerVersion')}")
        if version is not None and version.get("Version") not in VERSIONS:
            return 500, soap_fault("ErrorInvalidServerVersion", "The specified server version is invalid.")
        body = request.find(f"{{{SOAP}}}Body/{_m(operation)}")
        assert body is not None
        handler = getattr(self, f"_op_{operation}", None)
        if handler is None:
            return 500, soap_fault("ErrorInvalidOperation", f"the test endpoint does not implement {operation}")
        with box.lock:
            messages: list[str] = handler(body, box, fault if isinstance(fault, ErrorResponse) else None)
        return 200, envelope(
            f'<m:{operation}Response xmlns:m="{MNS}" xmlns:t="{TNS}"><m:ResponseMessages>'
            f"{''.join(messages)}</m:ResponseMessages></m:{operation}Response>"
        )

    # --- folders ---------------------------------------------------------------------------------

    @staticmethod
    def _folder_by_id(element: ET.Element, box: ExchangeMailbox) -> StoredFolder | None:
        if element.tag == _t("DistinguishedFolderId"):
            return box.distinguished(element.get("Id", ""))
        if element.tag == _t("FolderId"):
            return box.folders.get(element.get("Id", ""))
        return None

    def _folder_of(self, container: ET.Element | None, box: ExchangeMailbox) -> StoredFolder | None:
        """The folder named by the first folder id inside ``container``."""
        if container is None or len(container) == 0:
            return None
        return self._folder_by_id(container[0], box)

    @staticmethod
    def _folder_xml(folder: StoredFolder, box: ExchangeMailbox) -> str:
        count = sum(1 for i in box.items.values() if i.folder == folder.id and i.removed is None)
        children = sum(1 for f in box.folders.values() if f.parent == folder.id)
        return (
            f"<t:Folder><t:FolderId Id={quoteattr(folder.id)} ChangeKey={quoteattr(folder.changekey)}/>"
            f"<t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{escape(folder.name)}</t:DisplayName>"
            f"<t:TotalCount>{count}</t:TotalCount><t:ChildFolderCount>{children}</t:ChildFolderCount></t:Folder>"
        )

    def _op_GetFolder(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        out = []
        ids = body.find(_m("FolderIds"))
        for element in list(ids) if ids is not None else []:
            folder = self._folder_by_id(element, box)
            if error is not None or folder is None:
                code = error or ErrorResponse("ErrorFolderNotFound", "The specified folder could not be found.")
                out.append(error_message("GetFolder", code, "<m:Folders/>"))
            else:
                out.append(ok_message("GetFolder", f"<m:Folders>{self._folder_xml(folder, box)}</m:Folders>"))
        return out

    def _op_FindFolder(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        parent = self._folder_of(body.find(_m("ParentFolderIds")), box)
        if error is not None or parent is None:
            code = error or ErrorResponse("ErrorFolderNotFound", "The specified folder could not be found.")
            return [error_message("FindFolder", code)]
        deep = body.get("Traversal") == "Deep"
        found, todo = [], [parent.id]
        while todo:
            current = todo.pop(0)
            for folder in box.folders.values():
                if folder.parent == current:
                    found.append(folder)
                    if deep:
                        todo.append(folder.id)
        view = body.find(_m("IndexedPageFolderView"))
        offset = int(view.get("Offset", "0")) if view is not None else 0
        limit = int(view.get("MaxEntriesReturned", "1000")) if view is not None else 1000
        page = found[offset : offset + limit]
        last = offset + len(page) >= len(found)
        folders = "".join(self._folder_xml(f, box) for f in page)
        return [ok_message(
            "FindFolder",
            f'<m:RootFolder IndexedPagingOffset="{offset + len(page)}" TotalItemsInView="{len(found)}" '
            f'IncludesLastItemInRange="{str(last).lower()}"><t:Folders>{folders}</t:Folders></m:RootFolder>',
        )]

    def _op_CreateFolder(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        parent = self._folder_of(body.find(_m("ParentFolderId")), box)
        out = []
        for element in body.findall(f"{_m('Folders')}/{_t('Folder')}"):
            name = element.findtext(_t("DisplayName")) or ""
            if error is not None or parent is None:
                code = error or ErrorResponse("ErrorFolderNotFound", "The specified folder could not be found.")
                out.append(error_message("CreateFolder", code, "<m:Folders/>"))
            elif box.child(parent.id, name) is not None:
                code = ErrorResponse("ErrorFolderExists", "A folder with the specified name already exists.")
                out.append(error_message("CreateFolder", code, "<m:Folders/>"))
            else:
                made = StoredFolder(_new_id(), name, parent.id)
                box.folders[made.id] = made
                out.append(ok_message(
                    "CreateFolder",
                    f"<m:Folders><t:Folder><t:FolderId Id={quoteattr(made.id)} "
                    f"ChangeKey={quoteattr(made.changekey)}/></t:Folder></m:Folders>",
                ))
        return out

    # --- items -----------------------------------------------------------------------------------

    @staticmethod
    def _item_ids(body: ET.Element, container: str = "ItemIds") -> list[str]:
        return [e.get("Id", "") for e in body.findall(f"{_m(container)}/{_t('ItemId')}")]

    @staticmethod
    def _wanted(shape: ET.Element | None) -> set[str]:
        if shape is None:
            return set()
        wanted = {e.get("FieldURI", "") for e in shape.iter(_t("FieldURI"))}
        if (shape.findtext(_t("IncludeMimeContent")) or "").lower() == "true":
            wanted.add("item:MimeContent")
        return wanted

    def _op_SyncFolderItems(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        folder = self._folder_of(body.find(_m("SyncFolderId")), box)
        state = body.findtext(_m("SyncState"))
        if error is not None or folder is None:
            code = error or ErrorResponse("ErrorFolderNotFound", "The specified folder could not be found.")
            return [error_message("SyncFolderItems", code, self._no_changes())]
        watermark = self._watermark(state, folder, box) if state else 0
        if watermark is None:
            text = "Synchronization state data is corrupt or otherwise invalid."
            code = ErrorResponse("ErrorInvalidSyncStateData", text)
            return [error_message("SyncFolderItems", code, self._no_changes())]
        limit = int(body.findtext(_m("MaxChangesReturned")) or "512")
        changes = self._changes(folder, watermark, box)
        page = changes[:limit]
        last = len(changes) <= limit
        new_mark = page[-1][0] if not last else box.seq
        wanted = self._wanted(body.find(_m("ItemShape")))
        parts = [self._change_xml(kind, item, wanted) for _seq, kind, item in page]
        with self._lock:
            repeat = [box.items[i] for a, i in self._repeat if a == box.address.lower() and i in box.items]
            self._repeat = [(a, i) for a, i in self._repeat if a != box.address.lower()]
            first = next((item for _seq, kind, item in page if kind == "Create"), None)
            if self._twice_pending and first is not None:
                self._twice_pending = False
                parts.append(self._change_xml("Create", first, wanted))
                self._repeat.append((box.address.lower(), first.id))
        parts = [self._change_xml("Create", item, wanted) for item in repeat] + parts
        token = self._state(folder, new_mark)
        return [ok_message(
            "SyncFolderItems",
            f"<m:SyncState>{token}</m:SyncState><m:IncludesLastItemInRange>{str(last).lower()}"
            f"</m:IncludesLastItemInRange><m:Changes>{''.join(parts)}</m:Changes>",
        )]

    @staticmethod
    def _no_changes() -> str:
        return "<m:SyncState/><m:IncludesLastItemInRange>true</m:IncludesLastItemInRange>"

    def _state(self, folder: StoredFolder, mark: int) -> str:
        raw = json.dumps({"f": folder.id, "w": mark, "g": self._generation}).encode()
        return base64.b64encode(raw).decode("ascii")

    def _watermark(self, state: str, folder: StoredFolder, box: ExchangeMailbox) -> int | None:
        try:
            data = json.loads(base64.b64decode(state.encode("ascii"), validate=True))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict) or data.get("f") != folder.id or data.get("g") != self._generation:
            return None
        mark = data.get("w")
        return mark if isinstance(mark, int) and 0 <= mark <= box.seq else None

    @staticmethod
    def _changes(folder: StoredFolder, mark: int, box: ExchangeMailbox) -> list[tuple[int, str, StoredItem]]:
        """What changed in ``folder`` after ``mark``, one change per item, in log order."""
        out: list[tuple[int, str, StoredItem]] = []
        for item in box.items.values():
            if item.folder != folder.id:
                continue
            if item.created > mark and item.removed is None:
                out.append((item.created, "Create", item))
            elif item.created <= mark and item.removed is not None and item.removed > mark:
                out.append((item.removed, "Delete", item))
            elif item.created <= mark and item.removed is None and item.read_changed > mark:
                out.append((item.read_changed, "ReadFlagChange", item))
        return sorted(out, key=lambda change: change[0])

    @staticmethod
    def _change_xml(kind: str, item: StoredItem, wanted: set[str]) -> str:
        item_id = f"<t:ItemId Id={quoteattr(item.id)} ChangeKey={quoteattr(item.changekey)}/>"
        if kind == "Delete":
            return f"<t:Delete>{item_id}</t:Delete>"
        if kind == "ReadFlagChange":
            return f"<t:ReadFlagChange>{item_id}<t:IsRead>{str(item.is_read).lower()}</t:IsRead></t:ReadFlagChange>"
        extra = ""
        if "item:Size" in wanted:
            extra += f"<t:Size>{len(item.mime)}</t:Size>"
        if "message:IsRead" in wanted:
            extra += f"<t:IsRead>{str(item.is_read).lower()}</t:IsRead>"
        return f"<t:{kind}><t:Message>{item_id}{extra}</t:Message></t:{kind}>"

    def _op_GetItem(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        wanted = self._wanted(body.find(_m("ItemShape")))
        out = []
        for item_id in self._item_ids(body):
            item = box.live(item_id)
            if error is not None or item is None:
                out.append(error_message("GetItem", error or not_found(), "<m:Items/>"))
                continue
            mime = ""
            if "item:MimeContent" in wanted:
                mime = f'<t:MimeContent CharacterSet="UTF-8">{base64.b64encode(item.mime).decode()}</t:MimeContent>'
            out.append(ok_message(
                "GetItem",
                f"<m:Items><t:Message>{mime}<t:ItemId Id={quoteattr(item.id)} "
                f"ChangeKey={quoteattr(item.changekey)}/></t:Message></m:Items>",
            ))
        return out

    def _op_MoveItem(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        target = self._folder_of(body.find(_m("ToFolderId")), box)
        out = []
        for item_id in self._item_ids(body):
            item = box.live(item_id)
            if error is not None or item is None or target is None:
                out.append(error_message("MoveItem", error or not_found(), "<m:Items/>"))
                continue
            moved = box.move(item, target.id)
            out.append(ok_message(
                "MoveItem",
                f"<m:Items><t:Message><t:ItemId Id={quoteattr(moved.id)} "
                f"ChangeKey={quoteattr(moved.changekey)}/></t:Message></m:Items>",
            ))
        return out

    def _op_UpdateItem(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        out = []
        for change in body.findall(f"{_m('ItemChanges')}/{_t('ItemChange')}"):
            element = change.find(_t("ItemId"))
            item = box.live(element.get("Id", "") if element is not None else "")
            if error is not None or item is None:
                out.append(error_message("UpdateItem", error or not_found(), "<m:Items/>"))
                continue
            for update in change.iter(_t("SetItemField")):
                uri = update.find(_t("FieldURI"))
                value = update.findtext(f".//{_t('IsRead')}")
                if uri is not None and uri.get("FieldURI") == "message:IsRead" and value is not None:
                    read = value.strip().lower() in ("1", "true")
                    if read != item.is_read:
                        item.is_read = read
                        item.read_changed = box.tick()
            out.append(ok_message(
                "UpdateItem",
                f"<m:Items><t:Message><t:ItemId Id={quoteattr(item.id)} ChangeKey={quoteattr(item.changekey)}/>"
                "</t:Message></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
            ))
        return out

    def _op_DeleteItem(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        out = []
        trash = box.distinguished("deleteditems")
        for item_id in self._item_ids(body):
            item = box.live(item_id)
            if error is not None or item is None:
                out.append(error_message("DeleteItem", error or not_found()))
                continue
            if body.get("DeleteType") == "MoveToDeletedItems" and trash is not None:
                box.move(item, trash.id)
            else:
                item.removed = box.tick()
            out.append(ok_message("DeleteItem"))
        return out

    def _op_CreateItem(self, body: ET.Element, box: ExchangeMailbox, error: ErrorResponse | None) -> list[str]:
        disposition = body.get("MessageDisposition", "SaveOnly")
        saved = self._folder_of(body.find(_m("SavedItemFolderId")), box)
        out = []
        for message in body.findall(f"{_m('Items')}/{_t('Message')}"):
            if error is not None:
                out.append(error_message("CreateItem", error, "<m:Items/>"))
                continue
            mime = base64.b64decode(message.findtext(_t("MimeContent")) or "")
            headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(mime)

            def listed(name: str, headers: email.message.Message = headers, message: ET.Element = message) -> list[str]:
                given = message.find(_t(f"{name}Recipients"))
                if given is not None:  # properties given with the MIME replace what the MIME says
                    return [e.text or "" for e in given.iter(_t("EmailAddress"))]
                values = [str(v) for v in headers.get_all(name, [])]
                return [address for _n, address in email.utils.getaddresses(values) if address]

            sent = SentMail(mime, listed("To"), listed("Cc"), listed("Bcc"), disposition)
            if disposition in ("SendOnly", "SendAndSaveCopy"):
                box.sent.append(sent)
            if disposition != "SendOnly":
                target = saved or box.distinguished("drafts" if disposition == "SaveOnly" else "sentitems")
                assert target is not None
                stored = StoredItem(_new_id(), target.id, mime, disposition != "SaveOnly", box.tick())
                box.items[stored.id] = stored
            out.append(ok_message("CreateItem", "<m:Items/>"))
        return out


# --- XML -----------------------------------------------------------------------------------------

SERVER_VERSION = (
    f'<h:ServerVersionInfo xmlns:h="{TNS}" MajorVersion="15" MinorVersion="1" MajorBuildNumber="2507" '
    'MinorBuildNumber="6" Version="V2017_07_11"/>'
)


def envelope(body: str, header: bool = True) -> bytes:
    head = f"<s:Header>{SERVER_VERSION}</s:Header>" if header else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{SOAP}">{head}<s:Body>{body}</s:Body>'
        "</s:Envelope>"
    ).encode()


def ok_message(operation: str, inner: str = "") -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode>{inner}'
        f"</m:{operation}ResponseMessage>"
    )


def error_message(operation: str, error: ErrorResponse, inner: str = "") -> str:
    return (
        f'<m:{operation}ResponseMessage ResponseClass="Error"><m:MessageText>{escape(error.text)}</m:MessageText>'
        f"<m:ResponseCode>{error.code}</m:ResponseCode><m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>{inner}"
        f"</m:{operation}ResponseMessage>"
    )


def not_found() -> ErrorResponse:
    return ErrorResponse("ErrorItemNotFound", "The specified object was not found in the store.")


def soap_fault(code: str, text: str, back_off_ms: int | None = None) -> bytes:
    """A SOAP fault as EWS sends it with HTTP 500 (ErrorServerBusy carries BackOffMilliseconds)."""
    extra = ""
    if back_off_ms is not None:
        extra = (
            f'<t:MessageXml xmlns:t="{TNS}"><t:Value Name="BackOffMilliseconds">{back_off_ms}</t:Value>'
            "</t:MessageXml>"
        )
    return envelope(
        f'<s:Fault><faultcode xmlns:a="{TNS}">a:{code}</faultcode><faultstring xml:lang="en-US">{escape(text)}'
        f'</faultstring><detail><e:ResponseCode xmlns:e="{ENS}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{ENS}">{escape(text)}</e:Message>{extra}</detail></s:Fault>',
        header=False,
    )


# --- HTTP ----------------------------------------------------------------------------------------


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    ews: EwsServer



class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer
    timeout = 30

    def setup(self) -> None:
        super().setup()
        with self.server.ews._lock:
            self.server.ews._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.ews._lock:
                self.server.ews._connections.discard(self.connection)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/xml; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        ews = self.server.ews
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.lower() != PATH:
            self._send(404, b"", {"Content-Type": "text/html"})
            return
        try:
            request = ET.fromstring(body)
        except ET.ParseError:
            request = ET.Element("invalid")
        soap_body = request.find(f"{{{SOAP}}}Body")
        operation = soap_body[0].tag.split("}")[-1] if soap_body is not None and len(soap_body) else ""
        box = ews.authenticate(self.headers.get("Authorization"))
        if box is None:
            ews.record(operation, None, body, refused=True)
            self._send(401, b"", {"Content-Type": "text/html", "WWW-Authenticate": 'Basic realm="127.0.0.1"'})
            return
        if not operation:
            self._send(400, b"", {"Content-Type": "text/html"})
            return
        fault = ews.record(operation, box.address, body)
        if isinstance(fault, Drop):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(fault, Busy):
            text = "The server cannot service this request right now. Try again later."
            self._send(500, soap_fault("ErrorServerBusy", text, fault.back_off_ms))
            return
        if isinstance(fault, Unavailable):
            extra = {"Content-Type": "text/html"}
            if fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            self._send(503, b"<html><body>Service Unavailable</body></html>", extra)
            return
        status, answer = ews.answer(operation, request, box, fault)
        self._send(status, answer)
