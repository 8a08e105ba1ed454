"""Microsoft 365 intake through Microsoft Graph: delta query on one folder of one mailbox.

Bookkeeping: messages are keyed by their immutable id (``Prefer: IdType="ImmutableId"``), which
stays the same when a message is moved. A poll follows the delta link stored in ``mailbox_state``;
each page's new messages are downloaded as MIME (``/messages/{id}/$value``), stored and processed,
then moved, marked read or deleted, and only then is the page's next link (at the end: the delta
link) stored. A crash anywhere replays the page from the stored link: messages already stored are
recognised by their key and only acknowledged, never imported twice; the same message on two pages
is imported once. When Graph has lost the sync state (410) the folder is read again from the start,
with the same protection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from helpdesk.config import AfterImport, MailboxConfig, resolve_secret
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.mailboxes.base import (
    ConfiguredMailbox,
    PermanentError,
    PolledMailbox,
    PollReport,
    SecretResolver,
    TemporaryError,
    load_sync_token,
    store_sync_token,
)
from helpdesk.mailboxes.graphapi import IMMUTABLE_IDS, MAX_IN_FLIGHT, GraphClient, GraphError
from helpdesk.oauth.tokens import Providers
from helpdesk.store.db import transaction
from helpdesk.store.models import RawState
from helpdesk.store.queries import known_source_keys

log = logging.getLogger(__name__)

PAGE_SIZE = 50  # messages per delta page we ask for (Prefer: odata.maxpagesize)
# Folder names Graph knows without a lookup.
WELL_KNOWN = frozenset({"inbox", "archive", "deleteditems", "drafts", "junkemail", "sentitems", "outbox",
                        "msgfolderroot", "clutter", "conversationhistory", "recoverableitemsdeletions"})
SYNC_STATE_LOST = 410


def _quoted(value: str) -> str:
    return value.replace("'", "''")


def graph_client(mailbox: ConfiguredMailbox) -> GraphClient:
    """A client for the mailbox with its token provider and the Graph scope."""
    return GraphClient(mailbox.config, mailbox.token_provider(), mailbox.oauth_scope("graph"))


def as_mailbox_error(name: str, exc: GraphError) -> TemporaryError | PermanentError:
    if exc.temporary:
        return TemporaryError(f"mailbox {name}: Graph: {exc}")
    return PermanentError(f"mailbox {name}: Graph: {exc}")


class GraphMailbox(PolledMailbox):
    """One folder of one Microsoft 365 mailbox (shared mailboxes too), read through Graph."""

    def __init__(
        self,
        config: MailboxConfig,
        secret: SecretResolver = resolve_secret,
        providers: Providers | None = None,
    ) -> None:
        super().__init__(config, secret, providers)
        self._client: GraphClient | None = None
        self._folders: dict[str, str] = {}

    @property
    def client(self) -> GraphClient:
        if self._client is None:
            self._client = graph_client(self)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- folders ---------------------------------------------------------------------------------

    def folder_ref(self, name: str, *, create: bool) -> str:
        """The id (or well-known name) of a top-level folder; created when ``create`` and missing."""
        if name.lower() in WELL_KNOWN:
            return name.lower()
        if name in self._folders:
            return self._folders[name]
        found = self.client.json(
            "GET", "/mailFolders", params={"$filter": f"displayName eq '{_quoted(name)}'", "$select": "id,displayName"}
        )
        matches = [f for f in found.get("value", []) if f.get("displayName") == name]
        if matches:
            self._folders[name] = str(matches[0]["id"])
        elif create:
            try:
                made = self.client.json("POST", "/mailFolders", json={"displayName": name})
            except GraphError as exc:
                if exc.code != "ErrorFolderExists":
                    raise
                return self.folder_ref(name, create=False)
            log.info("mailbox %s: created folder %s", self.name, name)
            self._folders[name] = str(made["id"])
        else:
            raise GraphError(404, "ErrorFolderNotFound", f"no folder named {name!r} in {self.config.user}",
                             temporary=False)
        return self._folders[name]

    @property
    def source_folder(self) -> str:
        return "inbox" if self.config.folder.upper() == "INBOX" else self.config.folder

    # --- poll ------------------------------------------------------------------------------------

    def poll(self, intake: Intake) -> PollReport:
        try:
            return self._poll(intake)
        except GraphError as exc:
            raise as_mailbox_error(self.name, exc) from exc

    def _initial_link(self) -> str:
        folder = self.folder_ref(self.source_folder, create=False)
        return self.client.url(f"/mailFolders/{folder}/messages/delta?$select=id,isRead,parentFolderId")

    def _poll(self, intake: Intake) -> PollReport:
        report = PollReport(mailbox=self.name)
        link = load_sync_token(intake, self.name, self.config.folder) or self._initial_link()
        resynced = False
        seen: set[str] = set()
        while True:
            try:
                page = self.client.json(
                    "GET", link, headers={"Prefer": f"{IMMUTABLE_IDS}, odata.maxpagesize={PAGE_SIZE}"}
                )
            except GraphError as exc:
                if exc.status != SYNC_STATE_LOST or resynced:
                    raise
                log.warning(
                    "mailbox %s: Graph lost the sync state (%s); reading %s again from the start "
                    "(messages already imported are recognised and not imported again)",
                    self.name, exc.code, self.config.folder,
                )
                resynced = True
                link = self._initial_link()
                store_sync_token(intake, self.name, self.config.folder, None)
                continue
            entries = [e for e in page.get("value", []) if isinstance(e, dict) and "@removed" not in e and e.get("id")]
            fresh_entries = [e for e in entries if e["id"] not in seen]
            seen.update(e["id"] for e in fresh_entries)
            if not self._handle_page(intake, fresh_entries, report):
                return report  # something is not settled yet: replay this page next time
            following = page.get("@odata.nextLink")
            final = page.get("@odata.deltaLink")
            link = str(following or final or "")
            store_sync_token(intake, self.name, self.config.folder, link or None)
            if not following:
                return report

    def _handle_page(self, intake: Intake, entries: list[dict[str, Any]], report: PollReport) -> bool:
        """Import the page's new messages and acknowledge all of them; False if any is unsettled."""
        if not entries:
            return True
        by_id = {e["id"]: e for e in entries}
        with transaction(intake.engine) as session:
            known = known_source_keys(session, self.name, by_id)
        if any(state is RawState.PENDING for state in known.values()):
            report.add(intake.process_pending())
            with transaction(intake.engine) as session:
                known = known_source_keys(session, self.name, by_id)
        settled_known = [key for key, state in known.items() if state is not RawState.PENDING]
        fresh = [key for key in by_id if key not in known]
        done = list(settled_known)
        unsettled = len(known) - len(settled_known)
        for start in range(0, len(fresh), self.config.batch_size):
            batch = fresh[start : start + self.config.batch_size]
            incoming = self._download(batch)
            results = intake.ingest(self.name, incoming)
            report.add(results)
            done.extend(r.key for r in results if r.settled)
            unsettled += sum(1 for r in results if not r.settled)
        report.acknowledged += self._acknowledge([by_id[key] for key in done])
        return unsettled == 0

    def _download(self, ids: Sequence[str]) -> list[Incoming]:
        """The original MIME of each message, at most ``MAX_IN_FLIGHT`` downloads at once."""

        def fetch(message_id: str) -> Incoming | None:
            try:
                data = self.client.download(f"/messages/{message_id}/$value")
            except GraphError as exc:
                if exc.status == 404:  # deleted or moved away since the delta page was read
                    log.info("mailbox %s: message %s vanished before it was read", self.name, message_id)
                    return None
                raise
            return Incoming(key=message_id, data=data)

        with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix=f"graph-{self.name}") as pool:
            return [m for m in pool.map(fetch, ids) if m is not None]

    def _acknowledge(self, entries: Sequence[dict[str, Any]]) -> int:
        """Move, mark read or delete committed messages; returns how many needed it."""
        action = self.config.action
        if action is AfterImport.KEEP:
            return 0
        if action is AfterImport.FLAG:
            entries = [e for e in entries if not e.get("isRead")]
        if not entries:
            return 0
        destination = self.folder_ref(self.config.move_to, create=True) if action is AfterImport.MOVE else ""

        def acknowledge(entry: dict[str, Any]) -> None:
            path = f"/messages/{entry['id']}"
            try:
                if action is AfterImport.MOVE:
                    self.client.call("POST", f"{path}/move", json={"destinationId": destination})
                elif action is AfterImport.FLAG:
                    self.client.call("PATCH", path, json={"isRead": True})
                else:
                    self.client.call("DELETE", path)
            except GraphError as exc:
                if exc.status != 404:  # already gone: nothing left to do
                    raise

        with ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix=f"graph-{self.name}") as pool:
            list(pool.map(acknowledge, entries))
        return len(entries)
