"""Report stage: one self-contained HTML file (plus a Markdown twin) comparing runs.

    convsum report runs/r1 runs/r2 --output report.html [--set report.examples=5]

Loss and learning-rate curves from the run log, ROUGE bars for base vs each run (per reference and
mean), summary lengths against the references, and the best and worst examples by ROUGE-L with
dialogue, references and prediction side by side. Plots are matplotlib PNGs, embedded as data URIs
in the HTML and written beside the Markdown file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from convsum import metrics
from convsum.config import Config, load_config
from convsum.errors import ConvsumError
from convsum.io import atomic_write_text, read_json
from convsum.rundir import HELD_OUT, RunDir


def load_run(path: Path) -> dict:
    run = RunDir(path)
    if not run.is_run():
        raise ConvsumError(f"{path}: not a convsum run folder (no {run.info.name})")
    tuned, base = run.find_eval(("test", HELD_OUT))
    return {"name": path.name, "path": path, "log": run.read_log(), "summary": run.read_summary(),
            "info": read_json(run.info),
            "metrics": tuned.read_metrics() if tuned else None,
            "base_metrics": base.read_metrics() if base else None,
            "predictions": tuned.read_predictions() if tuned else []}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_curves(runs: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    for r in runs:
        tr = [x for x in r["log"] if "loss" in x]
        ev = [x for x in r["log"] if "eval_loss" in x]
        line, = a.plot([x["step"] for x in tr], [x["loss"] for x in tr], label=f"{r['name']} train")
        if ev:
            a.plot([x["step"] for x in ev], [x["eval_loss"] for x in ev], "o--", color=line.get_color(),
                   label=f"{r['name']} held-out")
        b.plot([x["step"] for x in tr], [x.get("lr") or 0 for x in tr], label=r["name"])
    a.set(title="loss", xlabel="step")
    b.set(title="learning rate", xlabel="step")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    return _png(fig)


def learning_points(run: dict) -> list[dict]:
    """A run's held-out ROUGE-L at each evaluation, against training dialogues seen (step x effective
    batch) and wall minutes since training started (evaluations included)."""
    info, log = run["info"], run["log"]
    start = info.get("started") or (log[0]["time"] if log and "time" in log[0] else None)
    batch = info.get("effective_batch") or 1
    return [{"examples": x["step"] * batch, "rougeL": x["eval_rougeL"],
             "minutes": (x["time"] - start) / 60 if start and "time" in x else None}
            for x in log if "eval_rougeL" in x]


def plot_scaling(runs: list[dict]) -> bytes | None:
    """Held-out ROUGE-L against training dialogues seen and against minutes, one line per run: a set of
    runs over different data sizes is the data-scaling curve users plan with."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {r["name"]: learning_points(r) for r in runs}
    if not any(points.values()):
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for name, pts in points.items():
        if pts:
            a.plot([p["examples"] for p in pts], [p["rougeL"] for p in pts], "o-", label=name)
            timed = [p for p in pts if p["minutes"] is not None]
            b.plot([p["minutes"] for p in timed], [p["rougeL"] for p in timed], "o-", label=name)
    a.set(title="held-out ROUGE-L vs training dialogues seen", xlabel="dialogues (step x effective batch)",
          ylabel="ROUGE-L F1 (%)")
    b.set(title="held-out ROUGE-L vs wall time", xlabel="minutes since training started")
    a.legend(fontsize=8)
    return _png(fig)


def plot_rouge(runs: list[dict]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = []
    base = next((r["base_metrics"] for r in runs if r["base_metrics"]), None)
    if base:
        bars.append(("base", base))
    bars += [(r["name"], r["metrics"]) for r in runs if r["metrics"]]
    if not bars:
        return None
    groups = list(bars[-1][1]["per_reference"]) + (["mean"] if len(bars[-1][1]["per_reference"]) > 1 else [])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    width = 0.8 / len(bars)
    for ax, key in zip(axes, ("rouge1", "rouge2", "rougeL")):
        for i, (label, m) in enumerate(bars):
            vals = [(m["mean"] if g == "mean" else m["per_reference"].get(g, {})).get(key, 0) for g in groups]
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=label)
        ax.set_xticks([j + width * (len(bars) - 1) / 2 for j in range(len(groups))], groups, fontsize=8)
        ax.set_title(key)
    axes[0].set_ylabel("F1 (%)")
    axes[0].legend(fontsize=8)
    return _png(fig)


def plot_lengths(runs: list[dict]) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_preds = [r for r in runs if r["predictions"]]
    if not with_preds:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    refs = [len(v.split()) for p in with_preds[0]["predictions"] for v in p["references"].values()]
    ax.hist(refs, bins=30, alpha=0.5, label="references", density=True)
    for r in with_preds:
        ax.hist([len(p["prediction"].split()) for p in r["predictions"]], bins=30, alpha=0.5, label=r["name"], density=True)
    ax.set(title="summary length (words)", xlabel="words", ylabel="density")
    ax.legend(fontsize=8)
    return _png(fig)


def ranked_examples(run: dict, n: int = 3) -> tuple[list[dict], list[dict]]:
    scored = []
    for p in run["predictions"]:
        s = metrics.example_scores(p["prediction"], list(p["references"].values()))
        scored.append((sum(s["rougeL"]) / len(s["rougeL"]), p))
    scored.sort(key=lambda x: -x[0])
    pick = lambda xs: [{**p, "score": sc} for sc, p in xs]  # noqa: E731
    return pick(scored[:n]), pick(scored[-n:][::-1])


