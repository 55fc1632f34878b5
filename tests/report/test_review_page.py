"""The review page's structure, parsed as HTML: one card per study carrying what the controls sort
and filter on, the controls, the viewer, nothing fetched from the network; and the overlay."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.report.overlay import panel_rows, render_overlay, thumbnail
from dualstage.report.review import rule_text, write_review_page


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))

    def all(self, tag: str, cls: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


def _decisions(n: int = 4) -> pd.DataFrame:
    ids = [f"study<{k}>" for k in range(n)]  # markup in an id must come out escaped
    return pd.DataFrame(
        {
            "image_id": ids,
            "decision": [1, 0, 1, 0][:n],
            "probability": [0.9, 0.1, 0.6, 0.3][:n],
            "mask_area_px": [1200, 0, 40, 0][:n],
            "distance": [3.0, 40.0, 5.0, 2.0][:n],
            "unlike_training": [0, 1, 0, 0][:n],
            "warning": ["", "unlike the training data: distance 40.0 > 9.0", "", ""][:n],
            "reason": ["fold_0: p 0.90 >= 0.50, mask 1,200 px (vote 1); final: present"] * n,
            "overlay": [f"overlays/{i}.png" for i in ids],
            "thumbnail": [f"thumbs/{i}.jpg" for i in ids],
        }
    )


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_page_structure(tmp_path) -> None:
    decisions = _decisions()
    rejected = pd.DataFrame({"item": ["/x/broken.dcm"], "stage": ["decode"], "reason": ["truncated"]})
    info = {
        "experiment": "models/demo",
        "mode": "classifier",
        "warning_threshold": 9.0,
        "pipelines": [{"name": "fold_0", "threshold": 0.5, "rule": {"rule": "threshold", "threshold": 0.9}}],
    }
    path = write_review_page(tmp_path, decisions, rejected, info)
    page = _parse(path)
    cards = page.all("article", "study")
    assert [c["data-id"] for c in cards] == decisions["image_id"].tolist()
    assert [float(c["data-probability"]) for c in cards] == decisions["probability"].tolist()
    assert [c["data-decision"] for c in cards] == ["1", "0", "1", "0"]
    assert [c["data-warning"] for c in cards] == ["0", "1", "0", "0"]
    assert ["warned" in c["class"] for c in cards] == [False, True, False, False]
    assert [a["href"] for a in page.all("a", "open")] == decisions["overlay"].tolist()
    assert [i["src"] for i in page.all("img") if "src" in i] == decisions["thumbnail"].tolist()
    assert {s["id"] for s in page.all("select")} == {"sort", "decision", "warning"}
    assert {o["value"] for o in page.all("option")} >= {
        "probability-desc",
        "probability-asc",
        "1",
        "0",
        "all",
    }
    assert len(page.all("dialog")) == 1 and len(page.all("p", "reason")) == len(decisions)
    # self-contained: inline style and script only, nothing from the network
    assert not page.all("link") and all("src" not in s for s in page.all("script"))
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text and "study&lt;0&gt;" in text and "<0>" not in text
    assert "broken.dcm" in text and "p &gt;= 0.9" in text


def test_rule_text() -> None:
    assert rule_text({"rule": "threshold_area", "threshold": 0.46, "min_area": 4200}) == (
        "p >= 0.46, area >= 4,200 px at 1024"
    )
    assert rule_text({"rule": "threshold", "threshold": 0.5, "lcc": True}) == "p >= 0.5, largest component"


def test_overlay_panels_text_and_thumbnail() -> None:
    image = np.tile(np.linspace(0, 255, 80, dtype=np.uint8), (60, 1))
    prob = np.zeros((60, 80), np.uint8)
    prob[20:40, 30:50] = 240
    mask = prob > 127
    plain = render_overlay(image, prob, mask, "title", ["line"], "", panel=200)
    warned = render_overlay(image, prob, mask, "title", ["line"], "far from the training data", panel=200)
    rows = panel_rows(image.shape, 200)
    assert (
        rows == 150 and plain.shape[1] == 400 and plain.shape[0] > rows and warned.shape[0] > plain.shape[0]
    )
    left, right = plain[:rows, :200], plain[:rows, 200:]
    assert (left == (255, 212, 0)).all(axis=2).sum() > 50  # the mask's outline
    assert right[75, 100, 0] > right[75, 100, 2] + 60  # heat where p is high
    assert np.array_equal(right[140, 10], left[140, 10])  # untouched where p is 0
    assert thumbnail(plain, rows, width=120).shape == (45, 120, 3)
