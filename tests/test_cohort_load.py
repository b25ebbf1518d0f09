"""Cohort directories: round trip of a synthetic cohort, validation that reports every problem at
once, GMT reading/writing, gene-group restriction and config inference."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from msrl_model.cohort import CohortValidationError, CohortWarning, GeneSet, load_cohort, read_gmt, write_gmt
from msrl_model.errors import CohortError
from msrl_model.synth.cohort import make_synth_cohort


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "syn60"
    make_synth_cohort(root, n_cases=60, n_projects=3, seed=3, feature_dim=32, patches=(16, 40))
    return root


def _write(root: Path, clinical: str, expression: str, gmt: str, feature_slides: list[str],
           config: dict | None = None) -> Path:
    """A hand-made cohort directory; clinical/expression given as CSV text."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "clinical.csv").write_text(clinical)
    (root / "expression.csv").write_text(expression)
    (root / "sets.gmt").write_text(gmt)
    (root / "features").mkdir(exist_ok=True)
    for s in feature_slides:
        with h5py.File(root / "features" / f"{s}.h5", "w") as f:
            f["features"] = np.zeros((3, 4), np.float32)
            f["coords"] = np.zeros((3, 2), np.int64)
    if config is not None:
        (root / "cohort.json").write_text(json.dumps(config))
    return root


EXPRESSION = "case_id,A,B,C\n" + "".join(f"C{i},{i},{i + 1},{2 * i}\n" for i in range(1, 7))
GMT = "SET1\tdesc\tA\tB\nSET2\tdesc\tC\n"


def test_synthetic_cohort_round_trip(synth_dir):
    cohort = load_cohort(synth_dir)
    clinical = pd.read_csv(synth_dir / "clinical.csv", dtype={"TP53_mut": str})
    latents = pd.read_csv(synth_dir / "synthetic_latents.csv")
    assert cohort.n_cases == 60 == clinical["case_id"].nunique()
    assert cohort.case_ids == latents["case_id"].tolist()
    # every slide of clinical.csv is there, grouped by case, with its feature file
    assert sum(len(v) for v in cohort.slides.values()) == len(clinical)
    for case, slides in cohort.slides.items():
        assert set(slides) == set(clinical.loc[clinical["case_id"] == case, "slide_id"])
        assert all(cohort.feature_paths[s].name == f"{s}.h5" for s in slides)
    first = clinical.drop_duplicates("case_id").reset_index(drop=True)
    np.testing.assert_allclose(cohort.times, first["survival_months"])
    np.testing.assert_array_equal(cohort.censorship, first["censorship"])
    np.testing.assert_array_equal(cohort.events, 1 - first["censorship"])
    # raw counts -> log1p, restricted to the genes of the gene groups
    raw = pd.read_csv(synth_dir / "expression.csv").set_index("case_id")
    assert cohort.expression.dtype == np.float32
    assert cohort.expression.shape == (60, len(cohort.genes))
    np.testing.assert_allclose(cohort.expression, np.log1p(raw.loc[cohort.case_ids, cohort.genes]),
                               rtol=1e-6)
    gmt = read_gmt(synth_dir / "hallmark_synthetic.gmt")
    assert cohort.group_names == [s.name for s in gmt] and len(gmt) == 50
    for idx, s in zip(cohort.gene_groups, gmt):
        assert [cohort.genes[i] for i in idx] == list(s.genes)
    assert cohort.labels == {"stage": ["I", "II", "III", "IV"], "TP53_mut": ["0", "1"],
                             "HER2_status": ["negative", "positive"]}
    her2 = cohort.label_codes("HER2_status")
    brca = (cohort.cases["project"] == "SYN-BRCA").to_numpy()
    assert np.all(her2[~brca] == -1) and np.all(her2[brca] >= 0)
    np.testing.assert_array_equal(cohort.label_codes("TP53_mut"), first["TP53_mut"].astype(int))
    assert cohort.projects == ["SYN-BRCA", "SYN-COAD", "SYN-LUAD"]
    assert cohort.config.synthetic and cohort.warnings == []
    assert "SYNTHETIC" in (synth_dir / "README.md").read_text()


