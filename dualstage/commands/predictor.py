"""The front door: a predictor set up once from an experiment folder, then asked about many images.

    predictor = Predictor.from_experiment("models/demo")
    for result in predictor.predict([image, ...]):  # uint8 (H, W) radiographs of any size
        result.mask, result.decision, result.reason, result.warning

Set up once: each deployable pipeline's segmenter, operating point (pixel rule of the gate mode),
classifier and gate threshold, the DenseNet of the classifier's features, and the experiment's
training profile (:mod:`dualstage.classify.ood`). A cross-fitted experiment deploys every fold
pipeline k (fold model k, its rules and its classifier, all chosen on single-model out-of-fold
maps); the final mask keeps the pixels more than half of the K pipelines keep, as
:mod:`dualstage.crossfit.deploy` does. An experiment whose main model has a fitted gate deploys
that one pipeline. Each pipeline's map is the one ``segment predict`` writes (on the image's own
grid) and its feature row the one ``classify features`` computes from that map, so the step
commands and the predictor agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualstage.artifacts.layout import ExperimentDir
from dualstage.classify.densenet import embed, load_densenet
from dualstage.classify.features import map_statistics
from dualstage.classify.gate import GATE_MODES, _gate_context, load_gate
from dualstage.classify.ood import TrainingProfile, training_profile
from dualstage.classify.tune import load_classifier, read_params
from dualstage.core import gating
from dualstage.crossfit.rules import read_fold_rules
from dualstage.runtime.distributed import pick_device
from dualstage.runtime.precision import inference_dtype
from dualstage.segment.inference import LoadedModel, autocast_context, load_models, probabilities
from dualstage.segment.predict import maps_on_grids

__all__ = ["Predictor", "Prediction", "Vote", "Pipeline", "resize"]


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W) -> uint8 (size, size): bilinear, as ``segment predict`` and the prepared cache."""
    if image.shape == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))


@dataclass
class Pipeline:
    """One deployable pipeline: segmenter(s), pixel rule, classifier, gate threshold, feature settings."""

    name: str
    models: list[LoadedModel]
    rule: dict
    classifier: object
    threshold: float
    features: dict

    @property
    def resolution(self) -> int:
        return self.models[0].resolution

    @property
    def feature_key(self) -> tuple[str, int]:
        return str(self.features.get("weights", "imagenet")), int(self.features.get("image_size", 224))


@dataclass(frozen=True)
class Vote:
    """One pipeline's say on one image: its classifier probability and threshold, its own mask's area."""

    pipeline: str
    probability: float
    threshold: float
    mask_area_px: int

    @property
    def present(self) -> bool:
        """The classifier says present (probability >= threshold)."""
        return self.probability >= self.threshold

    @property
    def vote(self) -> int:
        """1 when this pipeline's mask has pixels (classifier present and the pixel rule kept some)."""
        return int(self.mask_area_px > 0)

    def text(self) -> str:
        op = ">=" if self.present else "<"
        head = f"{self.pipeline}: p {self.probability:.2f} {op} {self.threshold:.2f}"
        if not self.present:
            return f"{head}, absent (vote 0)"
        if not self.mask_area_px:
            return f"{head}, but the pixel rule kept no pixel (vote 0)"
        return f"{head}, mask {self.mask_area_px:,} px (vote 1)"


