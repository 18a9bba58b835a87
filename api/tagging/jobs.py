"""Tagging jobs for the API: one queue in the database for every replica, each job run by one replica at a
time under a lease, surviving the replica that ran it.

A job is a row of `tagging_jobs` with its upload in `tagging_inputs` and its results in `tagging_results`
(api/db/tables.py). Every replica's runner takes the oldest queued job, or a running one whose lease ran
out (its replica died), under FOR UPDATE SKIP LOCKED, and renews the lease while it works; the tagger
resumes from the last committed batch of results, so a job finishes with every photo whichever replica
ends it. Progress and results are read from the database, so any replica answers for any job. A replica
keeps a local copy of a job's upload only to read its photos (`<data dir>/jobs/<id>/`). Decoding runs in
*spawned* processes: forking a server that already runs threads (uvicorn, ONNX Runtime) is not safe.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from api.tagging.output import format_rows
from api.tagging.queue import LEASE_S, Job, JobStore
from api.tagging.run import Tagger, TagOptions
from api.tagging.sources import Item, SourceError, list_items
from api.tagging.state import SqlTagState

log = logging.getLogger("seesku.tagging")
ACTIVE = ("queued", "running")
__all__ = ["ACTIVE", "Job", "JobRunner", "JobStore"]
RENEW_EVERY_S = 3.0
POLL_S = 1.0  # how often an idle runner looks for a job another replica queued


class JobRunner:
    """This replica's worker on the shared queue: one job at a time, its lease renewed by a heartbeat;
    `cancel` reaches a job on any replica at its next batch."""

    def __init__(
        self,
        store: JobStore,
        tagger_factory: Callable[[TagOptions], Tagger],
        allowed_root: Path | None,
        max_member_bytes: int,
        lease_s: float = LEASE_S,
    ):
        self.store = store
        self.tagger_factory = tagger_factory
        self.allowed_root = allowed_root
        self.max_member_bytes = max_member_bytes
        self.lease_s = lease_s
        self.owner = uuid.uuid4().hex  # this replica, in the queue
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._running: tuple[str, _Lease] | None = None  # the job this replica runs now, and its lease
        self._thread = threading.Thread(target=self._loop, name="tagging-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def close(self) -> None:
        self.store.close()

    # -- reading jobs -------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def list(self, limit: int = 50) -> list[Job]:
        """The newest jobs first."""
        return self.store.list(limit)

    @property
    def staging_dir(self) -> Path:
        """Where uploads are streamed before `submit` takes them."""
        return self.store.root

    # -- creating jobs ------------------------------------------------------------------------
    def items(self, job: Job) -> list[Item]:
        return self._list(job.kind, self.store.input_file(job))

    def _list(self, kind: str, path: Path) -> list[Item]:
        if kind == "zip":
            return list_items(path, max_member_bytes=self.max_member_bytes)
        return list_items(path, allowed_root=self.allowed_root)

    def submit(self, kind: str, staged: Path, options: TagOptions) -> Job:
        """`staged`: the uploaded file, already on disk. Validates the input before accepting the job."""
        job = Job(id=uuid.uuid4().hex[:16], state="queued", kind=kind, created=time.time(), options=options.__dict__)
        folder = self.store.dir(job.id)  # this replica's copy of the upload, so it need not fetch it back
        folder.mkdir(parents=True)
        target = folder / ("input.zip" if kind == "zip" else "input.csv")
        try:
            shutil.move(staged, target)
            if kind == "csv":
                # Paths in the CSV are relative to the allowed root, not to the upload's temporary folder.
                target.write_text(_rebase_csv(target.read_text(errors="replace"), self.allowed_root))
            job.total = len(self._list(kind, target))
            if not job.total:
                raise SourceError("the upload holds no photos")
            self.store.create(job, target)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.state not in ACTIVE:
            return job
        self.store.cancel(job_id)
        running = self._running
        if running is not None and running[0] == job_id:
            running[1].cancelled = True  # this replica runs it: stop at the next batch, not the next heartbeat
        return self.store.get(job_id)

    # -- results ------------------------------------------------------------------------------
    def output(self, job: Job) -> Path:
        return self.store.dir(job.id) / "results.jsonl"

    def rows(self, job: Job) -> list[dict]:
        return SqlTagState(self.store.engine, job.id).rows()

    def results(self, job: Job, fmt: str) -> str:
        return format_rows(self.rows(job), fmt, header=True)

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim(self.owner, self.lease_s)
            except Exception as exc:  # the database is away: look again later
                log.warning("cannot take tagging jobs now: %s", exc)
                job = None
            if job is None:
                self._wake.wait(POLL_S)
                self._wake.clear()
                continue
            log.info("running tagging job %s (%d/%d done)", job.id, job.done, job.total)
            self._run(job)

    def _run(self, job: Job) -> None:
        job.started, job.error = job.started or time.time(), None
        self.store.save(job, self.owner)
        lease = _Lease(self.store, job.id, self.owner, self.lease_s)
        self._running = (job.id, lease)
        started = time.perf_counter()
        first_done: list[int] = []

        def progress(done: int, total: int) -> None:
            if not first_done:
                first_done.append(done)
            job.done, job.total = done, total
            elapsed = time.perf_counter() - started
            job.rate = round((done - first_done[0]) / elapsed, 2) if elapsed > 0 else 0.0
            self.store.save(job, self.owner)

        def should_stop() -> bool:
            return self._stopping.is_set() or lease.cancelled or lease.lost

        try:
            tagger = self.tagger_factory(TagOptions(**job.options))
            summary = tagger.run(
                self.items(job),
                self.output(job),
                progress,
                should_stop,
                source=job.kind,
                state=SqlTagState(self.store.engine, job.id),
            )
        except Exception as exc:  # a job that fails must not take the worker (or the server) with it
            log.exception("tagging job %s failed", job.id)
            job.state, job.error, job.finished = "failed", str(exc), time.time()
            self.store.save(job, self.owner)
            return
        finally:
            self._running = None
            lease.stop()
        if lease.lost:
            log.warning("tagging job %s: lease lost, another replica has it", job.id)
            return
        if lease.cancelled:
            job.state, job.finished = "cancelled", time.time()
        elif self._stopping.is_set() and summary.done < summary.total:
            job.state = "queued"  # this replica is stopping: any replica resumes it
        else:
            job.state, job.finished, job.duplicate_groups = "done", time.time(), summary.duplicate_groups
        job.done = summary.done
        self.store.save(job, self.owner)
        self.store.release(job.id, self.owner)


class _Lease:
    """Renews a job's lease every RENEW_EVERY_S while it runs, and learns of a cancellation."""

    def __init__(self, store: JobStore, job_id: str, owner: str, lease_s: float):
        self.store, self.job_id, self.owner = store, job_id, owner
        self.every = min(RENEW_EVERY_S, lease_s / 3)
        self.lost = self.cancelled = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(lease_s,), name="tagging-lease", daemon=True)
        self._thread.start()

    def _beat(self, lease_s: float) -> None:
        while not self._done.wait(self.every):
            try:
                held, cancelled = self.store.renew(self.job_id, self.owner, lease_s)
            except Exception as exc:  # the database is away for a moment: the lease has some slack
                log.warning("renewing the lease of tagging job %s failed: %s", self.job_id, exc)
                continue
            self.lost, self.cancelled = not held, self.cancelled or cancelled

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=10)


def _rebase_csv(text: str, root: Path | None) -> str:
    """Make a CSV's relative paths relative to `root` by writing them as absolute paths under it."""
    import csv
    import io

    if root is None:
        raise SourceError("CSV jobs are disabled: set SEESKU_TAGGING_ROOT to the folder they may read from")
    reader = csv.DictReader(io.StringIO(text))
    if "path" not in (reader.fieldnames or []):
        raise SourceError("the CSV needs a 'path' column")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["path"])
    for row in reader:
        path = (row.get("path") or "").strip()
        if path:
            writer.writerow([str(root / path) if not Path(path).is_absolute() else path])
    return out.getvalue()
