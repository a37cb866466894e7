"""RUN/metrics.jsonl (one {"step": n, "loss": x, ...} per logged step), RUN/loss.png, optional TensorBoard."""

from __future__ import annotations

import json
import math
import os

from lumos.floor.errors import UserError


def _logged(path: str):
    """(line, row) for each logged row; a line a killed run left half-written (cut short, not JSON) is left out."""
    with open(path, errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                yield line if line.endswith("\n") else line + "\n", row


def read_rows(path: str) -> list[dict]:
    return [row for _, row in _logged(path)]


def keep_until(path: str, step: int) -> None:
    """A resumed run: keep only what was logged up to its checkpoint (and no half-written line), atomically."""
    if not os.path.exists(path):
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(line for line, row in _logged(path) if row["step"] <= step)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    def __init__(self, run: str, main: bool, tensorboard: bool = False, start_step: int = 0):
        self.main, self.path, self.writer = main, os.path.join(run, "metrics.jsonl"), None
        if not main:
            return
        keep_until(self.path, start_step)
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(os.path.join(run, "tensorboard"))

    def write(self, row: dict) -> None:
        if not self.main:
            return
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer:
            for key, value in row.items():
                if key != "step":
                    self.writer.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if not self.main:
            return
        self.file.close()
        if self.writer:
            self.writer.close()
        rows = [r for r in read_rows(self.path) if isinstance(r.get("loss"), (int, float))]
        if len(rows) >= 2:
            plot_loss([r["step"] for r in rows], [r["loss"] for r in rows], os.path.join(os.path.dirname(self.path), "loss.png"))


def smoothed(values: list[float], window: int) -> list[float]:
    """The trailing mean of the last `window` values at each point (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if (hi - lo) / (m * power) <= count + 1)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + k * step for k in range(int((hi - first) / step + 1e-9) + 1)]


def plot_loss(steps: list[int], losses: list[float], path: str, size=(720, 400), margin=56) -> None:
    """The loss curve with axes, ticks and a smoothed line over the raw one (PIL only: no plotting library on
    the training nodes)."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    lo, hi = min(losses), max(losses)
    span_x, span_y = max(steps[-1] - steps[0], 1), max(hi - lo, 1e-12)

    def x(step):
        return margin + (step - steps[0]) / span_x * (w - 2 * margin)

    def y(value):
        return h - margin - (value - lo) / span_y * (h - 2 * margin)

    draw.rectangle([margin, margin, w - margin, h - margin], outline="gray")
    for value in ticks(lo, hi):
        draw.line([(margin - 4, y(value)), (margin, y(value))], fill="black")
        draw.line([(margin, y(value)), (w - margin, y(value))], fill=(235, 235, 235))
        draw.text((4, y(value) - 5), f"{value:.3g}", fill="black")
    for step in ticks(steps[0], steps[-1]):
        draw.line([(x(step), h - margin), (x(step), h - margin + 4)], fill="black")
        draw.text((x(step) - 10, h - margin + 8), f"{step:g}", fill="black")
    draw.line([(x(s), y(v)) for s, v in zip(steps, losses)], fill=(170, 195, 235), width=1)
    window = max(1, len(losses) // 20)
    draw.line([(x(s), y(v)) for s, v in zip(steps, smoothed(losses, window))], fill=(30, 90, 200), width=2)
    draw.text((margin, 8), f"loss {losses[0]:.4f} -> {losses[-1]:.4f} (dark: mean of {window} logged steps)",
              fill="black")
    draw.text((w // 2 - 12, h - 20), "step", fill="black")
    image.save(path)
