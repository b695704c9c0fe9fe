"""Audited label files are validated row by row: a bad row is reported with file and line and
skipped, never silently turned into a negative; one bad file never fails the others."""

from ndid_tasks.labels import parse_labels


def test_jsonl_rows_are_validated_one_by_one():
    lines = [
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/b.jpg", "is_duplicate": true, "auditor": "ann"}',
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/c.jpg", "is_duplicate": tru}',  # typo: not JSON
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/d.jpg", "auditor": "ann"}',  # no is_duplicate
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/e.jpg", "is_duplicate": "maybe"}',
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/f.jpg", "is_duplicate": "unsure"}',  # not a label
        '{"image_a": "s3://b/a.jpg", "image_b": "s3://b/a.jpg", "is_duplicate": false}',
        '["not", "an", "object"]',
        '',
        '{"image_a": "s3://b/g.jpg", "image_b": "s3://b/h.jpg", "is_duplicate": "no", "auditor": "bo"}',
    ]
    data = "\n".join(lines).encode()
    labels, errors = parse_labels("labels/day1.jsonl", data)
    assert [(lab.image_b, lab.is_duplicate) for lab in labels] == [("s3://b/b.jpg", True), ("s3://b/h.jpg", False)]
    assert [(e.file, e.line) for e in errors] == [("labels/day1.jsonl", n) for n in (2, 3, 4, 6, 7)]
    assert "not JSON" in errors[0].reason and "missing is_duplicate" in errors[1].reason
    assert "not true/false" in errors[2].reason and "same image" in errors[3].reason


def test_csv_rows_and_an_empty_value_is_an_error_not_a_negative():
    data = (b"image_a,image_b,is_duplicate,auditor\n"
            b"s3://b/a.jpg,s3://b/b.jpg,1,ann\n"
            b"s3://b/a.jpg,s3://b/c.jpg,,ann\n"
            b"s3://b/a.jpg,,0,ann\n"
            b"s3://b/x.jpg,s3://b/y.jpg,FALSE,ann\n")
    labels, errors = parse_labels("labels/b.csv", data)
    assert [(lab.image_b, lab.is_duplicate) for lab in labels] == [("s3://b/b.jpg", True), ("s3://b/y.jpg", False)]
    assert [(e.line, e.reason) for e in errors] == [(3, "missing is_duplicate"), (4, "missing image_b")]


def test_a_file_that_is_not_text_is_one_error():
    labels, errors = parse_labels("labels/x.jsonl", b"\xff\xfe\x00garbage")
    assert labels == [] and len(errors) == 1 and errors[0].line == 0
