"""Tagging jobs for the API: queued, run one at a time in a background thread, surviving restarts.

A job is a folder under `<data dir>/jobs/<id>/` (the uploaded zip or CSV, and the tagger's output and
state) plus a row in `jobs.sqlite3`. On start, jobs that were queued or running are queued again and the
tagger resumes them from their state file. Decoding runs in *spawned* processes: forking a server that
already runs threads (uvicorn, ONNX Runtime) is not safe.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from api.tagging.output import format_rows
from api.tagging.run import Tagger, TagOptions
from api.tagging.sources import Item, SourceError, list_items
from api.tagging.state import TagState

log = logging.getLogger("seesku.tagging")
ACTIVE = ("queued", "running")


@dataclass
class Job:
    id: str
    state: str  # queued | running | done | failed | cancelled
    kind: str  # zip | csv
    created: float
    options: dict
    total: int = 0
    done: int = 0
    rate: float = 0.0  # photos/s while running
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    duplicate_groups: int | None = None

    @property
    def eta_s(self) -> float | None:
        if self.state != "running" or not self.rate or not self.total:
            return None
        return max(0.0, (self.total - self.done) / self.rate)


class JobStore:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(root / "jobs.sqlite3", check_same_thread=False)
        self.lock = threading.Lock()
        with self.lock, self.db:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, created REAL, data TEXT NOT NULL)")

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def save(self, job: Job) -> None:
        with self.lock, self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", (job.id, job.created, json.dumps(job.__dict__))
            )

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            row = self.db.execute("SELECT data FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job(**json.loads(row[0])) if row else None

    def list(self, limit: int = 50) -> list[Job]:
        with self.lock:
            rows = self.db.execute("SELECT data FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [Job(**json.loads(r[0])) for r in rows]

    def close(self) -> None:
        with self.lock:
            self.db.close()


class JobRunner:
    """One background thread works through the queue; `cancel` stops a job at its next batch."""

    def __init__(
        self,
        store: JobStore,
        tagger_factory: Callable[[TagOptions], Tagger],
        allowed_root: Path | None,
        max_member_bytes: int,
    ):
        self.store = store
        self.tagger_factory = tagger_factory
        self.allowed_root = allowed_root
        self.max_member_bytes = max_member_bytes
        self._queue: list[str] = []
        self._cancelled: set[str] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="tagging-jobs", daemon=True)

    def start(self) -> None:
        for job in sorted(self.store.list(limit=10_000), key=lambda j: j.created):
            if job.state in ACTIVE:  # interrupted by a restart: resume
                log.info("resuming tagging job %s (%d/%d done)", job.id, job.done, job.total)
                job.state = "queued"
                self.store.save(job)
                self._queue.append(job.id)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
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
        """Where uploads are streamed before `submit` takes them (on the same disk as the jobs)."""
        return self.store.root

    # -- creating jobs ------------------------------------------------------------------------
    def items(self, job: Job) -> list[Item]:
        folder = self.store.dir(job.id)
        if job.kind == "zip":
            return list_items(folder / "input.zip", max_member_bytes=self.max_member_bytes)
        return list_items(folder / "input.csv", allowed_root=self.allowed_root)

    def submit(self, kind: str, staged: Path, options: TagOptions) -> Job:
        """`staged`: the uploaded file, already on disk. Validates the input before accepting the job."""
        job = Job(id=uuid.uuid4().hex[:16], state="queued", kind=kind, created=time.time(), options=options.__dict__)
        folder = self.store.dir(job.id)
        folder.mkdir(parents=True)
        target = folder / ("input.zip" if kind == "zip" else "input.csv")
        try:
            shutil.move(staged, target)
            if kind == "csv":
                # Paths in the CSV are relative to the allowed root, not to the upload's temporary folder.
                target.write_text(_rebase_csv(target.read_text(errors="replace"), self.allowed_root))
            job.total = len(self.items(job))
            if not job.total:
                raise SourceError("the upload holds no photos")
        except SourceError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self.store.save(job)
        with self._wake:
            self._queue.append(job.id)
            self._wake.notify_all()
        return job

    def cancel(self, job_id: str) -> Job | None:
        job = self.store.get(job_id)
        if job is None or job.state not in ACTIVE:
            return job
        with self._wake:
            self._cancelled.add(job_id)
            if job_id in self._queue:
                self._queue.remove(job_id)
                job.state, job.finished = "cancelled", time.time()
                self.store.save(job)
        return job

    # -- results ------------------------------------------------------------------------------
    def output(self, job: Job) -> Path:
        return self.store.dir(job.id) / "results.jsonl"

    def rows(self, job: Job) -> list[dict]:
        state_file = self.output(job).with_name("results.jsonl.state.sqlite3")
        if not state_file.exists():
            return []
        state = TagState(state_file)
        try:
            return state.rows()
        finally:
            state.close()

    def results(self, job: Job, fmt: str) -> str:
        return format_rows(self.rows(job), fmt, header=True)

    # -- the worker ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job_id = self._queue.pop(0)
            job = self.store.get(job_id)
            if job is None or job.state != "queued":
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        job.state, job.started, job.error = "running", job.started or time.time(), None
        self.store.save(job)
        started = time.perf_counter()
        first_done: list[int] = []

        def progress(done: int, total: int) -> None:
            if not first_done:
                first_done.append(done)
            job.done, job.total = done, total
            elapsed = time.perf_counter() - started
            job.rate = round((done - first_done[0]) / elapsed, 2) if elapsed > 0 else 0.0
            self.store.save(job)

        def should_stop() -> bool:
            return self._stopping or job.id in self._cancelled

        try:
            tagger = self.tagger_factory(TagOptions(**job.options))
            summary = tagger.run(self.items(job), self.output(job), progress, should_stop, source=job.kind)
        except Exception as exc:  # a job that fails must not take the worker (or the server) with it
            log.exception("tagging job %s failed", job.id)
            job.state, job.error, job.finished = "failed", str(exc), time.time()
            self.store.save(job)
            return
        if job.id in self._cancelled:
            job.state, job.finished = "cancelled", time.time()
        elif self._stopping and summary.done < summary.total:
            job.state = "queued"  # the server is stopping: resume on the next start
        else:
            job.state, job.finished, job.duplicate_groups = "done", time.time(), summary.duplicate_groups
        job.done = summary.done
        self.store.save(job)


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
