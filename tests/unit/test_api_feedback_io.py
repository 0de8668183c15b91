import pytest

from services.api.feedback_io import BulkFormatError, parse_bulk


def test_csv_rows_carry_their_line_numbers():
    body = b"id,number,label,note\r\na1,8613800138000,complaint,rude robot\r\n\r\n" \
           b"a2,8613800138001,legit,\r\na3,1,2,3,4\r\n"
    rows, errors = parse_bulk(body, "text/csv")
    assert rows == [(2, {"id": "a1", "number": "8613800138000", "label": "complaint",
                         "note": "rude robot"}),
                    (4, {"id": "a2", "number": "8613800138001", "label": "legit"})]
    assert errors == [{"line": 5, "error": "more cells than header columns"}]


def test_ndjson_bad_lines_are_reported_not_fatal():
    body = b'{"id":"a","number":"1","label":"robot"}\n\nnot json\n[1]\n{"id":"b"}\n'
    rows, errors = parse_bulk(body, "application/x-ndjson")
    assert [line for line, _ in rows] == [1, 5]
    assert [e["line"] for e in errors] == [3, 4]


def test_whole_file_errors():
    with pytest.raises(BulkFormatError, match="content type"):
        parse_bulk(b"x", "text/plain")
    with pytest.raises(BulkFormatError, match="UTF-8"):
        parse_bulk(b"\xff\xfe\x00", "text/csv")
    with pytest.raises(BulkFormatError, match="header"):
        parse_bulk(b"", "text/csv")