def test_broken_clinical_reports_every_problem_at_once(tmp_path):
    clinical = ("case_id,slide_id,survival_months,censorship\n"   # row 1; 'project' missing
                "C1,S1,10,0\n"                                   # row 2
                "C2,S2,12,1\n"                                   # row 3
                "C3,S3,5,0\n"                                    # row 4
                "C4,S4,abc,0\n"                                  # row 5: non-numeric survival
                "C5,S5,7,2\n"                                    # row 6: censorship 2
                "C1,S1,10,0\n"                                   # row 7: duplicate of row 2
                "C6,S6,3,0\n")                                   # row 8: no feature file
    root = _write(tmp_path / "broken", clinical, EXPRESSION, GMT, ["S1", "S2", "S3", "S4", "S5"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing but the one CohortError may escape
        with pytest.raises(CohortError) as info:
            load_cohort(root)
    err = info.value
    assert isinstance(err, CohortValidationError)
    text = str(err)
    lines = text.splitlines()
    assert lines[0].startswith(f"cohort {root} has 5 problems")
    assert len(err.problems) == 5 and len(lines) == 6
    expected = [("missing required column", "project"), ("row 5", "survival_months 'abc'"),
                ("row 6", "censorship '2'"), ("row 7", "duplicate of row 2"),
                ("row 8", "S6")]
    for needle, detail in expected:
        assert any(needle in p and detail in p for p in err.problems), (needle, text)


def test_expression_and_consistency_problems_are_listed(tmp_path):
    clinical = ("case_id,slide_id,project,survival_months,censorship\n"
                "C1,S1,P,10,0\n"
                "C1,S1b,P,11,0\n"        # row 3: conflicting survival for C1
                "C2,S2,P,-4,1\n"         # row 4: negative survival
                "C7,S7,P,3,1\n")         # row 5: no expression row
    expression = "case_id,A,B,C\nC1,1,2,3\nC2,1,x,3\n"  # row 3: non-numeric
    root = _write(tmp_path / "broken2", clinical, expression, GMT, ["S1", "S1b", "S2", "S7"])
    with pytest.raises(CohortValidationError) as info:
        load_cohort(root)
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert any("row 2" in p and "C1" in p and "survival_months" in p and "3" in p for p in problems)
    assert any("row 4" in p and "negative" in p for p in problems)
    assert any("row 5" in p and "C7" in p and "expression.csv" in p for p in problems)
    assert any(p.startswith("expression.csv row 3") and "'x'" in p and "gene B" in p for p in problems)


def test_many_rows_with_one_problem_collapse_to_one_line(tmp_path):
    rows = "".join(f"C{i},S{i},P,{'' if i > 3 else 5},0\n" for i in range(1, 30))
    expression = "case_id,A\n" + "".join(f"C{i},1\n" for i in range(1, 30))
    root = _write(tmp_path / "many", "case_id,slide_id,project,survival_months,censorship\n" + rows,
                  expression, "SET1\td\tA\n", [f"S{i}" for i in range(1, 30)])
    with pytest.raises(CohortValidationError) as info:
        load_cohort(root)
    (line,) = info.value.problems
    assert "rows 5, 6, 7" in line and "(26 rows)" in line and "and 16 more" in line


def test_valid_small_cohort_infers_labels_and_scale(tmp_path):
    clinical = ("case_id,slide_id,project,survival_months,censorship,stage,EGFR_mut,age\n"
                "C1,S1,P1,10,0,Stage IIA,1,60\n"
                "C1,S1b,P1,10,0,Stage IIA,1.0,60\n"
                "C2,S2,P1,12.5,1,stage iv,0,55\n"
                "C3,S3,P2,5,0,[Not Available],,70\n")
    expression = "case_id,A,B,C\nC1,0.5,1.2,3\nC2,1,2,3\nC3,2,2.5,0.1\nC9,1,1,1\n"
    root = _write(tmp_path / "ok", clinical, expression, GMT, ["S1", "S1b", "S2", "S3"])
    cohort = load_cohort(root)
    assert cohort.case_ids == ["C1", "C2", "C3"]
    assert cohort.slides["C1"] == ["S1", "S1b"]
    assert cohort.labels == {"stage": ["II", "IV"], "EGFR_mut": ["0", "1"]}
    np.testing.assert_array_equal(cohort.label_codes("stage"), [0, 1, -1])
    np.testing.assert_array_equal(cohort.label_codes("EGFR_mut"), [1, 0, -1])
    # small non-integer values: inferred as already log-normalised, kept as they are
    np.testing.assert_allclose(cohort.expression[:, cohort.genes.index("A")], [0.5, 1, 2])
    assert any("inferred as 'log'" in n for n in cohort.notes)
    assert any("age" in n and "not used as labels" in n for n in cohort.notes)
    assert any("1 case(s) not in clinical.csv" in n for n in cohort.notes)


def test_declared_classes_reject_unknown_values(tmp_path):
    clinical = ("case_id,slide_id,project,survival_months,censorship,HER2_status,stage\n"
                "C1,S1,P,10,0,positive,Stage IIB\nC2,S2,P,10,0,equivocal,III\n")
    root = _write(tmp_path / "decl", clinical, EXPRESSION, GMT, ["S1", "S2"],
                  config={"labels": {"HER2_status": ["negative", "positive"],
                                     "stage": ["I", "II", "III", "IV"]},
                          "expression_scale": "raw"})
    with pytest.raises(CohortValidationError) as info:
        load_cohort(root)
    (problem,) = info.value.problems
    assert "row 3" in problem and "'equivocal'" in problem
    (root / "clinical.csv").write_text(clinical.replace("equivocal", "negative"))
    cohort = load_cohort(root)
    assert cohort.labels["stage"] == ["I", "II", "III", "IV"]  # declared order, absent classes kept
    np.testing.assert_array_equal(cohort.label_codes("stage"), [1, 2])
    np.testing.assert_array_equal(cohort.label_codes("HER2_status"), [1, 0])


def test_unknown_genes_are_dropped_with_a_warning(tmp_path):
    clinical = "case_id,slide_id,project,survival_months,censorship\nC1,S1,P,10,0\nC2,S2,P,3,1\n"
    gmt = "SET1\td\tA\tZZZ1\tB\nSET2\td\tQQQ\tRRR\nSET3\td\tC\n"
    root = _write(tmp_path / "genes", clinical, EXPRESSION, gmt, ["S1", "S2"])
    with pytest.warns(CohortWarning) as record:
        cohort = load_cohort(root)
    messages = [str(w.message) for w in record]
    assert any("SET1 (1 of 3)" in m for m in messages)
    assert any("SET2" in m and "dropped" in m for m in messages)
    assert cohort.group_names == ["SET1", "SET3"]
    assert [[cohort.genes[i] for i in g] for g in cohort.gene_groups] == [["A", "B"], ["C"]]
    assert cohort.warnings == messages


def test_no_gene_in_common_is_an_error(tmp_path):
    clinical = "case_id,slide_id,project,survival_months,censorship\nC1,S1,P,10,0\n"
    root = _write(tmp_path / "nogenes", clinical, EXPRESSION, "SET1\td\tX\tY\n", ["S1"])
    with pytest.warns(CohortWarning), pytest.raises(CohortValidationError, match="same gene symbols"):
        load_cohort(root)


def test_missing_files_are_reported_together(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(CohortValidationError) as info:
        load_cohort(root)
    problems = info.value.problems
    assert any("clinical.csv is missing" in p for p in problems)
    assert any("expression.csv is missing" in p for p in problems)
    assert any("no .gmt" in p for p in problems)
    with pytest.raises(CohortError, match="does not exist"):
        load_cohort(tmp_path / "nowhere")


def test_gmt_round_trip_and_malformed_lines(tmp_path):
    sets = [GeneSet("HALLMARK_A", "http://example/a", ("TP53", "MDM2", "CDKN1A")),
            GeneSet("HALLMARK_B", "", ("EGFR",))]
    path = write_gmt(tmp_path / "x.gmt", sets)
    assert read_gmt(path) == sets
    assert read_gmt(write_gmt(tmp_path / "y.gmt", {"S": ["G1", "G2"]}, description="d")) == \
        [GeneSet("S", "d", ("G1", "G2"))]
    (tmp_path / "bad.gmt").write_text("OK\td\tG1\tG1\nNOGENES\td\nOK\td\tG2\n")
    with pytest.raises(CohortError) as info:
        read_gmt(tmp_path / "bad.gmt")
    assert "line 2" in str(info.value) and "line 3" in str(info.value)
    assert read_gmt(write_gmt(tmp_path / "dup.gmt", {"S": ["G1", "G1", "G2"]}))[0].genes == ("G1", "G2")
