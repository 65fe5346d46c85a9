"""The console's import jobs (kura.console.web.importjobs) against a fake
vault, the one thing here that cannot run for real: rows go in batches,
employees first; the vault's refusals come back under the file's own line
numbers; progress only goes forward; a refusal stops the job and says why;
jobs are cancelled on shutdown and forgotten an hour after they end."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Collection, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from kura.console.vaultclient import VaultError
from kura.console.web import importjobs
from kura.console.web.importjobs import ImportBusy, ImportJob, ImportJobs
from kura.core import importer
from tests.support import my_numbers, wrong_check_digit

T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, in a thread of its own: the browser tests' Playwright keeps
    an event loop running in the main thread for the whole session."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, scenario).result()


class FakeVault:
    """Answers subject.import like the vault: rows numbered from 1 within a call.
    ``refuse`` holds the codes of rows it refuses as taken by someone else;
    ``known`` those it counts as already registered."""

    def __init__(self, refuse: Collection[str] = (), known: Collection[str] = (),
                 fail_on_call: int | None = None) -> None:
        self.refuse, self.known, self.fail_on_call = refuse, known, fail_on_call
        self.calls: list[list[dict[str, Any]]] = []
        self.progress: list[int] = []
        self.job: ImportJob | None = None
        self.gate: asyncio.Event | None = None

    async def call(self, op: str, args: dict[str, Any] | None = None,
                   session: str | None = None, client: str = "",
                   terminal: str = "") -> dict[str, Any]:
        assert op == "subject.import" and session == "token-1" and args is not None
        if self.job is not None:
            self.progress.append(self.job.done)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_on_call == len(self.calls) + 1:
            raise VaultError(401, {"code": "not_authenticated", "message": "ログインしてください。",
                                   "message_en": "Please sign in."})
        rows = args["rows"]
        self.calls.append(rows)
        rejected = [{"line": i, "field": "number", "code": "duplicate_number",
                     "message": "この番号は別の人に登録済みです。",
                     "message_en": "This number is already registered for a different person."}
                    for i, row in enumerate(rows, 1) if row["code"] in self.refuse]
        existing = sum(1 for row in rows if row["code"] in self.known)
        return {"created": len(rows) - len(rejected) - existing, "existing": existing,
                "rejected": rejected, "total": len(rows)}


def payee_csv(numbers: list[str], bad_at: int | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["支払先コード", "氏名", "個人番号"])
    for i, number in enumerate(numbers):
        if i == bad_at:
            number = wrong_check_digit(number)
        writer.writerow([f"P-{i:04d}", f"支払先 {i}", number])
    return out.getvalue().encode("cp932")


async def run_to_end(jobs: ImportJobs, parsed: importer.ImportResult, vault: FakeVault,
                     ) -> ImportJob:
    job = jobs.start("mu-1", parsed, vault, "token-1", "127.0.0.1")
    vault.job = job
    while not job.finished:
        await asyncio.sleep(0.001)
    return job


def test_rows_go_in_batches_and_refusals_keep_the_files_lines() -> None:
    numbers = my_numbers(121, seed=9101)
    parsed = importer.parse_csv(payee_csv(numbers, bad_at=7))
    # P-0060 is line 62 of the file and the 11th row of the second batch.
    vault = FakeVault(refuse={"P-0060", "P-0120"}, known={"P-0001", "P-0099"})
    job = run(run_to_end(ImportJobs(), parsed, vault))
    assert [len(rows) for rows in vault.calls] == [50, 50, 20]
    assert job.failure is None
    assert (job.total, job.done, job.created, job.existing) == (121, 121, 116, 2)
    assert [(r.line, r.field) for r in job.rejections] == [
        (9, "number"), (62, "number"), (122, "number")]
    assert job.rejections[1].code == "duplicate_number"
    assert job.progress() == {"done": 121, "total": 121, "finished": True,
                              "redirect": f"/payees/import/{job.id}"}
    # The rejected row counted from the start; progress went forward batch by batch.
    assert vault.progress == [1, 51, 101]
    # Nothing with a number stays behind in the job.
    assert job.pending == []
    text = repr(job) + repr(job.rejections)
    assert not any(n in text for n in numbers)


def test_employees_are_sent_before_dependents() -> None:
    boss, child = my_numbers(2, seed=9102)
    data = (
        "種別,コード,氏名,個人番号,扶養者コード\r\n"
        f"扶養親族,E-1,子 一,{child},E-1\r\n"
        f"社員,E-1,親 一,{boss},\r\n"
    ).encode()
    vault = FakeVault()
    job = run(run_to_end(ImportJobs(), importer.parse_csv(data), vault))
    (rows,) = vault.calls
    assert [row["kind"] for row in rows] == ["employee", "dependent"]
    assert rows[1]["employee_code"] == "E-1" and "employee_code" not in rows[0]
    assert job.created == 2


def test_a_refusal_stops_the_job_and_says_why() -> None:
    parsed = importer.parse_csv(payee_csv(my_numbers(150, seed=9103)))
    vault = FakeVault(fail_on_call=2)
    job = run(run_to_end(ImportJobs(), parsed, vault))
    assert job.finished and job.failure is not None
    assert job.failure.message_ja == "ログインしてください。"
    assert (job.done, job.created, job.total) == (50, 50, 150)
    assert job.pending == []


def test_jobs_are_cancelled_on_shutdown() -> None:
    parsed = importer.parse_csv(payee_csv(my_numbers(3, seed=9104)))

    async def scenario() -> ImportJob:
        jobs = ImportJobs()
        vault = FakeVault()
        vault.gate = asyncio.Event()  # the vault never answers
        job = jobs.start("mu-1", parsed, vault, "token-1", "")
        await asyncio.sleep(0.01)
        assert not job.finished
        await jobs.close()
        assert jobs.get(job.id) is None
        return job

    job = run(scenario())
    assert job.finished and job.created == 0 and job.pending == []


def test_a_user_runs_two_imports_at_most_and_results_are_forgotten_after_an_hour() -> None:
    parsed = importer.parse_csv(payee_csv(my_numbers(3, seed=9105)))
    now = [1000.0]

    async def scenario() -> None:
        jobs = ImportJobs(clock=lambda: now[0])
        vault = FakeVault()
        vault.gate = asyncio.Event()
        first = jobs.start("mu-1", parsed, vault, "token-1", "")
        jobs.start("mu-1", parsed, vault, "token-1", "")
        with pytest.raises(ImportBusy):
            jobs.start("mu-1", parsed, vault, "token-1", "")
        other = jobs.start("mu-2", parsed, vault, "token-1", "")  # someone else may
        assert [j.owner for j in jobs.of("mu-2")] == ["mu-2"]
        vault.gate.set()
        while not all(j.finished for j in (*jobs.of("mu-1"), other)):
            await asyncio.sleep(0.001)
        for job in (*jobs.of("mu-1"), other):
            job.ended = now[0]
        now[0] += importjobs.KEEP_SECONDS - 1
        assert jobs.get(first.id) is first
        now[0] += 2
        assert jobs.get(first.id) is None and jobs.of("mu-1") == []
        await jobs.close()

    run(scenario())


@pytest.mark.parametrize(("rows", "size"), [(1, 50), (300, 50), (10_000, 500), (100_000, 1000)])
def test_batches_give_the_progress_bar_about_twenty_steps(rows: int, size: int) -> None:
    assert importjobs.batch_size(rows) == size
