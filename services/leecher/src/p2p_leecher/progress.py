"""Download progress: a rich bar on a terminal, a log line every few seconds otherwise.

Sizes in MiB and rates in MB/s, as in the README and the leecher's summary line."""

from __future__ import annotations

import sys
import time

import structlog

log = structlog.get_logger()

MIB = 1 << 20


class Progress:
    def __init__(self, name: str, total: int, done: int, bar: bool, every: float = 2.0) -> None:
        self.name, self.total, self.done = name, total, done
        self.peers = 0
        self.every = every
        self._started = self._last = time.monotonic()
        self._start_bytes = done
        self._bar = None
        if bar:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[peers]} seeders"),
                console=Console(file=sys.stderr),
            )
            self._task = self._bar.add_task(name, total=total, completed=done, peers=0)
            self._bar.start()

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, peers=self.peers)
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            rate = (self.done - self._start_bytes) / max(now - self._started, 1e-9)
            log.info(
                "progress",
                file=self.name,
                done_mib=round(self.done / MIB, 1),
                total_mib=round(self.total / MIB, 1),
                percent=round(100 * self.done / max(self.total, 1), 1),
                mb_per_s=round(rate / 1e6, 1),
                seeders=self.peers,
            )

    def set_peers(self, count: int) -> None:
        self.peers = count
        if self._bar is not None:
            self._bar.update(self._task, peers=count)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
