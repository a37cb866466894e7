"""RUN/metrics.jsonl (one {"step": n, "loss": x, ...} per logged step), RUN/loss.png, optional TensorBoard."""

from __future__ import annotations

import json
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


def plot_loss(steps: list[int], losses: list[float], path: str, size=(640, 360), margin=40) -> None:
    """A plain loss curve (PIL only: no plotting library on the training nodes)."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    lo, hi = min(losses), max(losses)
    span_x, span_y = max(steps[-1] - steps[0], 1), max(hi - lo, 1e-12)
    points = [(margin + (s - steps[0]) / span_x * (w - 2 * margin), h - margin - (v - lo) / span_y * (h - 2 * margin))
              for s, v in zip(steps, losses)]
    draw.rectangle([margin, margin, w - margin, h - margin], outline="gray")
    draw.line(points, fill=(30, 90, 200), width=2)
    draw.text((margin, 8), f"loss {losses[0]:.4f} -> {losses[-1]:.4f}", fill="black")
    draw.text((margin, h - margin + 8), f"step {steps[0]}", fill="black")
    draw.text((w - margin - 80, h - margin + 8), f"step {steps[-1]}", fill="black")
    draw.text((4, margin), f"{hi:.3g}", fill="black")
    draw.text((4, h - margin - 10), f"{lo:.3g}", fill="black")
    image.save(path)