@dataclass
class Prediction:
    """The result for one image: maps and masks (H, W) on its own grid, the votes, the warning."""

    probability_map: np.ndarray  # (H, W) uint8, q = round(p * 255), mean of the pipelines' maps
    mask: np.ndarray  # (H, W) bool, the final mask
    votes: list[Vote]
    distance: float | None = None  # to the training profile (None: not checked)
    distance_threshold: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def decision(self) -> int:
        return int(self.mask.any())

    @property
    def probability(self) -> float:
        """Mean classifier probability over the pipelines (what the review page sorts by)."""
        return float(np.mean([v.probability for v in self.votes]))

    @property
    def unlike_training(self) -> bool:
        return self.distance is not None and self.distance > float(self.distance_threshold)

    @property
    def warning(self) -> str:
        if self.distance is None:
            return ""
        if not self.unlike_training:
            return ""
        return (
            f"unlike the training data: distance {self.distance:.1f} > {self.distance_threshold:.1f} "
            "(the training studies' 99th percentile, out of fold); read this result with care"
        )

    def reason(self) -> str:
        """Why the decision: each pipeline's probability, threshold and vote, then the final rule."""
        k, n = sum(v.vote for v in self.votes), len(self.votes)
        need = n // 2 + 1
        area = int(self.mask.sum())
        if n == 1:
            final = f"final: {'present' if area else 'absent'}, {area:,} px"
        elif area:
            final = f"final: present, {area:,} px kept by at least {need} of {n} pipelines ({k} voted 1)"
        elif k >= need:
            final = f"final: absent: {k} of {n} voted 1 but no pixel was kept by {need} of them (no overlap)"
        else:
            final = f"final: absent: {k} of {n} voted 1, a mask needs {need}"
        return "; ".join([v.text() for v in self.votes] + [final])


def _mode_of(config: dict, mode: str | None) -> str:
    modes = list((config.get("gate") or {}).get("modes") or ["classifier"])
    mode = mode or modes[0]
    if mode not in GATE_MODES:
        raise ValueError(f"--mode {mode!r}: expected one of {', '.join(GATE_MODES)}")
    return mode


def _crossfit_pipelines(exp: ExperimentDir, mode: str, load) -> list[Pipeline]:
    """Every fold pipeline k: fold model k, its operating point, classifier and gate threshold."""
    rules = read_fold_rules(exp)
    out = []
    for k, points in rules.items():
        cdir = exp.crossfit_fold(k) / "classifier"
        gate = load_gate(cdir / "gate.json")
        if mode not in gate:
            fitted = [m for m in GATE_MODES if m in gate]
            raise ValueError(f"{cdir / 'gate.json'}: mode {mode!r} not fitted (fitted: {fitted})")
        rule = points.rule(GATE_MODES[mode])
        features = read_params(cdir).get("features") or {}
        out.append(
            Pipeline(
                f"fold_{k}", load(f"fold_{k}"), rule, load_classifier(cdir), gate[mode]["threshold"], features
            )
        )
    return out


def _main_pipeline(exp: ExperimentDir, mode: str, load) -> list[Pipeline]:
    """The main model's pipeline: rules and classifier chosen on val."""
    threshold, rule, _ = _gate_context(exp, exp.classifier, exp.gate_file, mode)
    features = read_params(exp.classifier).get("features") or {}
    return [Pipeline("main", load("main"), rule, load_classifier(exp.classifier), threshold, features)]


def _uses_main(exp: ExperimentDir, mode: str) -> bool:
    """The main pipeline is deployed when the main model and its gate (this mode) exist."""
    return "main" in exp.trained_models() and mode in load_gate(exp.gate_file)


