"""The fake Microsoft Graph mail endpoint, driven with httpx directly against the documented wire format."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.servers.graph import UPLOAD_CHUNK_UNIT, GraphServer

MAILBOX = "support@example.test"
TOKEN = "token-1"
IMMUTABLE = 'IdType="ImmutableId"'


def mime(n: int, body: bytes = b"") -> bytes:
    return (
        f"From: Alice <alice@acme.example>\r\nTo: {MAILBOX}\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@acme.example>\r\nDate: Mon, 02 Mar 2026 09:00:00 +0000\r\n\r\nbody {n}\r\n"
    ).encode() + body


OUTGOING = (
    b"From: support@example.test\r\nTo: Bob <bob@customer.example>\r\nCc: carol@customer.example\r\n"
    b"Bcc: audit@example.test\r\nSubject: [SUP-1] Re: printer\r\nMessage-ID: <reply-1@helpdesk.example>\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nWe are on it.\r\n"
)


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    with GraphServer() as server:
        server.tokens.add(TOKEN)
        server.add_mailbox(MAILBOX)
        yield server


def client(server: GraphServer, token: str = TOKEN, prefer: str | None = IMMUTABLE) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    if prefer:
        headers["Prefer"] = prefer
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)


def delta_round(c: httpx.Client, url: str, page_size: int = 2) -> tuple[list[list[dict[str, Any]]], str]:
    """Follow nextLinks until a deltaLink; the pages' values and the deltaLink."""
    pages: list[list[dict[str, Any]]] = []
    headers = {"Prefer": f"{IMMUTABLE}, odata.maxpagesize={page_size}"}
    while True:
        response = c.get(url, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "@odata.nextLink" in body:
            assert "@odata.deltaLink" not in body
            url = body["@odata.nextLink"]
            continue
        return pages, body["@odata.deltaLink"]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) == {"code", "message", "innerError"}
    assert {"date", "request-id"} <= set(error["innerError"])
    return dict(error)


def test_delta_pages_then_reports_created_moved_out_and_read(graph: GraphServer) -> None:
    ids = [graph.deliver(MAILBOX, mime(n)) for n in range(5)]
    with client(graph) as c:
        first = c.get(
            f"/users/{MAILBOX}/mailFolders/inbox/messages/delta",
            params={"$select": "subject,isRead"},
            headers={"Prefer": f"{IMMUTABLE}, odata.maxpagesize=2"},
        )
        assert first.status_code == 200
        assert "odata.maxpagesize=2" in first.headers["Preference-Applied"]
        assert IMMUTABLE in first.headers["Preference-Applied"]
        assert set(first.json()["value"][0]) == {"@odata.type", "@odata.etag", "id", "subject", "isRead"}
        pages, delta_link = delta_round(c, first.json()["@odata.nextLink"])
        assert [len(p) for p in [first.json()["value"], *pages]] == [2, 2, 1]
        seen = [m["id"] for m in first.json()["value"]] + [m["id"] for p in pages for m in p]
        assert seen == ids

        new_id = graph.deliver(MAILBOX, mime(9))
        assert c.post(f"/users/{MAILBOX}/messages/{ids[0]}/move", json={"destinationId": "archive"}).status_code == 201
        assert c.patch(f"/users/{MAILBOX}/messages/{ids[1]}", json={"isRead": True}).status_code == 200

        pages, delta_link = delta_round(c, delta_link, page_size=10)
        [changes] = pages
        removed = [m for m in changes if "@removed" in m]
        assert removed == [{"@odata.type": "#microsoft.graph.message", "id": ids[0], "@removed": {"reason": "deleted"}}]
        current = {m["id"]: m for m in changes if "@removed" not in m}
        assert set(current) == {ids[1], new_id}
        assert current[ids[1]]["isRead"] is True
        assert set(current[new_id]) == {"@odata.type", "@odata.etag", "id", "subject", "isRead"}

        pages, _ = delta_round(c, delta_link)
        assert pages == [[]]
    assert graph.violations == []


def test_delta_without_immutable_ids_is_a_violation(graph: GraphServer) -> None:
    with client(graph, prefer=None) as c:
        assert c.get(f"/users/{MAILBOX}/mailFolders/inbox/messages/delta").status_code == 200
    assert len(graph.violations) == 1 and "ImmutableId" in graph.violations[0]


