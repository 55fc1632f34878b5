"""The experiment folder: one object names every path under ``models/<exp>/``.

Every command, ``run`` and the report get their paths from :class:`ExperimentDir`; no other
module joins folder names of an experiment or guesses an experiment from a folder's shape.

    models/<exp>/
      experiment.json                     resolved config + library versions (written by every step)
      phantoms/, phantom_preview.png      generated data (data.source: phantom)
      prepared/                           manifest.csv, masks.csv, splits.csv, rejected.csv, stats.json,
                                          cache/<size>/{images,masks}/<id>.png
      segmenter/<model>/                  last.pt (resumable), best.pt (weights), config.json, log.csv
      predictions/<set>/                  maps/, hists/, index.csv, histograms.npz, predict.json
      operating_point.json, sweep/<set>/  operating points (chosen on oof or val) and sweep tables
      evaluation/                         the papers' stage-one tables (segment evaluate)
      features/<set>/                     features.npz, index.csv, features.json
      classifier/                         model.ubj, params.json, gate.json, tables
      final/<set>/<gate mode>/            masks/, submission.csv, decisions.csv, summary.json, seg/
      crossfit/fold_<k>/                  cross-fitted rules and classifier for the studies of fold k,
                                          chosen on the other folds' out-of-fold maps and features only
      training_profile.json               what the models were trained on, for the "unlike the
                                          training data" warning on new images (classify.ood)
      report/                             report.md, report.html, metrics.json, summary.json, figures/
      external/<set>/                     an annotated external set: prepared/ (its own folds), counts.csv
                                          (frozen and re-chosen gates per study), external.json (rules),
                                          summary.json (the transfer table); its maps and features are
                                          predictions/<set>[_fold_<k>]/ and features/<set>[_fold_<k>]/

A folder a command writes (prepared/, predictions/<set>, features/<set>, report/) holds its writer's
OS lock in ``<folder>/.lock`` (:mod:`dualstage.core.locks`): an empty file whose presence means nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExperimentDir", "find_experiments", "EXPERIMENT_FILE"]

EXPERIMENT_FILE = "experiment.json"


@dataclass(frozen=True)
class ExperimentDir:
    """Paths of one experiment folder (``models/<exp>``); creating one touches no disk."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def name(self) -> str:
        return self.root.name

    # -- the experiment itself -------------------------------------------------------------
    @property
    def experiment_file(self) -> Path:
        return self.root / EXPERIMENT_FILE

    def read_config(self) -> dict:
        """The resolved config saved by the last step ({} when none was saved)."""
        path = self.experiment_file
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("config", {})
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid experiment record ({exc})") from None

    # -- data --------------------------------------------------------------------------------
    @property
    def phantoms(self) -> Path:
        return self.root / "phantoms"

    @property
    def phantom_preview(self) -> Path:
        return self.root / "phantom_preview.png"

    @property
    def prepared(self) -> Path:
        return self.root / "prepared"

    @property
    def masks_csv(self) -> Path:
        return self.prepared / "masks.csv"

    @property
    def splits_csv(self) -> Path:
        return self.prepared / "splits.csv"

    # -- stage one ---------------------------------------------------------------------------
    @property
    def segmenter(self) -> Path:
        return self.root / "segmenter"

    def model_dir(self, name: str) -> Path:
        """``segmenter/<name>`` for ``main`` or ``fold_K``."""
        return self.segmenter / name

    def trained_models(self) -> dict[str, Path]:
        """{model name: folder} of every model with a ``last.pt`` (sorted by name)."""
        if not self.segmenter.is_dir():
            return {}
        return {p.name: p for p in sorted(self.segmenter.iterdir()) if (p / "last.pt").is_file()}

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def prediction_set(self, name: str) -> Path:
        return self.predictions / name

    @property
    def operating_point(self) -> Path:
        return self.root / "operating_point.json"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    # -- stage two ---------------------------------------------------------------------------
    @property
    def features(self) -> Path:
        return self.root / "features"

    def feature_set(self, name: str) -> Path:
        return self.features / name

    @property
    def classifier(self) -> Path:
        return self.root / "classifier"

    @property
    def gate_file(self) -> Path:
        return self.classifier / "gate.json"

    def final(self, pred_set: str, mode: str) -> Path:
        """``final/<set>/<gate mode>/``: masks, submission.csv, decisions.csv, summary.json."""
        return self.root / "final" / pred_set / mode

    @property
    def crossfit(self) -> Path:
        return self.root / "crossfit"

    def crossfit_fold(self, k: int) -> Path:
        """``crossfit/fold_<k>/``: operating_point.json, sweep tables, classifier/ for fold k's studies."""
        return self.crossfit / f"fold_{int(k)}"

    def crossfit_folds(self) -> list[int]:
        """Folds with cross-fitted rules, ascending."""
        if not self.crossfit.is_dir():
            return []
        return sorted(int(p.name[5:]) for p in self.crossfit.glob("fold_*") if p.name[5:].isdigit())

    @property
    def training_profile(self) -> Path:
        """``training_profile.json``: the training studies' image description and warning threshold."""
        return self.root / "training_profile.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    # -- external validation ---------------------------------------------------------------
    def external(self, name: str) -> Path:
        """``external/<name>/``: an annotated external set evaluated with the frozen gates."""
        return self.root / "external" / name

    def external_prepared(self, name: str) -> Path:
        """``external/<name>/prepared``: that set's manifest, truth, own folds and cache."""
        return self.external(name) / "prepared"

    def external_sets(self) -> list[str]:
        """Names of the external sets with a finished evaluation (``counts.csv``), sorted."""
        root = self.root / "external"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "counts.csv").is_file())

    def require(self, path: Path, step: str) -> Path:
        """``path`` when it exists, else FileNotFoundError naming the step that makes it."""
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `{step}` first")
        return path


def find_experiments(output_root: str | Path) -> dict[str, ExperimentDir]:
    """{experiment name: folder} of every folder under ``output_root`` with a saved config."""
    root = Path(output_root)
    if not root.is_dir():
        return {}
    found = {}
    for child in sorted(root.iterdir()):
        if (child / EXPERIMENT_FILE).is_file():
            found[child.name] = ExperimentDir(child)
    return found
