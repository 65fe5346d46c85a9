"""Bulk imports from CSV, run as background jobs of the console so that the
page can show progress while the vault works through a large file.

Theory of operation. The upload handler parses the file with
``kura.core.importer``, the code the vault itself runs on a CSV sent through
the API: the encoding, the header, and each row's first problem (a second row
for the same person included) are known before anything is stored, and every
line number is the file's. A job then hands the accepted rows to the vault in
batches (``subject.import`` with JSON rows: each batch one vault transaction
and one audit entry; the vault checks every row again) and maps the vault's
answers (already registered; the number or code belongs to someone else) back
to the file's lines. Rows are sent employees first, as the vault does within
one call, so that a dependent finds an employee from the same file.

The rows, numbers included, stay in the console's memory only until their
batch is sent; what a job keeps is counts and rejections (line, field,
reason: never a value). A job belongs to the user who started it and calls
the vault with that user's session, so the vault applies their role; it is
forgotten an hour after it ends. The jobs belong to the application: an
aiohttp cleanup_ctx cancels the ones still running when the console stops
(a batch the vault has committed stays; importing the file again skips the
rows already registered).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from kura.console.api import VAULT
from kura.console.clientcert import terminal_serial
from kura.core.errors import KuraError
from kura.core.importer import ImportRecord, ImportResult, Rejection
from kura.core.subjects import SubjectInput

log = logging.getLogger("kura.console")

KEEP_SECONDS = 3600.0  # a finished job's report stays this long
MAX_JOBS = 200  # kept in memory at once; the oldest finished go first
MAX_RUNNING_PER_USER = 2
BATCH_MIN, BATCH_MAX = 50, 1000  # rows per vault call
BATCH_STEPS = 20  # about this many steps for the progress bar


class ImportBusy(KuraError):
    """The user already has as many imports running as one person may."""

    code = "import_busy"
    status = 429
    ja = "実行中の一括登録が終わってから、次のファイルを取り込んでください。"
    en = "Wait for your running imports to finish before you start another."


class VaultCaller(Protocol):
    """What a job needs of the vault client (a fake in the tests)."""

    async def call(
        self,
        op: str,
        args: dict[str, Any] | None = None,
        session: str | None = None,
        client: str = "",
        terminal: str = "",
    ) -> dict[str, Any]: ...


def subject_json(subject: SubjectInput) -> dict[str, Any]:
    """A parsed subject as the vault's subject body (``SUBJECT_SCHEMA``)."""
    body: dict[str, Any] = {
        "kind": subject.kind,
        "code": subject.code,
        "name": subject.name,
        "name_kana": subject.name_kana,
        "number": subject.number,
        "purposes": list(subject.purposes),
        "retention_basis": subject.retention_basis,
    }
    if subject.employee_code:
        body["employee_code"] = subject.employee_code
    if subject.birth_date is not None:
        body["birth_date"] = subject.birth_date.isoformat()
    return body


