"""Report maths against hand-computed cases; text layout, JSON and confusion PNG outputs."""

import json

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="reports need scikit-learn (pip install 'kdcore[report]')")

from kdcore.eval import classification_report, multilabel_report  # noqa: E402

# y_true 0 0 0 1 1 2 (and class 3 never occurs), y_pred 0 0 1 1 2 2.
# class 0: TP 2 FP 0 FN 1 -> P 1,   R 2/3, F1 0.8
# class 1: TP 1 FP 1 FN 1 -> P 1/2, R 1/2, F1 1/2
# class 2: TP 1 FP 1 FN 0 -> P 1/2, R 1,   F1 2/3
# class 3: nothing        -> 0, 0, 0, support 0
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]
NAMES = ["zero", "one", "two", "three"]


def test_single_label_report_matches_hand_counts():
    report = classification_report(Y_TRUE, Y_PRED, NAMES)
    assert report.accuracy == pytest.approx(4 / 6)
    expected = {"zero": (1.0, 2 / 3, 0.8, 3), "one": (0.5, 0.5, 0.5, 2),
                "two": (0.5, 1.0, 2 / 3, 1), "three": (0.0, 0.0, 0.0, 0)}
    for name, (p, r, f, s) in expected.items():
        scores = report.per_class[name]
        assert (scores.precision, scores.recall, scores.f1) == pytest.approx((p, r, f))
        assert scores.support == s
    macro = report.averages["macro"]  # over all 4 listed classes, absent one included
    assert (macro.precision, macro.recall, macro.f1) == pytest.approx(
        ((1 + 0.5 + 0.5) / 4, (2 / 3 + 0.5 + 1) / 4, (0.8 + 0.5 + 2 / 3) / 4))
    weighted = report.averages["weighted"]
    assert (weighted.precision, weighted.recall, weighted.f1) == pytest.approx(
        ((3 * 1 + 2 * 0.5 + 0.5) / 6, 4 / 6, (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6))
    micro = report.averages["micro"]
    assert (micro.precision, micro.recall, micro.f1) == pytest.approx((4 / 6,) * 3)
    assert report.macro_f1 == pytest.approx(macro.f1)
    assert report.confusion == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_report_text_json_and_png(tmp_path):
    report = classification_report(np.array(Y_TRUE), np.array(Y_PRED), NAMES)
    lines = report.to_text(digits=2).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["zero", "1.00", "0.67", "0.80", "3"]
    assert [line.split()[0] for line in lines[-4:]] == ["accuracy", "micro", "macro",
                                                        "weighted"]
    assert lines[-4].split() == ["accuracy", "0.67", "6"]
    assert lines[-1].split() == ["weighted", "avg", "0.75", "0.67", "0.68", "6"]

    saved = json.loads(report.save_json(tmp_path / "out" / "report.json").read_text())
    assert saved["accuracy"] == pytest.approx(4 / 6)
    assert saved["per_class"]["two"]["recall"] == 1.0
    assert saved["confusion"][0] == [2, 1, 0, 0]

    png = report.save_confusion_png(tmp_path / "confusion.png", normalize=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] >= 300 and image.shape[1] >= 300


def test_report_input_errors():
    with pytest.raises(ValueError, match="same length"):
        classification_report([0, 1], [0], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        classification_report([0, 2], [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="y_pred"):
        classification_report([0, 1], [0.5, 1.0], ["a", "b"])


def test_multilabel_map_matches_hand_computed_average_precision(tmp_path):
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.2, 0.55], [0.8, 0.15, 0.65], [0.3, 0.4, 0.75],
                       [0.1, 0.35, 0.05]])
    report = multilabel_report(targets, scores, ["a", "b", "c"])
    # a: positives ranked 1st and 3rd -> (1/1 + 2/3) / 2; b: positive ranked 4th -> 1/4.
    assert report.per_class_ap == pytest.approx({"a": 5 / 6, "b": 0.25, "c": None})
    assert report.mAP == pytest.approx((5 / 6 + 0.25) / 2)
    # Pooled: positives at ranks 1, 8, 10 of 12 -> (1 + 2/8 + 3/10) / 3.
    assert report.micro_ap == pytest.approx((1 + 2 / 8 + 3 / 10) / 3)
    assert "mAP" in report.to_text() and "n/a" in report.to_text()
    assert json.loads(report.save_json(tmp_path / "ml.json").read_text())["mAP"] == \
        pytest.approx(report.mAP)
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_report(targets * 2, scores)
