"""Progress display for training: a rich bar per epoch with loss and images/s, on stderr."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def stage(self, description: str):
        task = self.progress.add_task(description, total=None, loss="-", rate="-")
        return lambda done, total: self.progress.update(task, completed=done, total=total)

    def epoch(self, epoch: int, epochs: int, size: int, steps: int):
        task = self.progress.add_task(f"epoch {epoch + 1}/{epochs} @{size}px", total=steps, loss="-", rate="-")

        def update(step: int, loss: float, rate: float) -> None:
            self.progress.update(task, completed=step, loss=f"{loss:.3f}", rate=f"{rate:.1f}")

        return update

    def epoch_done(self, record: dict, improved: bool) -> None:
        shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        self.console.print(f"{shown}{'  (best so far, saved best.pt)' if improved else ''}")