def batch_size(rows: int) -> int:
    return max(BATCH_MIN, min(BATCH_MAX, rows // BATCH_STEPS))


@dataclass(eq=False)
class ImportJob:
    """One file being imported, and afterwards its outcome."""

    id: str
    owner: str
    encoding: str  # "utf-8", "utf-8-sig" or "cp932"
    total: int  # the file's data rows
    started_at: datetime
    done: int = 0  # rows decided so far (rejected while reading, or answered by the vault)
    created: int = 0
    existing: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    failure: KuraError | None = None
    ended: float | None = None  # time.monotonic() when it ended
    pending: list[ImportRecord] = field(default_factory=list, repr=False)

    @property
    def finished(self) -> bool:
        return self.ended is not None

    def progress(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "finished": self.finished,
            "redirect": f"/payees/import/{self.id}",
        }

    async def run(
        self, vault: VaultCaller, session: str, client: str, terminal: str = ""
    ) -> None:
        """Send the pending rows to the vault, batch by batch."""
        size = batch_size(len(self.pending))
        # The rows refused while reading the file go with the first batch, so
        # that its audit entry counts them (alone if no row is left to send).
        unreported = len(self.rejections)
        try:
            if not self.pending and unreported:
                await vault.call(
                    "subject.import",
                    {"rows": [], "refused_on_parse": unreported},
                    session,
                    client,
                    terminal=terminal,
                )
            while self.pending:
                batch = self.pending[:size]
                rows = [subject_json(record.subject) for record in batch]
                args: dict[str, Any] = {"rows": rows}
                if unreported:
                    args["refused_on_parse"], unreported = unreported, 0
                answer = await vault.call(
                    "subject.import", args, session, client, terminal=terminal
                )
                del self.pending[:size]
                del rows
                lines = [record.line for record in batch]
                self.created += int(answer["created"])
                self.existing += int(answer["existing"])
                for refused in answer["rejected"]:
                    # The vault numbers the rows of one call from 1.
                    self.rejections.append(
                        Rejection(
                            line=lines[int(refused["line"]) - 1],
                            code=str(refused.get("code", "")),
                            field=str(refused.get("field", "")),
                            ja=str(refused.get("message", "")),
                            en=str(refused.get("message_en", "")),
                        )
                    )
                self.done += len(batch)
        except KuraError as exc:
            self.failure = exc
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a broken answer: end the job, not the console
            log.error("import job %s failed: %s", self.id, type(exc).__name__)
            self.failure = KuraError()
        finally:
            self.pending.clear()
            self.rejections.sort(key=lambda r: r.line)
            self.ended = time.monotonic()


class ImportJobs:
    """The running and recently finished imports of this console."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._jobs: dict[str, ImportJob] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clock = clock

    def start(
        self,
        owner: str,
        parsed: ImportResult,
        vault: VaultCaller,
        session: str,
        client: str,
        terminal: str = "",
    ) -> ImportJob:
        """A new job for ``parsed``, already running. Raises ImportBusy."""
        self.sweep()
        running = [j for j in self._jobs.values() if j.owner == owner and not j.finished]
        if len(running) >= MAX_RUNNING_PER_USER:
            raise ImportBusy()
        pending = sorted(parsed.records, key=lambda r: r.subject.kind != "employee")
        job = ImportJob(
            id=str(uuid.uuid4()),
            owner=owner,
            encoding=parsed.encoding,
            total=len(parsed.records) + len(parsed.rejections),
            started_at=datetime.now(UTC),
            done=len(parsed.rejections),
            rejections=list(parsed.rejections),
            pending=pending,
        )
        self._jobs[job.id] = job
        task = asyncio.create_task(
            job.run(vault, session, client, terminal), name=f"import {job.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> ImportJob | None:
        self.sweep()
        return self._jobs.get(job_id)

    def of(self, owner: str) -> list[ImportJob]:
        """The owner's jobs, newest first."""
        self.sweep()
        mine = [job for job in self._jobs.values() if job.owner == owner]
        return sorted(mine, key=lambda j: j.started_at, reverse=True)

    def sweep(self) -> None:
        """Forget finished jobs after KEEP_SECONDS, and the oldest finished
        ones beyond MAX_JOBS."""
        now = self._clock()
        for job_id, job in list(self._jobs.items()):
            if job.ended is not None and now - job.ended > KEEP_SECONDS:
                del self._jobs[job_id]
        finished = sorted(
            (j for j in self._jobs.values() if j.ended is not None), key=lambda j: j.ended or 0
        )
        for job in finished[: max(0, len(self._jobs) - MAX_JOBS)]:
            del self._jobs[job.id]

    async def close(self) -> None:
        """Cancel the running jobs and wait for them to stop."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._jobs.clear()


IMPORT_JOBS: web.AppKey[ImportJobs] = web.AppKey("import_jobs", ImportJobs)


async def import_jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    app[IMPORT_JOBS] = ImportJobs()
    yield
    await app[IMPORT_JOBS].close()


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(import_jobs_ctx)


def start_job(request: web.Request, owner: str, parsed: ImportResult, session: str) -> ImportJob:
    return request.app[IMPORT_JOBS].start(
        owner, parsed, request.app[VAULT], session, request.remote or "", terminal_serial(request)
    )
