"""One shape for every Ray stage of curation and encoding (DESIGN.md 7, after NeMo Curator's stages):

    @dataclass
    class Gate(Stage):
        bound: float                        # its settings are its fields (pickled to each worker)

        def setup(self) -> None: ...        # once per worker task, or once per actor for a model stage
        def __call__(self, batch: pa.Table) -> pa.Table: ...   # an Arrow batch in; a table (or tables) out

A stage declares what it needs (`placement()`: rows a call, CPUs, GPUs, and whether it is a model stage
that runs in an actor pool); `run_stage(ds, stage, placement)` is the one place stages are put on the
cluster, so a caller that knows better (the cluster's GPUs split between encoders) passes its own placement.
Rows a stage drops carry their reason in `drop_reason`; the writer counts them (curation/unit_writer.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from lumos.floor.errors import UserError


@dataclass(frozen=True)
class Placement:
    batch_size: int | None = None  # rows a call; None: a whole block
    actors: int = 0  # 0: plain tasks; N: a pool of N actors that each run setup() once (model stages)
    num_cpus: float = 1
    num_gpus: float = 0  # per task or actor


class Stage:
    """Base of the stages: see the module docstring. Subclasses are dataclasses."""

    def placement(self) -> Placement:
        return Placement()

    def setup(self) -> None:
        """Load what the stage needs (a model, a table handle) once per task or actor."""

    def __call__(self, batch: pa.Table) -> pa.Table | Iterator[pa.Table]:
        raise NotImplementedError


class _InTask:
    """A stage as a task function: set up on its first batch in the task."""

    def __init__(self, stage: Stage):
        self.stage, self.ready = stage, False

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        if not self.ready:
            self.stage.setup()
            self.ready = True
        out = self.stage(batch)
        if isinstance(out, pa.Table):
            yield out
        else:
            yield from out


class _InActor:
    """A stage as an actor: set up once, when the actor starts."""

    def __init__(self, stage: Stage):
        stage.setup()
        self.call = _InTask(stage)
        self.call.ready = True

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        yield from self.call(batch)


def require_gpus(what: str) -> None:
    """One line, at once, when `what` needs GPUs and the Ray cluster has none: Ray itself would wait forever
    for a node that can fulfil {GPU: 1}. (A cluster that adds GPU nodes on demand must start one first.)"""
    import ray

    if not ray.cluster_resources().get("GPU", 0):
        raise UserError(f"{what}: the Ray cluster has no GPU ({ray.cluster_resources().get('CPU', 0):g} CPUs, 0 GPUs); "
                        "use --device cpu (or auto), or run on a cluster with GPUs")


def run_stage(ds, stage: Stage, placement: Placement | None = None):
    """`ds` with `stage` applied to Arrow batches: in tasks, or in an actor pool for a model stage."""
    from ray.data import ActorPoolStrategy

    p = placement or stage.placement()
    common = {"batch_format": "pyarrow", "batch_size": p.batch_size, "num_cpus": p.num_cpus}
    if p.num_gpus:
        require_gpus(f"{type(stage).__name__} ({p.num_gpus:g} GPU a worker)")
        common["num_gpus"] = p.num_gpus
    if p.actors:
        return ds.map_batches(_InActor, fn_constructor_args=(stage,), **common,
                              compute=ActorPoolStrategy(size=p.actors, max_concurrent_calls_per_actor=1))
    return ds.map_batches(_InTask(stage), **common)
