"""The dependency rule between the parts (issue 12, item 9), read from the imports of every module.

    floor/      depends on nothing in lumos but schemas/ (and itself)
    schemas/    depends on nothing in lumos but itself
    curation/, pipeline/, trainer/   depend on floor/ and schemas/, never on each other
    generation/ (sampling, export, evaluation, the lumos-train command) sits on top: it may use trainer/
                and the encoders of pipeline/ (pipeline.encoders only), never curation/

The trainer never imports the encoders: --sample-every's grids come through a hook the command passes in
(tests/trainer/test_trainer_apart.py runs it).

Every import is checked, at module level or inside a function, `import x` and `from x import y` alike; a
relative import is resolved against the module's own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("floor", "schemas", "curation", "pipeline", "trainer", "generation")

ALLOWED = {  # part -> lumos parts it may import
    "floor": {"floor", "schemas"},
    "schemas": {"schemas"},
    "curation": {"curation", "floor", "schemas"},
    "pipeline": {"pipeline", "floor", "schemas"},
    "trainer": {"trainer", "floor", "schemas"},
    "generation": {"generation", "trainer", "floor", "schemas", "pipeline.encoders"},
}


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, a module of `package` (e.g. lumos.trainer)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..floor import y
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "lumos" or (node.level and not node.module):  # from lumos import floor, from . import x
                found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
            else:
                found.append((node.lineno, module))
    return sorted(found)


def violations(part: str, relpath: str, source: str) -> list[str]:
    """The imports of one module (at `relpath` under the part's folder) that break the rule."""
    subpackage = Path(relpath).parent.parts
    package = ".".join(("lumos", part, *subpackage))
    bad = []
    for line, module in imported_modules(source, package):
        names = module.split(".")
        if names[0] != "lumos" or len(names) < 2:
            continue
        if names[1] not in ALLOWED[part] and ".".join(names[1:3]) not in ALLOWED[part]:
            bad.append(f"{part}/{relpath}:{line}: imports {module}")
    return bad


def tree_violations(root: Path) -> tuple[int, list[str]]:
    """(modules read, violations) over every .py file of the parts under `root`."""
    bad, checked = [], 0
    for part in PARTS:
        folder = root / part
        for path in sorted(folder.rglob("*.py")):
            bad.extend(violations(part, path.relative_to(folder).as_posix(), path.read_text()))
            checked += 1
    return checked, bad


def test_each_part_imports_only_what_it_sits_on():
    checked, bad = tree_violations(ROOT)
    assert checked > 50, f"only {checked} modules found under {ROOT}"
    assert not bad, "imports that break the layering rule (README, Layout):\n" + "\n".join(bad)


def test_the_tree_walk_finds_a_violation(tmp_path):
    (tmp_path / "trainer" / "sub").mkdir(parents=True)
    (tmp_path / "trainer" / "sub" / "data.py").write_text("def f():\n    from lumos.curation.job_dir import JobDir\n")
    (tmp_path / "generation").mkdir()
    (tmp_path / "generation" / "fid.py").write_text("from lumos.pipeline.encoders.base import center_square\n")
    (tmp_path / "floor").mkdir()
    (tmp_path / "floor" / "errors.py").write_text("import lumos.pipeline\n")
    assert tree_violations(tmp_path) == (3, ["floor/errors.py:1: imports lumos.pipeline",
                                             "trainer/sub/data.py:2: imports lumos.curation.job_dir"])


def test_the_check_sees_violations():
    """The rule fails on each kind of violation, wherever the import sits, and passes the allowed ones."""
    src = (
        "import os\n"
        "from lumos.floor.errors import UserError\n"
        "from lumos.schemas import images\n"
        "from lumos.pipeline.encoders import EncoderConfig\n"
        "def f():\n"
        "    import lumos.curation.job_dir\n"
        "    from lumos import pipeline\n"
        "    from ..curation import options\n"
    )
    assert violations("trainer", "train.py", src) == [
        "trainer/train.py:4: imports lumos.pipeline.encoders",
        "trainer/train.py:6: imports lumos.curation.job_dir",
        "trainer/train.py:7: imports lumos.pipeline",
        "trainer/train.py:8: imports lumos.curation",
    ]
    assert violations("generation", "export.py", src) == [  # generation may use the encoders only
        "generation/export.py:6: imports lumos.curation.job_dir",
        "generation/export.py:7: imports lumos.pipeline",
        "generation/export.py:8: imports lumos.curation",
    ]
    assert violations("trainer", "fid.py", "from lumos.pipeline.encoders.base import center_square\n") == [
        "trainer/fid.py:1: imports lumos.pipeline.encoders.base"]  # no exception left in the trainer
    assert violations("trainer", "train.py", "from lumos.generation.held_back_grid import HeldBackGrid\n") == [
        "trainer/train.py:1: imports lumos.generation.held_back_grid"]
    assert violations("generation", "sampler.py", "from lumos.trainer.models import LumosDiT\n") == []
    assert violations("curation", "mix_job.py", "from lumos.pipeline.encode_job import run_encode\n") \
        == ["curation/mix_job.py:1: imports lumos.pipeline.encode_job"]
    assert violations("curation", "cli.py", "import lumos.trainer.cli\n") == [
        "curation/cli.py:1: imports lumos.trainer.cli"]
    assert violations("pipeline", "encoders/clip.py", "from lumos.curation.aesthetic import OPENAI_MEAN\n") == [
        "pipeline/encoders/clip.py:1: imports lumos.curation.aesthetic"]
    assert violations("pipeline", "encoders/clip.py", "from ...curation import aesthetic\n") == [
        "pipeline/encoders/clip.py:1: imports lumos.curation"]
    assert violations("pipeline", "cli.py", "from lumos.trainer.models import DIT_MODELS\n") == [
        "pipeline/cli.py:1: imports lumos.trainer.models"]
    assert violations("floor", "x.py", "from lumos.curation.job_dir import JobDir\nfrom . import errors\n") == [
        "floor/x.py:1: imports lumos.curation.job_dir"]
    assert violations("schemas", "x.py", "from lumos.floor.errors import UserError\n") == [
        "schemas/x.py:1: imports lumos.floor.errors"]
    assert violations("pipeline", "encoders/base.py", src.split("def f")[0].replace("lumos.pipeline", "lumos.trainer")
                      ) == ["pipeline/encoders/base.py:4: imports lumos.trainer.encoders"]
