"""Running chunks: an ordered, bounded fan-out to worker processes (or in this process for one
worker), and the progress bar."""

from __future__ import annotations

import collections
import multiprocessing
import os
from collections.abc import Callable, Iterator
from typing import Any

from rx_audit.replay.workers import PRELOADED, STATE, init_worker, preload


class Pipeline:
    """Ordered, bounded fan-out of chunks to worker processes (or in-process for one worker)."""

    def __init__(self, workers: int, initargs: tuple[Any, ...]):
        self.workers = workers
        self.pool = None
        if workers > 1:
            forking = os.name == "posix"
            context = multiprocessing.get_context("fork" if forking else "spawn")
            if forking:
                # Load once here; the workers fork with it (copy-on-write) instead of each loading it.
                preload(initargs[1], initargs[2], initargs[3] if len(initargs) > 3 else None)
            initargs = (*initargs, context.Lock()) if len(initargs) == 5 else initargs
            self.pool = context.Pool(workers, initializer=init_worker, initargs=initargs)
        else:
            init_worker(*initargs)

    def map(
        self, chunks: Iterator[tuple[list[tuple[int, Any]], int]], func: Callable[[Any], Any]
    ) -> Iterator[tuple[Any, int]]:
        if self.pool is None:
            for chunk, position in chunks:
                yield func(chunk), position
            return
        pending: collections.deque[tuple[Any, int]] = collections.deque()
        limit = self.workers * 3
        for chunk, position in chunks:
            pending.append((self.pool.apply_async(func, (chunk,)), position))
            if len(pending) >= limit:
                result, at = pending.popleft()
                yield result.get(), at
        while pending:
            result, at = pending.popleft()
            yield result.get(), at

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
        STATE.clear()
        PRELOADED.clear()


def progress_bar(enabled: bool, total_bytes: int, description: str) -> Any:
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "{task.fields[records]:,} 条 · {task.fields[rate]:,.0f}/s · "
            "标记 {task.fields[flagged]:,} · 错误 {task.fields[errors]:,}"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
    )
    progress.start()
    task = progress.add_task(description, total=max(total_bytes, 1), records=0, rate=0.0, flagged=0, errors=0)
    return progress, task
