"""The console summary of a curation job names the archives it could not read."""

from lumos.curation.job_dir import SHOWN_ARCHIVES, summary


def test_summary_names_unreadable_archives_and_counts_the_rest():
    archives = [{"path": f"/data/sa_{i:06d}.tar", "error": "the tar is truncated"} for i in range(SHOWN_ARCHIVES + 2)]
    stats = {"rows": 30, "kept": 10, "dropped": {"unreadable_archive": 12, "too_small": 8},
             "unreadable_archives": archives, "timings": {"total_s": 1.5}}
    lines = summary(stats).splitlines()
    assert lines[0] == "30 rows in, 10 images kept"
    named = [line for line in lines if line.startswith("  unreadable archive: ")]
    assert named == [f"  unreadable archive: /data/sa_{i:06d}.tar (the tar is truncated)" for i in range(SHOWN_ARCHIVES)]
    assert "  ... and 2 more unreadable archives: see stats.json" in lines
    assert not any("unreadable archive:" in line for line in summary({**stats, "unreadable_archives": []}).splitlines())