class Predictor:
    """Set up once from an experiment folder; :meth:`predict` many images in memory."""

    def __init__(
        self,
        pipelines: list[Pipeline],
        nets: dict[tuple[str, int], torch.nn.Module],
        profile: TrainingProfile | None,
        settings: dict,
    ):
        self.pipelines, self.nets, self.profile, self.settings = pipelines, nets, profile, settings
        self.device = torch.device(settings["device"])
        self.amp = autocast_context(settings["dtype"], self.device)
        self.feature_dtype = settings["feature_dtype"]

    @classmethod
    def from_experiment(
        cls,
        exp_dir: str | Path,
        mode: str | None = None,
        device: str = "auto",
        checkpoint: str | None = None,
        precision: str | None = None,
        tta: bool | None = None,
        warn: bool = True,
    ) -> Predictor:
        """Load every deployable pipeline of ``models/<exp>``; settings default to the experiment's own.

        ``warn``: build or read the training profile for the "unlike the training data" warning."""
        exp = ExperimentDir(exp_dir)
        if not exp.root.is_dir():
            raise FileNotFoundError(f"--exp {exp.root}: no such experiment folder")
        config = exp.read_config()
        pred = config.get("predict") or {}
        mode = _mode_of(config, mode)
        checkpoint = checkpoint or pred.get("checkpoint") or (config.get("train") or {}).get("checkpoint")
        dev = pick_device(device)
        trained = exp.trained_models()

        def load(name: str) -> list[LoadedModel]:
            if name not in trained:
                raise FileNotFoundError(f"{exp.model_dir(name)}: no trained model (no last.pt)")
            return load_models({name: trained[name]}, checkpoint or "best", dev)[name]

        if _uses_main(exp, mode):
            pipelines = _main_pipeline(exp, mode, load)
        elif exp.crossfit_folds():
            pipelines = _crossfit_pipelines(exp, mode, load)
        else:
            raise FileNotFoundError(
                f"{exp.root}: nothing to deploy: no cross-fitted fold pipelines (crossfit/) and no main "
                f"model with a fitted {mode!r} gate; run the experiment first"
            )
        profile = training_profile(exp.root) if warn else None
        keys = {p.feature_key for p in pipelines}
        if profile is not None:
            keys.add((str(profile.settings.get("weights")), profile.image_size))
        nets = {key: load_densenet(key[0])[0].to(dev).to(memory_format=torch.channels_last) for key in keys}
        feature_precision = (config.get("features") or {}).get("precision") or "auto"
        settings = {
            "experiment": str(exp.root.resolve()),
            "mode": mode,
            "checkpoint": checkpoint or "best",
            "tta": bool(pred.get("tta", False)) if tta is None else bool(tta),
            "device": str(dev),
            "dtype": inference_dtype(precision or pred.get("precision") or "auto", dev),
            "feature_dtype": inference_dtype(feature_precision, dev),
            "batch_size": int(pred.get("batch_size") or 8),
        }
        return cls(pipelines, nets, profile, settings)

    def describe(self) -> dict:
        """What was set up: the mode, each pipeline's models, rule and threshold, the warning's threshold."""
        return {
            "experiment": self.settings["experiment"],
            "mode": self.settings["mode"],
            "checkpoint": self.settings["checkpoint"],
            "tta": self.settings["tta"],
            "pipelines": [
                {
                    "name": p.name,
                    "models": [m.name for m in p.models],
                    "rule": p.rule,
                    "threshold": p.threshold,
                }
                for p in self.pipelines
            ],
            "warning_threshold": None if self.profile is None else self.profile.threshold,
        }

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """One :class:`Prediction` per uint8 (H, W) image, in batches of the experiment's batch size."""
        n = self.settings["batch_size"]
        out: list[Prediction] = []
        for start in range(0, len(images), n):
            out += self.finish(self.forward(images[start : start + n]))
        return out

    def _tensor(self, small: list[np.ndarray]) -> torch.Tensor:
        """N uint8 (S, S) -> (N, 1, S, S) float in [0, 1] on the device."""
        return torch.from_numpy(np.stack(small).astype(np.float32) / 255.0)[:, None].to(self.device)

    @torch.no_grad()
    def forward(self, images: Sequence[np.ndarray]) -> dict:
        """The models' share of one batch: every pipeline's map on each image's grid and the DenseNet
        features; :meth:`finish` turns it into predictions (numpy only: it may run in another thread
        while the models work on the next batch)."""
        images = [_check_image(a) for a in images]
        sizes = [a.shape for a in images]
        small: dict[int, list[np.ndarray]] = {}

        def at(size: int) -> list[np.ndarray]:
            if size not in small:
                small[size] = [resize(a, size) for a in images]
            return small[size]

        maps = {}
        for p in self.pipelines:
            probs = probabilities(p.models, self._tensor(at(p.resolution)), self.settings["tta"], self.amp)
            maps[p.name] = maps_on_grids(probs, sizes)
        phi_image, phi_maps = self._embed(at, maps)
        if self.profile is not None:
            at(self.profile.image_size)
        return {"sizes": sizes, "small": small, "maps": maps, "phi_image": phi_image, "phi_maps": phi_maps}

    def finish(self, state: dict) -> list[Prediction]:
        """Predictions of a :meth:`forward` state: map statistics, classifiers, votes, final masks,
        the mean map and the distance to the training data."""
        sizes, maps = state["sizes"], state["maps"]
        votes, masks = self._votes(maps, state["phi_image"], state["phi_maps"])
        distances = self._distances(state["small"], state["phi_image"])
        k = len(self.pipelines)
        results = []
        for i, size in enumerate(sizes):
            total = np.zeros(size, np.uint16)
            for p in self.pipelines:
                total += maps[p.name][i]
            mean = ((total + k // 2) // k).astype(np.uint8)
            count = np.zeros(size, np.uint8)
            for own in masks:
                if own[i] is not None:
                    count += own[i]
            results.append(Prediction(mean, count * 2 > k, [v[i] for v in votes], *distances[i]))
        return results

    def _embed(self, at, maps: dict) -> tuple[dict, dict]:
        """phi of the images {feature setting: (N, 1024)} and of each pipeline's maps {name: (N, 1024)}."""
        phi_image, phi_maps = {}, {}
        for key, net in self.nets.items():
            names = [p.name for p in self.pipelines if p.feature_key == key]
            parts = [self._tensor(at(key[1]))] + [
                self._tensor([resize(q, key[1]) for q in maps[n]]) for n in names
            ]
            phi = embed(net, torch.cat(parts), self.feature_dtype).cpu().numpy()
            chunks = np.split(phi, len(parts))
            phi_image[key] = chunks[0]
            phi_maps.update(zip(names, chunks[1:], strict=True))
        return phi_image, phi_maps

    def _votes(self, maps: dict, phi_image: dict, phi_maps: dict) -> tuple[list[list[Vote]], list[list]]:
        """Per pipeline: the classifier's votes (N) and its masks (N, each (H, W) bool, None when absent)."""
        votes, masks = [], []
        for p in self.pipelines:
            stats = np.array([list(map_statistics(q).values()) for q in maps[p.name]])
            rows = np.concatenate([phi_image[p.feature_key], phi_maps[p.name], stats], axis=1).astype(
                np.float32
            )
            prob = p.classifier.predict_proba(rows)[:, 1].astype(np.float64)
            own = [
                gating.apply_rule(q, p.rule) if pr >= p.threshold else None
                for q, pr in zip(maps[p.name], prob, strict=True)
            ]
            masks.append(own)
            votes.append(
                [
                    Vote(p.name, float(pr), float(p.threshold), int(0 if m is None else np.count_nonzero(m)))
                    for pr, m in zip(prob, own, strict=True)
                ]
            )
        return votes, masks

    def _distances(self, small: dict, phi_image: dict) -> list[tuple[float | None, float | None]]:
        """(distance, threshold) per image; (None, None) without a training profile."""
        if self.profile is None:
            return [(None, None)] * len(next(iter(phi_image.values())))
        key = (str(self.profile.settings.get("weights")), self.profile.image_size)
        d = self.profile.distance(phi_image[key], np.stack(small[self.profile.image_size]))
        return [(float(x), self.profile.threshold) for x in d]


def _check_image(image: np.ndarray) -> np.ndarray:
    """A radiograph as uint8 (H, W); ValueError for anything else."""
    a = np.asarray(image)
    if a.ndim != 2 or a.dtype != np.uint8 or min(a.shape) < 2:
        raise ValueError(f"an image must be a uint8 (H, W) array, got {a.dtype} of shape {a.shape}")
    return a
