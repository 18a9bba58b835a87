"""The tagging-job queue in the database (api/db/tables.py `tagging_jobs`, `tagging_inputs`): jobs, their
uploads, and the leases under which one replica at a time runs each (api/tagging/jobs.py runs them)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, and_, insert, or_, select, update

from api.db import tables as db
from api.db.engine import reading

LEASE_S = 15.0  # a replica that has not renewed its job's lease for this long is taken for dead
INPUT_PART_BYTES = 8 * 1024 * 1024


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
    """The job queue in the database, and each replica's local copies of the uploads under `root`."""

    def __init__(self, engine: Engine, root: Path):
        self.engine, self.root = engine, root
        root.mkdir(parents=True, exist_ok=True)

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    @staticmethod
    def _job(state: str, data: str) -> Job:
        return Job(**{**json.loads(data), "state": state})

    def create(self, job: Job, upload: Path) -> None:
        """The job and its upload, in one transaction: a job is never queued without its input."""
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.tagging_jobs).values(
                    job_id=job.id, state=job.state, created=job.created, data=json.dumps(asdict(job))
                )
            )
            insert_input(conn, job.id, upload)

    def input_file(self, job: Job) -> Path:
        """This replica's copy of the job's upload, fetched from the database the first time."""
        target = self.dir(job.id) / ("input.zip" if job.kind == "zip" else "input.csv")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".part")
            inputs = db.tagging_inputs.c
            with reading(self.engine) as conn, open(partial, "wb") as out:
                parts = select(inputs.data).where(inputs.job_id == job.id).order_by(inputs.part)
                for chunk in conn.execute(parts).scalars():
                    out.write(chunk)
            partial.rename(target)
        return target

    def save(self, job: Job, owner: str | None = None) -> None:
        """Store the job's progress; with `owner`, only while that replica still holds the job."""
        jobs = db.tagging_jobs.c
        where = jobs.job_id == job.id
        if owner is not None:
            where = where & (jobs.owner == owner)
        with self.engine.begin() as conn:
            conn.execute(update(db.tagging_jobs).where(where).values(state=job.state, data=json.dumps(asdict(job))))

    def get(self, job_id: str) -> Job | None:
        jobs = db.tagging_jobs.c
        with reading(self.engine) as conn:
            row = conn.execute(select(jobs.state, jobs.data).where(jobs.job_id == job_id)).first()
        return self._job(*row) if row else None

    def list(self, limit: int = 50) -> list[Job]:
        jobs = db.tagging_jobs.c
        with reading(self.engine) as conn:
            rows = conn.execute(select(jobs.state, jobs.data).order_by(jobs.created.desc()).limit(limit)).all()
        return [self._job(*r) for r in rows]

    def claim(self, owner: str, lease_s: float = LEASE_S) -> Job | None:
        """Take the oldest queued job, or a running one whose replica stopped renewing its lease."""
        jobs, now = db.tagging_jobs.c, time.time()
        free = or_(jobs.state == "queued", and_(jobs.state == "running", jobs.lease_until < now))
        oldest = (
            select(jobs.job_id).where(free).order_by(jobs.created).limit(1).with_for_update(skip_locked=True)
        ).scalar_subquery()
        with self.engine.begin() as conn:
            taken = conn.execute(
                update(db.tagging_jobs)
                .where((jobs.job_id == oldest) & free)
                .values(owner=owner, lease_until=now + lease_s, state="running")
                .returning(jobs.state, jobs.data)
            ).first()
        return self._job(*taken) if taken else None

    def renew(self, job_id: str, owner: str, lease_s: float = LEASE_S) -> tuple[bool, bool]:
        """Extend the lease: (still held by `owner`, cancellation requested)."""
        jobs = db.tagging_jobs.c
        with self.engine.begin() as conn:
            row = conn.execute(
                update(db.tagging_jobs)
                .where((jobs.job_id == job_id) & (jobs.owner == owner))
                .values(lease_until=time.time() + lease_s)
                .returning(jobs.cancel_requested)
            ).first()
        return row is not None, bool(row and row[0])

    def release(self, job_id: str, owner: str) -> None:
        jobs = db.tagging_jobs.c
        with self.engine.begin() as conn:
            conn.execute(
                update(db.tagging_jobs)
                .where((jobs.job_id == job_id) & (jobs.owner == owner))
                .values(owner=None, lease_until=None)
            )

    def cancel(self, job_id: str) -> None:
        """A queued job is cancelled here; a running one by its replica, at its next batch."""
        jobs = db.tagging_jobs.c
        with self.engine.begin() as conn:
            conn.execute(update(db.tagging_jobs).where(jobs.job_id == job_id).values(cancel_requested=1))
            row = conn.execute(select(jobs.data).where((jobs.job_id == job_id) & (jobs.state == "queued"))).first()
            if row:
                job = self._job("cancelled", row[0])
                job.finished = time.time()
                conn.execute(
                    update(db.tagging_jobs)
                    .where(jobs.job_id == job_id)
                    .values(state="cancelled", data=json.dumps(asdict(job)))
                )

    def close(self) -> None:
        """Nothing to release: the engine belongs to the settings."""


def insert_input(conn: Connection, job_id: str, upload: Path) -> None:
    """A job's upload into `tagging_inputs`, in parts (no row near PostgreSQL's 1 GB limit on one value)."""
    with open(upload, "rb") as f:
        for part, chunk in enumerate(iter(lambda: f.read(INPUT_PART_BYTES), b"")):
            conn.execute(insert(db.tagging_inputs).values(job_id=job_id, part=part, data=chunk))
