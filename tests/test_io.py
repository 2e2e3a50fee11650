"""Reading batches: JSON Lines or a JSON array, streamed, with line numbers for bad records."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st

from rx_audit.contract import RecordError
from rx_audit.io import iter_records

records = st.lists(st.fixed_dictionaries({"id": st.text(min_size=1, max_size=8), "n": st.integers()}), max_size=30)


@given(records)
def test_json_lines_and_array_give_the_same_records(values):
    lines = "\n".join(json.dumps(v, ensure_ascii=False) for v in values) + "\n"
    array = json.dumps(values, ensure_ascii=False, indent=1)
    from_lines = [record for _, record in iter_records(io.StringIO(lines))]
    from_array = [record for _, record in iter_records(io.StringIO(array))]
    assert from_lines == values == from_array


def test_a_bad_line_is_reported_with_its_number_and_the_rest_go_on():
    stream = io.StringIO('{"id": "a"}\n\nnot json\n{"id": "b"}\n')
    out = list(iter_records(stream))
    assert [line for line, _ in out] == [1, 3, 4]
    assert isinstance(out[1][1], RecordError) and out[1][1].line == 3
    assert out[2][1] == {"id": "b"}


def test_array_line_numbers_point_at_each_record():
    stream = io.StringIO('[\n  {"id": "a"},\n  {"id": "b"}\n]\n')
    assert [(line, record["id"]) for line, record in iter_records(stream)] == [(2, "a"), (3, "b")]


def test_large_array_is_streamed_across_chunks():
    values = [{"id": str(i), "pad": "x" * 500} for i in range(400)]  # ~200 KB, several read chunks
    out = [record for _, record in iter_records(io.StringIO(json.dumps(values)))]
    assert out == values


def test_truncated_array_is_an_error_not_a_crash():
    out = list(iter_records(io.StringIO('[{"id": "a"}, {"id": ')))
    assert out[0][1] == {"id": "a"} and isinstance(out[-1][1], RecordError)
