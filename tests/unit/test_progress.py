import io

from ndid_tasks.progress import Progress


def test_a_log_gets_plain_lines_with_count_rate_and_eta():
    out = io.StringIO()  # not a terminal, as when output goes to a log
    with Progress(10, "indexing", stream=out, every_s=0.0) as p:
        for _ in range(4):
            p.update(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # one per update (every_s=0) and the closing line
    assert lines[-1].startswith("indexing: 4/10 (40%) img") and "img/s" in lines[-1] and "ETA" in lines[-1]
    assert "\r" not in out.getvalue()


def test_lines_are_spaced_in_time():
    out = io.StringIO()
    with Progress(1000, "x", stream=out, every_s=3600) as p:
        for _ in range(1000):
            p.update(1)
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]  # only the closing line
    assert "1000/1000 (100%)" in out.getvalue()
