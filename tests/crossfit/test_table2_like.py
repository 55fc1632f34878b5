"""Issue 17, item 5 (like with like): every cell of the cross-fitted Table 2 shares one XGBoost
configuration (the gate classifier's); a column varies only the feature set, a row only defaults vs
tuned hyper-parameters; the table's footer says which configuration they share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xgboost

from dualstage.config import Experiment, TuneConfig
from dualstage.crossfit.classifier import crossfit_classifier
from dualstage.crossfit.rules import crossfit_sweep
from dualstage.report.tables import paper_tables
from helpers.crossfit import REPORT, N, write_oof

SHARED = ("max_bin", "tree_method", "device", "random_state", "eval_metric", "n_jobs")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A cross-fitted experiment whose classifiers were fitted with every XGBoost fit recorded."""
    exp = Experiment(
        name="t2",
        output_root=str(tmp_path_factory.mktemp("t2")),
        tune=TuneConfig(n_iter=2, threads=1, max_bin=32),
        report=REPORT,
    )
    labels = (np.random.default_rng(7).random(N) < 0.35).astype(int)
    write_oof(exp.folder, labels, labels)
    crossfit_sweep(exp)
    seen: list[dict] = []
    fit, matrix = xgboost.XGBClassifier.fit, xgboost.QuantileDMatrix

    def spy_fit(self, *args, **kwargs):
        seen.append({k: self.get_params()[k] for k in SHARED})
        return fit(self, *args, **kwargs)

    def spy_matrix(*args, **kwargs):  # the halving search trains boosters on these directly
        seen.append({"max_bin": kwargs.get("max_bin")})
        return matrix(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(xgboost.XGBClassifier, "fit", spy_fit)
        mp.setattr(xgboost, "QuantileDMatrix", spy_matrix)
        crossfit_classifier(exp)
    return exp, seen


def test_every_fit_shares_the_gate_classifiers_configuration(fitted):
    exp, seen = fitted
    assert len(seen) > 4 * 3  # 4 models x 3 folds at least
    assert {s["max_bin"] for s in seen} == {32}  # the tune section's max_bin, also for the defaults
    full = {tuple(s[k] for k in SHARED) for s in seen if len(s) > 1}
    assert len(full) == 1, full  # one tree method, device, seed, metric and thread count for every cell
    params = json.loads((exp.dir.crossfit_fold(0) / "classifier" / "params.json").read_text())
    assert params["base"]["max_bin"] == 32


def test_table2_records_and_states_the_shared_configuration(fitted):
    exp, _ = fitted
    record = json.loads((exp.dir.crossfit / "table2.json").read_text())
    assert record["xgboost"]["max_bin"] == 32 and record["xgboost"]["tree_method"] == "hist"
    tables, _ = paper_tables(exp.folder, exp.folder / "report", None)
    table2 = next(t for t in tables if t.key == "dual_table2")
    assert table2.frame is not None and "max_bin 32" in table2.footer
    assert "one XGBoost configuration" in table2.footer
