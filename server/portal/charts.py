"""Charts drawn on the server as inline SVG, so a read page shows its curves without JavaScript.

`line_chart` lays out any series of (x, y) points in one frame; the loss curves of a run and a rollout's report
over time are two uses of it, drawn by the one template `_chart.html`.
"""

from __future__ import annotations

from datetime import datetime

WIDTH, HEIGHT, PAD = 640, 220, 36
LOSS_SERIES = (("train_loss", "train loss"), ("val_loss", "eval loss"))
MAX_DOTS = 48  # a series with at most this many points marks each one (a single point shows too)
ARM_CLASSES = ("arm-a", "arm-b", "arm-c", "arm-d")  # an arm's colour (portal.css); later arms reuse them


def line_chart(title: str, series: list[tuple[str, str, list[tuple[float, float]]]], x_label: tuple[str, str],
               y_label: str, y_from_zero: bool = False) -> dict | None:
    """`series` ([(css class, label, [(x, y), ...]), ...]) as SVG polylines in one frame, for `_chart.html`;
    `x_label`: the texts under the frame's left and right ends. None when no series has a point."""
    series = [(key, label, [(float(x), float(y)) for x, y in points if y == y]) for key, label, points in series]
    points = [p for _, _, values in series for p in values]
    if not points:
        return None
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0 = 0.0 if y_from_zero else min(ys)
    y1 = max(ys) if max(ys) > y0 else y0 + 1

    def xy(x: float, y: float) -> str:
        return (f"{PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD):.1f},"
                f"{HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD):.1f}")

    lines = [{"key": key, "label": label, "points": " ".join(xy(x, y) for x, y in values), "count": len(values),
              "dots": [xy(x, y).split(",") for x, y in values] if len(values) <= MAX_DOTS else []}
             for key, label, values in series if values]
    return {"title": title, "width": WIDTH, "height": HEIGHT, "pad": PAD, "lines": lines, "x_label": x_label,
            "y_label": y_label, "y_range": (round(y0, 4), round(max(ys), 4))}


def loss_chart(metrics: dict) -> dict | None:
    """A run's loss curves (`metrics["train_loss"]`, `["val_loss"]`: [[step, loss], ...]); None when it logged none."""
    series = [(key, label, metrics.get(key) or []) for key, label in LOSS_SERIES]
    steps = [s for _, _, points in series for s, _ in points]
    return line_chart("Loss by step", series, (f"step {int(min(steps))}", f"step {int(max(steps))}") if steps else ("", ""),
                      "loss")


def rollout_charts(report: dict) -> list[dict]:
    """A rollout report's `timeline` as two charts: requests per bucket by arm, and each arm's error rate."""
    buckets = report.get("timeline") or []
    if not buckets:
        return []
    span = (_time(buckets[0]["start"]), _time(buckets[-1]["end"]))
    arms = [(a["arm"], a["version"]) for a in buckets[0]["arms"]]

    def series(value) -> list:
        out = []
        for i, (arm, version) in enumerate(arms):
            points = [(i_bucket, value(b["arms"][i])) for i_bucket, b in enumerate(buckets)]
            out.append((ARM_CLASSES[i % len(ARM_CLASSES)], f"arm {arm} (version {version})",
                        [(x, y) for x, y in points if y is not None]))
        return out

    error_rate = lambda a: 100 * a["errors"] / a["requests"] if a["requests"] else None  # noqa: E731
    charts = [line_chart("Requests per interval, by arm", series(lambda a: a["requests"]), span, "requests", True),
              line_chart("Error rate per interval, by arm (%)", series(error_rate), span, "errors %", True)]
    return [c for c in charts if c]


def _time(iso: str) -> str:
    """An ISO time as the chart's axis shows it: `2026-12-02 18:05:09`."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S")