def main(run_dirs: list[str], output: str | None = None, cfg: Config | None = None) -> Path:
    rc = (cfg or load_config()).report
    if not run_dirs:
        raise ConvsumError("give at least one RUN_DIR")
    runs = [load_run(Path(r)) for r in run_dirs]
    out = Path(output or rc.output)
    assets = out.with_name(out.stem + "_files")
    assets.mkdir(parents=True, exist_ok=True)
    images = {"curves": plot_curves(runs), "scaling": plot_scaling(runs), "rouge": plot_rouge(runs),
              "lengths": plot_lengths(runs)}
    for k, v in images.items():
        if v:
            (assets / f"{k}.png").write_bytes(v)
    h = ["<!doctype html><html><head><meta charset='utf-8'><title>convsum report</title><style>"
         "body{font:14px/1.45 system-ui,sans-serif;max-width:1200px;margin:2rem auto;padding:0 1rem}"
         "table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top}"
         "pre{white-space:pre-wrap;margin:0;font-size:12px}img{max-width:100%}</style></head><body>",
         "<h1>convsum report</h1>", f"<p>Runs: {', '.join(html.escape(r['name']) for r in runs)}</p>"]
    md = ["# convsum report", "", "Runs: " + ", ".join(r["name"] for r in runs), ""]
    _training_table(runs, h, md)
    _images(images, assets, h, md)
    _rouge_table(runs, h, md)
    for r in runs:
        if r["predictions"]:
            _examples(r, rc.examples, h, md)
    h.append("</body></html>")
    atomic_write_text(out, "\n".join(h))
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print(f"convsum: wrote {out} and {out.with_suffix('.md')} (+ {assets}/)")
    return out


def _training_table(runs: list[dict], h: list[str], md: list[str]) -> None:
    h.append("<h2>Training</h2><table><tr><th>run</th><th>steps</th><th>train loss</th><th>held-out loss</th>"
             "<th>minutes</th><th>tokens/s</th></tr>")
    md += ["## Training", "", "| run | steps | train loss | held-out loss | minutes | tokens/s |", "|---|---|---|---|---|---|"]
    for r in runs:
        s = r["summary"]
        cells = [r["name"], s.get("steps", "-"), _f(s.get("train_loss")), _f(s.get("eval_loss")),
                 _f((s.get("train_runtime_s") or 0) / 60, 1), _f(s.get("tokens_per_s"), 0)]
        h.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        md.append("| " + " | ".join(map(str, cells)) + " |")
    h.append("</table>")


def _images(images: dict, assets: Path, h: list[str], md: list[str]) -> None:
    for key, title in (("curves", "Loss and learning rate"), ("scaling", "Held-out ROUGE-L vs data and time"),
                       ("rouge", "ROUGE"), ("lengths", "Summary lengths")):
        if images[key]:
            h.append(f"<h2>{title}</h2><img alt='{key}' src='data:image/png;base64,"
                     f"{base64.b64encode(images[key]).decode()}'>")
            md += [f"## {title}", "", f"![{key}]({assets.name}/{key}.png)", ""]


def _rouge_table(runs: list[dict], h: list[str], md: list[str]) -> None:
    table_rows = {}
    for r in runs:
        if r["base_metrics"] and "base" not in table_rows:
            table_rows["base"] = r["base_metrics"]
        if r["metrics"]:
            table_rows[r["name"]] = r["metrics"]
    if not table_rows:
        return
    t = metrics.format_table(table_rows, refs=metrics.table_refs(table_rows))
    t += "\n\nmean summary length (words), predicted vs references:\n" + "\n".join(
        f"  {name}: {m['gen_length_words']:.1f} vs {m['ref_length_words']:.1f}"
        for name, m in table_rows.items() if "ref_length_words" in m)
    h.append(f"<pre>{html.escape(t)}</pre>")
    md += ["```", t, "```", ""]


def _examples(r: dict, n: int, h: list[str], md: list[str]) -> None:
    best, worst = ranked_examples(r, n)
    cell = lambda s: s.replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    for label, rows in (("best", best), ("worst", worst)):
        h.append(f"<h2>{html.escape(r['name'])}: {label} examples by ROUGE-L</h2><table>"
                 "<tr><th>dialogue</th><th>references</th><th>prediction</th><th>RL</th></tr>")
        md += [f"## {r['name']}: {label} examples by ROUGE-L", "", "| dialogue | references | prediction | RL |",
               "|---|---|---|---|"]
        for p in rows:
            refs = "\n".join(f"{k}: {v}" for k, v in p["references"].items())
            h.append(f"<tr><td><pre>{html.escape(p['dialogue'])}</pre></td><td><pre>{html.escape(refs)}</pre></td>"
                     f"<td>{html.escape(p['prediction'])}</td><td>{p['score']:.1f}</td></tr>")
            md.append(f"| {cell(p['dialogue'][:600])} | {cell(refs)} | {cell(p['prediction'])} | {p['score']:.1f} |")
        h.append("</table>")
        md.append("")


def _f(x, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
