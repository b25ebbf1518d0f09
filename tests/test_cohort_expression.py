"""The one reader of expression files for prediction (app and ``msrl analyze``): every layout either
accepted before, slide matching, and one-line errors that say what to do."""

from __future__ import annotations

import pytest

from msrl_model.cohort import ExpressionTable, read_expression
from msrl_model.errors import MSRLError


@pytest.mark.parametrize("text", [
    "gene,value\nTP53,1.25\nEGFR,-0.5\n",  # long, with a header (the app's layout)
    "TP53,1.25\nEGFR,-0.5\n",  # long, no header
    "TP53,EGFR,KRAS\n1.25,-0.5,NA\n",  # one-row table; NA is missing
    "case_id,TP53,EGFR\nX,1.25,-0.5\n",  # case table with one case (the CLI's layout)
    "sample,TP53,EGFR\nS1,1.25,-0.5\n",  # an ignored id column
])
def test_every_layout_gives_gene_values(tmp_path, text):
    path = tmp_path / "e.csv"
    path.write_text(text, encoding="utf-8")
    assert read_expression(path) == {"TP53": 1.25, "EGFR": -0.5}


def test_case_table_matches_slides_by_slide_id_then_longest_case_id(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("case_id,slide_id,A\nTCGA-01,TCGA-01-DX9,1\nTCGA-01-X,,2\nTCGA-02,,3\n")
    table = ExpressionTable(path)
    assert len(table) == 3 and table.genes == ["A"]
    assert table.for_slide("TCGA-01-DX9", single=False) == {"A": 1.0}
    assert table.for_slide("TCGA-01-X-DX1", single=False) == {"A": 2.0}
    assert table.for_slide("TCGA-02-DX1", single=True) == {"A": 3.0}
    assert table.for_slide("OTHER", single=True) is None
    with pytest.raises(MSRLError, match="holds 3 cases"):
        read_expression(path)


def test_a_single_row_without_ids_applies_to_a_single_slide(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("A,B,C\n1,2,3\n")
    table = ExpressionTable(path)
    assert table.for_slide("any", single=True) == {"A": 1.0, "B": 2.0, "C": 3.0}
    assert table.for_slide("any", single=False) is None


@pytest.mark.parametrize("text, message", [
    ("a,b,c\n1,2,3\n4,5,6\n", "one-row table"),
    ("A;B;C\n1,5;2,5;3\n", "one-row table"),
    ("", "no gene columns or no rows"),
    ("case_id,A,B\n", "no gene columns or no rows"),
    ("gene,value\nTP53,abc\n", "no numeric expression values"),
    ("case_id,A\nX,1,2\n", "row 2 has 3 cells"),
])
def test_bad_files_give_one_line_errors(tmp_path, text, message):
    path = tmp_path / "e.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MSRLError, match=message) as info:
        ExpressionTable(path)
    assert "\n" not in str(info.value) and ";" in str(info.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(MSRLError, match="not found; check the path"):
        read_expression(tmp_path / "missing.csv")
    (tmp_path / "latin1.csv").write_bytes(b"case_id,A\n\xe9,1\n")
    with pytest.raises(MSRLError, match="choose a CSV text file"):
        read_expression(tmp_path / "latin1.csv")
