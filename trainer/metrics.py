"""RUN/metrics.jsonl (one {"step": n, "loss": x, ...} per logged step), RUN/loss.png, optional TensorBoard."""

from __future__ import annotations

import json
import os

from lumos.curation.errors import UserError


class MetricsLog:
    def __init__(self, run: str, main: bool, tensorboard: bool = False, start_step: int = 0):
        self.main, self.path, self.writer = main, os.path.join(run, "metrics.jsonl"), None
        if not main:
            return
        if os.path.exists(self.path):  # a resumed run: drop what was logged after its checkpoint
            with open(self.path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= start_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
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
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
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
