"""Training throughput of the real step (`Run.train_step`, fed by the trainer's own loader from a Lance features
table) on the device here: images/s per device, the step split into data wait / forward+backward /
optimizer+EMA, peak memory and MFU. FLOPs come from trainer/flops.py (checked against
torch.utils.flop_counter in tests/trainer/test_flops.py), training = 3 × forward.

The features table has lumos-encode's exact sd-vae + dino-b layout at 256 px with random values
(bench/train_data.py): throughput does not depend on the values. On a machine without a GPU it runs DiT-S/2 at
batch 4 in fp32 and says so: those figures are not GPU figures.

    .venv/bin/python bench/train_gpu.py [--model DiT-XL/2] [--batch 256] [--precision fp16|bf16]
        [--steps 30] [--grad-checkpointing] [--compile]

With --compile the warm-up steps include the compilation; the timed steps do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("LANCE_LOG", "error")

import torch  # noqa: E402
from train_data import i2i_features_table  # noqa: E402

from lumos.trainer.flops import train_flops  # noqa: E402
from lumos.trainer.train import Run, TrainConfig  # noqa: E402

# Dense fp16/bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), by device-name substring.
PEAKS = {"H200": 989.4e12, "H100": 989.4e12, "H800": 989.4e12, "A100": 312e12, "L40S": 362.05e12}


def peak_of(name: str) -> float | None:
    return next((v for k, v in PEAKS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-XL/2" if cuda else "DiT-S/2")
    p.add_argument("--batch", type=int, default=256 if cuda else 4)
    p.add_argument("--precision", default="fp16" if cuda else "fp32", choices=["fp16", "bf16", "fp32"])
    p.add_argument("--steps", type=int, default=30 if cuda else 6, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--arch", default="pixart", choices=["pixart", "lumos"],
                   help="lumos-train --arch (lumos: per-block adaLN, 8 output channels, the hybrid loss)")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT (lumos-train --compile)")
    p.add_argument("--workers", type=int, default=4 if cuda else 0)
    args = p.parse_args()
    if not cuda:
        print(f"no GPU here: {args.model} at batch {args.batch}, {args.precision}, on the CPU; these are not GPU figures")

    with tempfile.TemporaryDirectory() as tmp:
        rows = args.batch * (args.steps + 4)
        data = i2i_features_table(os.path.join(tmp, "features.lance"), rows)
        config = TrainConfig.of(mode="i2i", data=data, output=os.path.join(tmp, "run"), model=args.model,
                                batch_size=args.batch, precision=args.precision, workers=args.workers,
                                grad_checkpointing=args.grad_checkpointing, compile=args.compile, arch=args.arch,
                                steps=args.steps + 3)
        run = Run(config, say=lambda *_: None)
        dev = run.device
        loader = run.loader()
        for _ in range(3):  # warm-up: allocator, cuDNN/cuBLAS choices, loader workers
            run.train_step(next(loader))
        sync(dev)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        waited = stepped = 0.0
        for _ in range(args.steps):
            t0 = time.perf_counter()
            batch = next(loader)
            t1 = time.perf_counter()
            run.train_step(batch)
            sync(dev)
            waited, stepped = waited + t1 - t0, stepped + time.perf_counter() - t1
        # optimizer + EMA alone, on the gradients of the last step, as train_step runs them
        t0 = time.perf_counter()
        for _ in range(args.steps):
            run.optimizer.step()
            run.update_ema(0.9999)
        sync(dev)
        update = (time.perf_counter() - t0) / args.steps
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else float("nan")

    step = stepped / args.steps
    images_s = args.batch / (step + waited / args.steps)
    # the pixart layout's count; lumos' per-block adaLN and 8 output channels add < 0.2% (on t_emb, one token)
    flops = train_flops(args.model, 32, 4, 1, 768)
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    peak = peak_of(name) if cuda else None
    print(f"device {name}; {args.model} --arch {args.arch}, 256 px (latents 4x32x32), batch {args.batch}, {args.precision}, "
          f"grad checkpointing {'on' if args.grad_checkpointing else 'off'}, compile {'on' if args.compile else 'off'}")
    print(f"images/s per device  {images_s:10.1f}")
    print(f"step ms              {1000 * step:10.1f}  (forward+backward {1000 * (step - update):.1f}, "
          f"optimizer+EMA {1000 * update:.1f}); data wait {1000 * waited / args.steps:.1f} ms a step")
    print(f"train GFLOPs/image   {flops / 1e9:10.1f}")
    print(f"peak memory MB       {peak_mb:10.0f}")
    if peak:
        print(f"MFU                  {images_s * flops / peak:10.1%}  (peak {peak / 1e12:.0f} TFLOP/s dense)")
    else:
        print("MFU                  n/a (no peak known for this device)")


if __name__ == "__main__":
    main()
