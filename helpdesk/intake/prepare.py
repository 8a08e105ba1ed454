"""The pure, CPU-bound part of intake (parse, classify, fingerprint, reply text), batch-wise and,
for large batches, spread over a worker process so that a second core parses while the first one
talks to the mail server and the database.

Nothing here touches the database; a message whose preparation fails is simply left unprepared,
and the pipeline's own steps then fail on it and quarantine it with the step and the reason.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, replace
from email.message import Message

from helpdesk.mail.classify import Classification, classify
from helpdesk.mail.parse import ParsedMail, parse_message
from helpdesk.mail.quotes import Reply, split_reply, split_reply_html
from helpdesk.mail.threading import fingerprint

log = logging.getLogger(__name__)

# Below this many messages a batch is prepared in process: shipping it is not worth it.
MIN_BATCH_FOR_WORKERS = 32
# Messages handed to a worker at a time.
CHUNK = 16


@dataclass(frozen=True)
class Prepared:
    mail: ParsedMail
    classification: Classification
    fingerprint: str | None
    reply: Reply


def customer_text(mail: ParsedMail) -> Reply:
    """The sender's new text and the quoted history, from the plain part or else the HTML part."""
    if mail.text.strip():
        return split_reply(mail.text)
    if mail.html.strip():
        return split_reply_html(mail.html)
    return Reply(text="", quoted="")


def prepare(data: bytes, own_addresses: frozenset[str]) -> Prepared:
    mail = parse_message(data)
    return Prepared(mail, classify(mail, own_addresses), fingerprint(mail), customer_text(mail))


def _prepare_many(datas: Sequence[bytes], own_addresses: frozenset[str]) -> list[Prepared | None]:
    """Worker side: the stdlib message tree stays behind (it served classification already)."""
    out: list[Prepared | None] = []
    for data in datas:
        try:
            prepared = prepare(data, own_addresses)
        except Exception:
            out.append(None)
            continue
        out.append(replace(prepared, mail=replace(prepared.mail, message=Message())))
    return out


def _prepare_here(datas: Sequence[bytes], own_addresses: frozenset[str]) -> list[Prepared | None]:
    out: list[Prepared | None] = []
    for data in datas:
        try:
            out.append(prepare(data, own_addresses))
        except Exception:
            out.append(None)
    return out


class Preparer:
    """Prepares batches; with ``workers`` > 0, part of each large batch goes to worker processes."""

    def __init__(self, own_addresses: frozenset[str], workers: int = 1) -> None:
        self.own_addresses = own_addresses
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: the daemon runs threads, and a forked copy of a threaded process is unsafe.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def prepare_many(self, datas: Sequence[bytes]) -> list[Prepared | None]:
        return list(self.stream(datas))

    def stream(self, datas: Sequence[bytes]) -> Iterator[Prepared | None]:
        """Prepared messages in order, produced ahead of the consumer: while the caller works on
        one chunk (database writes), the workers prepare the next ones."""
        if self.workers <= 0 or len(datas) < MIN_BATCH_FOR_WORKERS:
            yield from _prepare_here(datas, self.own_addresses)
            return
        chunks = [datas[i : i + CHUNK] for i in range(0, len(datas), CHUNK)]
        ahead = self.workers + 1
        pending: deque[tuple[Sequence[bytes], Future[list[Prepared | None]]]] = deque()
        submitted = 1  # the first chunk is prepared here, so that nobody waits for a worker to start

        def submit_more() -> None:
            nonlocal submitted
            while submitted < len(chunks) and len(pending) < ahead:
                chunk = chunks[submitted]
                pending.append((chunk, self._executor().submit(_prepare_many, chunk, self.own_addresses)))
                submitted += 1

        submit_more()
        yield from _prepare_here(chunks[0], self.own_addresses)
        while pending:
            chunk, future = pending.popleft()
            try:
                ready = future.result()
            except Exception as exc:  # a dead worker: do the work here, start a fresh pool next time
                log.warning("parse worker failed (%s); preparing %d messages in process", exc, len(chunk))
                self._discard_pool(pending)
                ready = _prepare_here(chunk, self.own_addresses)
            submit_more()
            yield from ready

    def _discard_pool(self, pending: deque[tuple[Sequence[bytes], Future[list[Prepared | None]]]]) -> None:
        for _chunk, future in pending:
            future.cancel()
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
