"""Charts drawn on the server as inline SVG, so a read page shows its curves without JavaScript."""

from __future__ import annotations

WIDTH, HEIGHT, PAD = 640, 220, 36
SERIES = (("train_loss", "train loss"), ("val_loss", "eval loss"))


def loss_chart(metrics: dict) -> dict | None:
    """The run's loss curves (`metrics["train_loss"]`, `["val_loss"]`: [[step, loss], ...]) as SVG polylines, with
    their axes' ranges; None when the run logged none."""
    series = {key: [(float(s), float(v)) for s, v in metrics.get(key) or [] if v == v] for key, _ in SERIES}
    points = [p for values in series.values() for p in values]
    if not points:
        return None
    steps, losses = [s for s, _ in points], [v for _, v in points]
    x0, x1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1
    y0, y1 = min(losses), max(losses) if max(losses) > min(losses) else min(losses) + 1

    def xy(step: float, loss: float) -> str:
        x = PAD + (step - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
        y = HEIGHT - PAD - (loss - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
        return f"{x:.1f},{y:.1f}"

    lines = [{"key": key, "label": label, "points": " ".join(xy(s, v) for s, v in series[key]), "count": len(series[key])}
             for key, label in SERIES if series[key]]
    return {"width": WIDTH, "height": HEIGHT, "pad": PAD, "lines": lines, "steps": (int(x0), int(max(steps))),
            "loss": (round(y0, 4), round(max(losses), 4))}
