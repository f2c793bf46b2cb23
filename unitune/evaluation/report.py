"""What a run leaves under --output_dir: result.json, result.md and result.png (written atomically), and
`compare`, which puts several result files side by side in one table and one chart.

A result is a dict:
    benchmark, label, headline (the name of the headline figure), overall (a fraction in [0, 1]),
    n (questions), unparsed (answers no score could be read from), unparsed_label,
    breakdown: {level: {name: {score, n, unparsed, ...}}}  (levels in report order, the first is charted),
    display: {scale, digits} (how tables print scores: MMCU 0.298, Belle-eval 29.8), settings, predictions.
A score with nothing behind it is None (printed n/a), never NaN.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from unitune.errors import UnituneError
from unitune.evaluation.records import json_dump
from unitune.writable import write_atomic

RESULT_FIELDS = ("benchmark", "overall", "breakdown")


def fmt(score: float | None, display: dict) -> str:
    if score is None:
        return "n/a"
    return f"{score * display.get('scale', 1):.{display.get('digits', 3)}f}"


def markdown(result: dict) -> str:
    display = result.get("display", {})
    label = result.get("unparsed_label", "unparsed")
    lines = [f"# {result['benchmark']}: {result.get('label', '')}".rstrip(": "), "",
             (f"**{result.get('headline', 'overall')}: {fmt(result['overall'], display)}** "
              f"({result['n']} questions, {result['unparsed']} {label})"), ""]
    for level, entries in result["breakdown"].items():
        lines += [f"| {level} | score | n | {label} |", "|---|---|---|---|"]
        lines += [f"| {name} | {fmt(e['score'], display)} | {e['n']} | {e['unparsed']} |"
                  for name, e in entries.items()]
        lines.append("")
    return "\n".join(lines)


def _png(names: list[str], series: dict[str, list[float | None]], title: str, scale: float) -> bytes:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) * max(len(series), 1)), 4.5))
    for k, (label, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [(v or 0.0) * scale for v in values], width=width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylim(0, scale)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a subject name the default font lacks glyphs for is no failure
        warnings.simplefilter("ignore")
        fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def chart_rows(result: dict) -> tuple[list[str], list[float | None]]:
    """The charted names and scores: the headline, then the first breakdown level."""
    headline = result.get("headline", "overall")
    first = {k: v for k, v in next(iter(result["breakdown"].values()), {}).items() if k != headline}
    return [headline, *first], [result["overall"], *(e["score"] for e in first.values())]


def write_result(result: dict, output_dir: str | Path) -> dict[str, Path]:
    """result.json, result.md, result.png under output_dir, each atomic."""
    if result["overall"] is None or not 0.0 <= result["overall"] <= 1.0:
        raise ValueError(f"overall must be a fraction in [0, 1], got {result['overall']!r}")
    out = Path(output_dir)
    paths = {"json": out / "result.json", "markdown": out / "result.md", "chart": out / "result.png"}
    names, scores = chart_rows(result)
    display = result.get("display", {})
    title = f"{result['benchmark']}: {result['label']}" if result.get("label") else result["benchmark"]
    png = _png(names, {result.get("label") or result["benchmark"]: scores}, title, display.get("scale", 1))
    write_atomic(paths["markdown"], markdown(result))
    write_atomic(paths["chart"], png)
    write_atomic(paths["json"], json_dump(result))  # last: a result.json always has its table and chart
    return paths


def read_result(path: str | Path) -> dict:
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnituneError(f"compare: {path}: no such result file") from None
    except json.JSONDecodeError:
        raise UnituneError(f"compare: {path}: not JSON (expected a result.json an evaluation wrote)") from None
    for name in RESULT_FIELDS:
        if not isinstance(result, dict) or name not in result:
            raise UnituneError(f"compare: {path}: field '{name}' is missing; not a result.json of unitune.eval")
    return result


def compare(paths: list[str], output_dir: str | Path) -> tuple[str, dict[str, Path]]:
    """One markdown table and one chart of several results of the same benchmark."""
    if len(paths) < 2:
        raise UnituneError("compare: give at least two result.json files")
    results = [read_result(p) for p in paths]
    kinds = {r["benchmark"] for r in results}
    if len(kinds) > 1:
        raise UnituneError(f"compare: the files hold different benchmarks ({', '.join(sorted(kinds))}); "
                           f"compare results of one benchmark")
    labels: list[str] = []
    for path, result in zip(paths, results):
        label = result.get("label") or Path(path).parent.name or Path(path).stem
        labels.append(label if label not in labels else f"{label} ({len(labels) + 1})")
    names: list[str] = []
    for result in results:
        names += [n for n in chart_rows(result)[0] if n not in names]
    series: dict[str, list[float | None]] = {}
    for label, result in zip(labels, results):
        row_names, scores = chart_rows(result)
        by_name = dict(zip(row_names, scores))
        series[label] = [by_name.get(n) for n in names]
    display = results[0].get("display", {})
    lines = [f"| {results[0]['benchmark']} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(fmt(series[label][i], display) for label in labels) + " |")
    table = "\n".join(lines) + "\n"
    out = Path(output_dir)
    files = {"markdown": out / "compare.md", "chart": out / "compare.png", "json": out / "compare.json"}
    write_atomic(files["markdown"], table)
    write_atomic(files["chart"], _png(names, series, results[0]["benchmark"], display.get("scale", 1)))
    write_atomic(files["json"], json_dump({"benchmark": results[0]["benchmark"], "files": list(paths),
                                           "labels": labels, "rows": names, "scores": series}))
    return table, files


def summary_line(result: dict) -> str:
    display: dict[str, Any] = result.get("display", {})
    return (f"{result['benchmark']} {result.get('headline', 'overall')}: {fmt(result['overall'], display)} "
            f"({result['n']} questions, {result['unparsed']} {result.get('unparsed_label', 'unparsed')})")
