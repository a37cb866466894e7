"""A user's mistake ends the command with exit code 2 and one line on stderr: no traceback, and no
half-written output left behind."""

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from web_cases import CASES, write_metadata

from lumos.curation.web_job import WebJob, run_web_job


def _curate(*args):
    result = subprocess.run([sys.executable, "-m", "lumos.curation.cli", *args], capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode, lines


def _assert_one_line_error(code, lines, *fragments):
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "Traceback" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_input(tmp_path):
    out = tmp_path / "out"
    code, lines = _curate("laion", "--input", str(tmp_path / "nope.parquet"), "--output", str(out))
    _assert_one_line_error(code, lines, "does not exist", "nope.parquet")
    assert not out.exists()


def test_not_a_parquet_file(tmp_path):
    bad = tmp_path / "meta.parquet"
    bad.write_text("URL,TEXT,WIDTH,HEIGHT\nhttp://x/1.jpg,hi,800,600\n")
    out = tmp_path / "out"
    code, lines = _curate("laion", "--input", str(bad), "--output", str(out))
    _assert_one_line_error(code, lines, "is not a readable parquet file")
    assert not out.exists()


def test_empty_parquet(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"URL": pa.array([], pa.string()), "WIDTH": pa.array([], pa.int64()),
                             "HEIGHT": pa.array([], pa.int64())}), empty)
    out = tmp_path / "out"
    code, lines = _curate("laion", "--input", str(empty), "--output", str(out))
    _assert_one_line_error(code, lines, "holds no rows")
    assert not out.exists()


def test_folder_without_parquet_files(tmp_path):
    (tmp_path / "in").mkdir()
    code, lines = _curate("coyo", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, lines, "no .parquet file")


def test_missing_column_is_named_with_the_columns_present(tmp_path):
    meta = tmp_path / "coyo.parquet"
    pq.write_table(pa.table({"url": ["http://x/1.jpg"], "text": ["a"], "height": [600]}), meta)
    code, lines = _curate("coyo", "--input", str(meta), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, lines, "no width column", "url, text, height")
    assert not (tmp_path / "out").exists()


def test_aesthetic_threshold_without_scores_says_to_score_first(tmp_path):
    meta = tmp_path / "laion2b.parquet"
    pq.write_table(pa.table({"URL": ["http://x/1.jpg"], "TEXT": ["a"], "WIDTH": [800], "HEIGHT": [600]}), meta)
    code, lines = _curate("laion", "--input", str(meta), "--output", str(tmp_path / "out"))
    _assert_one_line_error(code, lines, "no aesthetic score column", "lumos-curate score")
    code, lines = _curate("laion", "--input", str(meta), "--output", str(tmp_path / "out"), "--min-aesthetic", "0",
                          "--max-watermark", "0.3")
    _assert_one_line_error(code, lines, "--max-watermark 0.3", "no such score column")


def test_output_holding_another_job_is_refused(tmp_path, ray_session):
    meta = write_metadata(str(tmp_path / "meta.parquet"), "laion-upper", "http://127.0.0.1:9", CASES)
    out = tmp_path / "out"
    run_web_job(WebJob(source="laion", input=meta, output=str(out), download=False), say=lambda *_: None)
    before = sorted(os.listdir(out))
    code, lines = _curate("laion", "--input", meta, "--output", str(out), "--no-download", "--min-aesthetic", "6")
    _assert_one_line_error(code, lines, "holds a different job", "filters")
    assert sorted(os.listdir(out)) == before

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    code, lines = _curate("laion", "--input", meta, "--output", str(stray), "--no-download")
    _assert_one_line_error(code, lines, "not empty and holds no lumos-curate job")
    assert sorted(os.listdir(stray)) == ["notes.txt"]


@pytest.mark.parametrize("command", ["laion", "coyo", "sample", "sam", "journeydb", "imagenet", "score", "mix"])
def test_help_explains_every_option(command):
    import typer

    from lumos.curation.cli import app

    click_command = typer.main.get_command(app).commands[command]
    assert click_command.help
    for param in click_command.params:
        assert param.help and len(param.help) > 20, param.name
    result = subprocess.run([sys.executable, "-m", "lumos.curation.cli", command, "--help"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("args, fragments", [
    (["sam", "--input", "{tmp}/nope"], ["input", "is not a folder"]),
    (["sam", "--input", "{tmp}", "--aesthetic-model", "bench-b16"], ["--aesthetic-model bench-b16", "laion-v2, tiny"]),
    (["journeydb", "--input", "{tmp}", "--annotations", "{tmp}/missing.jsonl"], ["cannot read annotations"]),
    (["imagenet", "--input", "{tmp}"], ["no image file in"]),
    (["score", "--input", "{tmp}/nope.lance"], ["--input", "is not a Lance table"]),
    (["mix", "--input", "{tmp}/a.lance", "--take", "laion=many"], ["--take laion=many", "SOURCE=N"]),
])
def test_dump_score_and_mix_commands_refuse_bad_input_in_one_line(tmp_path, args, fragments):
    out = tmp_path / "out"
    code, lines = _curate(*[a.format(tmp=tmp_path) for a in args], *([] if args[0] == "score" else
                                                                     ["--output", str(out)]))
    _assert_one_line_error(code, lines, *fragments)
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    (["laion", "--image-size", "0"], "--image-size 0: must be a number >= 1"),
    (["laion", "--shard-size", "0"], "--shard-size 0"),
    (["laion", "--min-size", "-1"], "--min-size -1: must be a number >= 0"),
    (["laion", "--workers", "0"], "--workers 0"),
    (["coyo", "--threads", "0"], "--threads 0"),
    (["coyo", "--timeout", "0"], "--timeout 0"),
    (["laion", "--min-aesthetic", "-1"], "--min-aesthetic -1.0"),
    (["laion", "--min-aesthetic", "nan"], "--min-aesthetic nan"),
    (["laion", "--max-watermark", "1.5"], "--max-watermark 1.5: must be in [0, 1]"),
    (["coyo", "--max-unsafe", "-0.1"], "--max-unsafe -0.1"),
    (["sam", "--image-size", "0"], "--image-size 0"),
    (["journeydb", "--annotations", "{tmp}/a.jsonl", "--min-size", "-5"], "--min-size -5"),
    (["imagenet", "--min-aesthetic", "-2"], "--min-aesthetic -2.0"),
    (["mix", "--take", "laion=-1"], "--take laion=-1: expected SOURCE=N"),
    (["mix", "--take", "=5"], "--take =5"),
    (["mix", "--take", "laion=1", "--take", "laion=2"], "laion is given twice"),
])
def test_impossible_option_values_fail_in_one_line_before_anything_is_written(tmp_path, args, fragment):
    """In process (the same `_run` wrapper as the command line): one line, exit 2, no output folder. The options
    are checked before any input is read (the web commands get valid metadata: only the option is at fault)."""
    from typer.testing import CliRunner

    from lumos.curation.cli import app

    meta = write_metadata(str(tmp_path / "meta.parquet"), "coyo" if args[0] == "coyo" else "laion-upper",
                          "http://127.0.0.1:9", CASES)
    inputs = {"laion": meta, "coyo": meta, "mix": str(tmp_path / "a.lance")}.get(args[0], str(tmp_path))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [args[0], "--input", inputs, "--output", str(out),
                                      *[a.format(tmp=tmp_path) for a in args[1:]]])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    _assert_one_line_error(result.exit_code, lines, fragment)
    assert not out.exists()
