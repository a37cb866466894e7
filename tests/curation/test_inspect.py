"""`lumos-curate inspect` on a real Lance images table: the counts, fragments and drop stats it prints, and a
contact sheet of the seeded random rows (each drawn from the table's own image bytes)."""

import subprocess
import sys

import lance
from PIL import Image
from test_table_filter import _images

from lumos.curation.inspect_table import inspect_table
from lumos.curation.table_filter import TableFilterConfig, filter_table


def test_inspect_prints_the_table_and_draws_a_contact_sheet(tmp_path):
    uri = _images(str(tmp_path / "images.lance"))
    filter_table(uri, TableFilterConfig(min_aesthetic=5.0, min_size=512), say=lambda *_: None)
    sheet = tmp_path / "sheet.png"
    result = subprocess.run([sys.executable, "-m", "lumos.curation.cli", "inspect", uri, "--sheet", str(sheet),
                             "--count", "4", "--seed", "1"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    ds = lance.dataset(uri)
    assert lines[0].startswith(f"{uri}: 5 rows in {len(ds.get_fragments())} fragments")
    assert "filter stats: 14 rows in, 5 kept; dropped: too_small 4, aesthetic_missing 3, aesthetic_too_low 2" in lines
    assert lines[-1] == f"contact sheet: {sheet} (4 random rows, seed 1)"
    image = Image.open(sheet)
    assert image.size[0] == 4 * 168 and image.size[1] > 168
    # a cell holds its row's picture: the sheet's pixels are not blank where the thumbnails go
    cells = [image.crop((k * 168 + 4, 4, k * 168 + 164, 84)) for k in range(4)]
    assert all(len(set(cell.getdata())) > 10 for cell in cells)
    inspect_table(uri, str(tmp_path / "again.png"), count=4, seed=1, say=lambda *_: None)  # in process: faster
    assert (tmp_path / "again.png").read_bytes() == sheet.read_bytes()  # the seed picks the same rows


def test_inspect_refuses_what_is_not_an_images_table_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lumos.curation.cli", "inspect", str(tmp_path / "none.lance")],
                            capture_output=True, text=True, timeout=300)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and lines == [f"error: TABLE {tmp_path / 'none.lance'} is not a Lance table"], lines