def test_value_streams_the_exact_bytes(graph: GraphServer) -> None:
    raw = mime(1, b"x" * 200_000 + b"\r\n\xff\x00end\r\n")
    message_id = graph.deliver(MAILBOX, raw)
    with client(graph) as c:
        response = c.get(f"/users/{MAILBOX}/messages/{message_id}/$value")
        assert response.status_code == 200
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.content == raw
        assert c.delete(f"/users/{MAILBOX}/messages/{message_id}").status_code == 204
        assert graph.message(MAILBOX, message_id).folder_id == graph.folder_id(MAILBOX, "deleteditems")  # type: ignore[union-attr]
        assert c.delete(f"/users/{MAILBOX}/messages/{message_id}").status_code == 204
        gone = c.get(f"/users/{MAILBOX}/messages/{message_id}/$value")
        assert gone.status_code == 404 and error_of(gone)["code"] == "ErrorItemNotFound"
    assert [h.kind for h in graph.hits] == ["value", "delete", "delete", "value"]


def test_move_keeps_the_id_and_get_message_selects(graph: GraphServer) -> None:
    message_id = graph.deliver(MAILBOX, mime(1))
    with client(graph) as c:
        moved = c.post(f"/users/{MAILBOX}/messages/{message_id}/move", json={"destinationId": "archive"})
        assert moved.status_code == 201
        assert moved.json()["id"] == message_id
        assert moved.json()["parentFolderId"] == graph.folder_id(MAILBOX, "archive")
        got = c.get(f"/users/{MAILBOX}/messages/{message_id}", params={"$select": "internetMessageId,isDraft"})
        assert got.status_code == 200
        assert got.json()["internetMessageId"] == "<m1@acme.example>"
        assert got.json()["isDraft"] is False
        assert "subject" not in got.json()
    assert [m.id for m in graph.folder_messages(MAILBOX, "Archive")] == [message_id]
    assert graph.folder_messages(MAILBOX, "inbox") == []


def test_folders_create_filter_conflict_and_children(graph: GraphServer) -> None:
    with client(graph) as c:
        listed = c.get(f"/users/{MAILBOX}/mailFolders").json()
        assert {f["displayName"] for f in listed["value"]} == {
            "Inbox",
            "Drafts",
            "Sent Items",
            "Deleted Items",
            "Archive",
        }
        created = c.post(f"/users/{MAILBOX}/mailFolders", json={"displayName": "Processed"})
        assert created.status_code == 201
        folder_id = created.json()["id"]
        assert created.json()["parentFolderId"] == graph.folder_id(MAILBOX, "msgfolderroot")
        again = c.post(f"/users/{MAILBOX}/mailFolders", json={"displayName": "processed"})
        assert again.status_code == 409 and error_of(again)["code"] == "ErrorFolderExists"
        found = c.get(f"/users/{MAILBOX}/mailFolders", params={"$filter": "displayName eq 'Processed'"}).json()
        assert [f["id"] for f in found["value"]] == [folder_id]
        child = c.post(f"/users/{MAILBOX}/mailFolders/{folder_id}/childFolders", json={"displayName": "2026"})
        assert child.status_code == 201
        children = c.get(f"/users/{MAILBOX}/mailFolders/{folder_id}/childFolders").json()["value"]
        assert [f["displayName"] for f in children] == ["2026"]
        paged = c.get(f"/users/{MAILBOX}/mailFolders", params={"$top": "4"}).json()
        assert len(paged["value"]) == 4
        rest = c.get(paged["@odata.nextLink"]).json()
        assert len(rest["value"]) == 2 and "@odata.nextLink" not in rest
        one = c.get(f"/users/{MAILBOX}/mailFolders/Inbox").json()
        assert one["displayName"] == "Inbox" and one["id"] == graph.folder_id(MAILBOX, "inbox")
    assert graph.folder_id(MAILBOX, "2026") == child.json()["id"]


