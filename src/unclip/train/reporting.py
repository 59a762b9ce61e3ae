"""What a training run tells the outside world, and hears from it: log lines or a progress bar, the metrics
JSONL (rank 0), and SIGINT/SIGTERM asking it to stop after the current step."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from unclip.train.config import TrainConfig
from unclip.train.dist import DistInfo


class StopFlag:
    """Set by SIGINT/SIGTERM (first signal: stop after this step; a second SIGINT interrupts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Reporter:
    """Progress bar or log lines (rank 0 only) and the metrics JSONL."""

    def __init__(self, task_name: str, config: TrainConfig, out_dir: Path, info: DistInfo, step: int, progress):
        self.name, self.config, self.info = task_name, config, info
        self.metrics_path = out_dir / "metrics.jsonl"
        show = sys.stderr.isatty() if progress is None else bool(progress)
        self.bar = None
        if info.is_main and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.steps, initial=step, desc=task_name, file=sys.stderr, dynamic_ncols=True)

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, record: dict[str, Any], announce: bool = True) -> None:
        if not self.info.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if not announce:
            return
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", sps=f"{record['samples_per_s']:.1f}", refresh=False)
        elif "loss" in record:
            self.say(
                f"step {record['step']}/{self.config.steps} loss {record['loss']:.4g} lr {record['lr']:.3g} "
                f"{record['samples_per_s']:.1f} samples/s grad_norm {record['grad_norm']:.3g}"
            )
        else:
            items = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float))
            self.say(f"step {record['step']} {items}")

    def say(self, text: str) -> None:
        if not self.info.is_main:
            return
        line = f"[{self.name}] {text}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
