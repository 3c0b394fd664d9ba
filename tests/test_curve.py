import json

import numpy as np
import pytest

from tunelens.tune.curve import examples_for, fit_law, learning_curve, summarize


def test_power_law_fit_recovers_known_curve():
    n = np.array([20, 50, 100, 200, 400], float)
    s = 0.9 - 2.0 * n ** -0.5
    predict, p = fit_law(n, s)
    assert p["law"] == "power"
    assert (p["a"], p["b"], p["c"]) == pytest.approx((0.9, 2.0, 0.5), rel=1e-3)
    assert float(predict(800)) == pytest.approx(0.9 - 2.0 * 800 ** -0.5, abs=1e-4)
    need = examples_for(0.85, p)
    assert need == pytest.approx((2.0 / 0.05) ** 2, rel=1e-3)
    assert examples_for(0.95, p) is None  # above the saturation level


def test_summary_reports_holdout_error_and_predictions():
    sizes = [10, 25, 50, 100]
    scores = [0.9 - 2.0 * x ** -0.5 for x in sizes]
    s = summarize(sizes, scores, target=0.8)
    assert s["holdout"]["abs_error"] < 1e-3
    assert s["predicted"]["2x"] > scores[-1] and s["predicted"]["4x"] > s["predicted"]["2x"]
    assert s["target"]["examples_needed"] == pytest.approx(400, rel=1e-2)
    json.dumps(s)  # plain JSON types only


def test_learning_curve_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    from tunelens.tune import load_config

    rows = [{"text": f"message number {i} about {'cats' if i % 2 else 'dogs'}", "label": "cat" if i % 2 else "dog"}
            for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "t.yaml").write_text("name: t\ntype: classification\ndata: d.jsonl\n"
                                     "split_ratios: {train: 0.75, validation: 0.25}\ntemplate: 'Animal? {text}'\n")
    cfg = load_config(model=str(tiny_model_dir), data=[str(tmp_path / "t.yaml")], out=str(tmp_path / "curve"),
                      batch_size=4, max_steps=2, save_steps=100, progress=False)
    s = learning_curve(cfg, [0.25, 0.5, 1.0])
    assert [p["examples"] for p in s["points"]] == [8, 15, 30]
    assert "holdout" in s and "2x" in s["predicted"]
    saved = json.loads((tmp_path / "curve" / "curve.json").read_text())
    assert saved["points"] == s["points"]
    assert all((tmp_path / "curve" / f"frac-{f:g}" / "model" / "adapter_config.json").exists() for f in (0.25, 0.5, 1.0))