def test_mime_draft_attachment_and_send_with_assigned_message_ids(graph: GraphServer) -> None:
    graph.assign_message_ids = True
    with client(graph) as c:
        draft = c.post(
            f"/users/{MAILBOX}/messages",
            content=base64.b64encode(OUTGOING),
            headers={"Content-Type": "text/plain"},
        )
        assert draft.status_code == 201
        body = draft.json()
        assert body["isDraft"] is True
        assert body["parentFolderId"] == graph.folder_id(MAILBOX, "drafts")
        assigned = body["internetMessageId"]
        assert assigned != "<reply-1@helpdesk.example>" and assigned.endswith("prod.outlook.com>")
        attached = c.post(
            f"/users/{MAILBOX}/messages/{body['id']}/attachments",
            json={
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "log.txt",
                "contentType": "text/plain",
                "contentBytes": base64.b64encode(b"line 1\n").decode(),
            },
        )
        assert attached.status_code == 201 and attached.json()["size"] == 7
        assert c.post(f"/users/{MAILBOX}/messages/{body['id']}/send").status_code == 202
        after = c.get(f"/users/{MAILBOX}/messages/{body['id']}").json()
        assert after["isDraft"] is False and after["parentFolderId"] == graph.folder_id(MAILBOX, "sentitems")
    [sent] = graph.sent
    assert sent.internet_message_id == assigned
    assert f"Message-ID: {assigned}".encode() in sent.mime
    assert b"Bcc:" not in sent.mime
    assert sent.recipients == ["bob@customer.example", "carol@customer.example", "audit@example.test"]
    assert sent.attachments == [("log.txt", "text/plain", b"line 1\n")]


def test_upload_session_reassembles_the_attachment(graph: GraphServer) -> None:
    payload = bytes(range(256)) * (3 * 4096 + 40)  # a little over 3 MiB
    with client(graph) as c:
        draft = c.post(
            f"/users/{MAILBOX}/messages",
            json={"subject": "big", "toRecipients": [{"emailAddress": {"address": "bob@customer.example"}}]},
        ).json()
        small = c.post(
            f"/users/{MAILBOX}/messages/{draft['id']}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "tiny.bin", "size": 10}},
        )
        assert error_of(small)["code"] == "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize"
        session = c.post(
            f"/users/{MAILBOX}/messages/{draft['id']}/attachments/createUploadSession",
            json={
                "AttachmentItem": {
                    "attachmentType": "file",
                    "name": "dump.bin",
                    "size": len(payload),
                    "contentType": "application/octet-stream",
                }
            },
        )
        assert session.status_code == 201
        assert session.json()["nextExpectedRanges"] == ["0-"]
        upload_url = session.json()["uploadUrl"]
        assert upload_url.startswith("http://127.0.0.1:")
        chunk = 4 * UPLOAD_CHUNK_UNIT
        with httpx.Client(timeout=10) as plain:  # pre-authenticated URL: no Authorization header
            for start in range(0, len(payload), chunk):
                part = payload[start : start + chunk]
                response = plain.put(
                    upload_url,
                    content=part,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(payload)}",
                    },
                )
                if start + len(part) < len(payload):
                    assert response.status_code == 200
                    assert response.json()["nextExpectedRanges"] == [str(start + len(part))]
                else:
                    assert response.status_code == 201
                    assert "/Attachments('" in response.headers["Location"]
        assert c.post(f"/users/{MAILBOX}/messages/{draft['id']}/send").status_code == 202
    assert graph.sent[0].attachments == [("dump.bin", "application/octet-stream", payload)]
    assert {h.kind for h in graph.hits} >= {"upload_session", "upload", "send", "create_message"}
    assert graph.violations == []


def test_upload_chunk_not_a_multiple_of_320_kib_is_a_violation(graph: GraphServer) -> None:
    size = 3 * 1024 * 1024
    with client(graph) as c:
        draft = c.post(f"/users/{MAILBOX}/messages", json={"subject": "x"}).json()
        url = c.post(
            f"/users/{MAILBOX}/messages/{draft['id']}/attachments/createUploadSession",
            json={"AttachmentItem": {"attachmentType": "file", "name": "a.bin", "size": size}},
        ).json()["uploadUrl"]
        response = httpx.put(url, content=b"a" * 1000, headers={"Content-Range": f"bytes 0-999/{size}"})
        assert response.status_code == 200 and response.json()["nextExpectedRanges"] == ["1000"]
        skipped = httpx.put(url, content=b"b" * 10, headers={"Content-Range": f"bytes 5000-5009/{size}"})
        assert skipped.status_code == 416
    assert len(graph.violations) == 1 and "320 KiB" in graph.violations[0]


def test_sendmail_with_mime_and_size_limit(graph: GraphServer) -> None:
    with client(graph) as c:
        sent = c.post(
            f"/users/{MAILBOX}/sendMail", content=base64.b64encode(OUTGOING), headers={"Content-Type": "text/plain"}
        )
        assert sent.status_code == 202 and sent.content == b""
        bad = c.post(f"/users/{MAILBOX}/sendMail", content=OUTGOING, headers={"Content-Type": "text/plain"})
        assert bad.status_code == 400 and error_of(bad)["code"] == "ErrorMimeContentInvalidBase64String"
        graph.mime_limit = 100
        big = c.post(
            f"/users/{MAILBOX}/sendMail", content=base64.b64encode(OUTGOING), headers={"Content-Type": "text/plain"}
        )
        assert big.status_code == 413 and error_of(big)["code"] == "RequestEntityTooLarge"
    [mail] = graph.sent
    assert mail.internet_message_id == "<reply-1@helpdesk.example>"
    assert mail.mime == OUTGOING.replace(b"Bcc: audit@example.test\r\n", b"")
    assert mail.recipients == ["bob@customer.example", "carol@customer.example", "audit@example.test"]
    [copy] = graph.folder_messages(MAILBOX, "sentitems")
    assert copy.internet_message_id == "<reply-1@helpdesk.example>" and not copy.is_draft


def test_throttle_then_a_too_early_request_is_a_violation(graph: GraphServer) -> None:
    message_id = graph.deliver(MAILBOX, mime(1))
    graph.throttle(1, retry_after=1, kind="get_message")
    with client(graph) as c:
        throttled = c.get(f"/users/{MAILBOX}/messages/{message_id}")
        assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
        assert error_of(throttled)["code"]
        time.sleep(0.2)
        early = c.get(f"/users/{MAILBOX}/messages/{message_id}")
        assert early.status_code == 429 and "Retry-After" in early.headers
        assert len(graph.violations) == 1 and "Retry-After" in graph.violations[0]
        time.sleep(float(early.headers["Retry-After"]) + 0.1)
        assert c.get(f"/users/{MAILBOX}/messages/{message_id}").status_code == 200
    assert len(graph.violations) == 1
    assert [h.status for h in graph.hits] == [429, 429, 200]


def test_fail_answers_without_retry_after(graph: GraphServer) -> None:
    message_id = graph.deliver(MAILBOX, mime(1))
    graph.fail(1, status=504, kind="value")
    with client(graph) as c:
        failed = c.get(f"/users/{MAILBOX}/messages/{message_id}/$value")
        assert failed.status_code == 504 and "Retry-After" not in failed.headers
        assert c.get(f"/users/{MAILBOX}/messages/{message_id}/$value").status_code == 200
    assert graph.violations == []


def test_a_fifth_concurrent_request_is_throttled_and_recorded() -> None:
    with GraphServer(latency=(0.3, 0.3)) as server:
        server.tokens.add(TOKEN)
        server.add_mailbox(MAILBOX)
        message_id = server.deliver(MAILBOX, mime(1))
        barrier = threading.Barrier(5)
        statuses: list[httpx.Response] = []

        def fetch() -> None:
            with client(server) as c:
                barrier.wait()
                statuses.append(c.get(f"/users/{MAILBOX}/messages/{message_id}"))

        threads = [threading.Thread(target=fetch) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = sorted(r.status_code for r in statuses)
        assert codes == [200, 200, 200, 200, 429]
        [throttled] = [r for r in statuses if r.status_code == 429]
        error = error_of(throttled)
        assert error["code"] == "ApplicationThrottled" and "MailboxConcurrency" in error["message"]
        assert server.max_seen_in_flight[MAILBOX] == 5
        assert len(server.violations) == 1 and "concurrent" in server.violations[0]


def test_expired_tokens_answer_401(graph: GraphServer) -> None:
    with client(graph) as c:
        assert c.get(f"/users/{MAILBOX}/mailFolders/inbox").status_code == 200
        graph.expire_tokens()
        expired = c.get(f"/users/{MAILBOX}/mailFolders/inbox")
        assert expired.status_code == 401 and error_of(expired)["code"] == "InvalidAuthenticationToken"
        assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    graph.tokens.add("token-2")
    with client(graph, token="token-2") as c:
        assert c.get(f"/users/{MAILBOX}/mailFolders/inbox").status_code == 200
    assert httpx.get(f"{graph.url}/users/{MAILBOX}/mailFolders/inbox").status_code == 401


def test_validate_token_callback_decides() -> None:
    with GraphServer(validate_token=lambda token: token.startswith("good")) as server:
        server.add_mailbox(MAILBOX)
        with client(server, token="good-1") as c:
            assert c.get(f"/users/{MAILBOX}/mailFolders").status_code == 200
        with client(server, token="bad") as c:
            assert c.get(f"/users/{MAILBOX}/mailFolders").status_code == 401


def test_lost_sync_state_answers_410_with_a_restart_location(graph: GraphServer) -> None:
    for n in range(3):
        graph.deliver(MAILBOX, mime(n))
    headers = {"Prefer": f"{IMMUTABLE}, odata.maxpagesize=2"}
    with client(graph) as c:
        first = c.get(f"/users/{MAILBOX}/mailFolders/inbox/messages/delta", headers=headers).json()
        _, delta_link = delta_round(c, first["@odata.nextLink"])
        graph.lose_sync_state(MAILBOX)
        for url in (first["@odata.nextLink"], delta_link):
            gone = c.get(url, headers=headers)
            assert gone.status_code == 410
            assert error_of(gone)["code"] == "SyncStateNotFound"
        restart = c.get(gone.headers["Location"], headers=headers)
        assert restart.status_code == 200 and len(restart.json()["value"]) == 2
        pages, _ = delta_round(c, restart.json()["@odata.nextLink"])
        assert len(pages[0]) == 1


def test_forbidden_and_unknown_mailboxes(graph: GraphServer) -> None:
    graph.forbid(MAILBOX)
    with client(graph) as c:
        denied = c.get(f"/users/{MAILBOX}/mailFolders")
        assert denied.status_code == 403 and error_of(denied)["code"] == "ErrorAccessDenied"
        unknown = c.get("/users/nobody@example.test/mailFolders")
        assert unknown.status_code == 404 and error_of(unknown)["code"] == "ErrorInvalidUser"
        graph.allow(MAILBOX)
        assert c.get(f"/users/{MAILBOX.upper()}/mailFolders").status_code == 200


def test_duplicate_next_page_repeats_the_last_entry(graph: GraphServer) -> None:
    ids = [graph.deliver(MAILBOX, mime(n)) for n in range(4)]
    graph.duplicate_next_page()
    with client(graph) as c:
        pages, _ = delta_round(c, f"/users/{MAILBOX}/mailFolders/inbox/messages/delta")
    ordered = [[m["id"] for m in page] for page in pages]
    assert ordered[0] == ids[:2]
    assert ordered[1][0] == ids[1]
    assert [i for page in ordered for i in page] == [ids[0], ids[1], ids[1], ids[2], ids[3]]


def test_drop_connection_happens_before_the_operation(graph: GraphServer) -> None:
    message_id = graph.deliver(MAILBOX, mime(1))
    graph.drop_connection(1, "move")
    with client(graph) as c:
        with pytest.raises(httpx.TransportError):
            c.post(f"/users/{MAILBOX}/messages/{message_id}/move", json={"destinationId": "archive"})
        assert graph.message(MAILBOX, message_id).folder_id == graph.folder_id(MAILBOX, "inbox")  # type: ignore[union-attr]
        moved = c.post(f"/users/{MAILBOX}/messages/{message_id}/move", json={"destinationId": "archive"})
        assert moved.status_code == 201
    assert [(h.kind, h.status) for h in graph.hits] == [("move", 0), ("move", 201)]
