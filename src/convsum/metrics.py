"""ROUGE scoring of generated summaries against one or more references.

Protocol (what the numbers mean):
- All scores are ROUGE F1 (F-measure), in percent, from Google's `rouge-score` package with its
  own tokenizer (lowercase, non-alphanumerics dropped) and Porter stemming (`use_stemmer=True`).
- rouge1 / rouge2: unigram / bigram overlap.
- rougeL: sentence-level LCS over the whole text, treated as one sequence (newlines ignored).
- rougeLsum: summary-level LCS (union LCS per reference sentence); sentences are split after
  `.`, `!` or `?` followed by whitespace, and put one per line because that is how rouge-score
  finds sentence boundaries.
- With K references per example we report each reference separately ("per_reference"), the
  mean over references ("mean") and the best reference, chosen per metric ("best"); every one
  of these is then averaged over examples.

rouge-score numbers are not directly comparable with papers that used the Perl ROUGE-1.5.5 or
py-rouge: tokenization and stemming differ, and there is no multi-reference jackknifing. Compare
like with like: the base and fine-tuned model scored by this module, on the same references.
"""

from __future__ import annotations

import re
import statistics
from functools import lru_cache

from rouge_score import rouge_scorer

from convsum.errors import ConvsumError

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_LABELS = {"rouge1": "R1", "rouge2": "R2", "rougeL": "RL", "rougeLsum": "RLsum"}
# A regex rather than nltk's punkt: the machines are offline and punkt needs a data download.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)


def _one_sentence_per_line(text: str) -> str:
    # Only rougeLsum looks at the newlines; the tokenizer treats them as spaces for the other
    # keys, so a single scoring call with this text gives all four numbers.
    return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def example_scores(prediction: str, refs: list[str]) -> dict[str, list[float]]:
    """F1 in percent (unrounded) of one prediction against each of its references, per key."""
    pred = _one_sentence_per_line(prediction)
    out: dict[str, list[float]] = {key: [] for key in KEYS}
    for ref in refs:
        scores = _scorer().score(_one_sentence_per_line(ref), pred)  # (target, prediction)
        for key in KEYS:
            out[key].append(scores[key].fmeasure * 100)
    return out


def _mean(values: list[float]) -> float:
    return round(statistics.fmean(values), 4)


def score_pairs(
    predictions: list[str], references: list[list[str]], reference_names: list[str] | None = None
) -> dict:
    """Corpus ROUGE: per reference, mean over references and best reference, averaged over examples."""
    if not predictions:
        raise ConvsumError("no predictions to score")
    if len(predictions) != len(references):
        raise ConvsumError(f"{len(predictions)} predictions for {len(references)} references")
    if any(isinstance(refs, str) for refs in references):
        raise ConvsumError("references must be a list of reference lists, one list per example")
    counts = sorted({len(refs) for refs in references})
    if len(counts) != 1 or counts[0] == 0:
        raise ConvsumError(f"every example needs the same number (>0) of references; got counts {counts}")
    k = counts[0]
    names = reference_names or (["summary"] if k == 1 else [f"summary{i + 1}" for i in range(k)])
    if len(names) != k:
        raise ConvsumError(f"{len(names)} reference names for {k} references per example")

    per_example = [example_scores(p, refs) for p, refs in zip(predictions, references)]
    columns = {name: {key: [ex[key][i] for ex in per_example] for key in KEYS} for i, name in enumerate(names)}
    columns["mean"] = {key: [statistics.fmean(ex[key]) for ex in per_example] for key in KEYS}
    columns["best"] = {key: [max(ex[key]) for ex in per_example] for key in KEYS}
    return {
        "n": len(predictions),
        "per_reference": {name: {key: _mean(columns[name][key]) for key in KEYS} for name in names},
        "mean": {key: _mean(columns["mean"][key]) for key in KEYS},
        "best": {key: _mean(columns["best"][key]) for key in KEYS},
        # 95% percentile bootstrap over dialogues: how much the score moves with the sample of dialogues.
        "ci95": {col: {key: bootstrap_interval(v) for key, v in by_key.items()} for col, by_key in columns.items()},
        "gen_length_words": _mean([len(p.split()) for p in predictions]),
        "ref_length_words": _mean([len(r.split()) for refs in references for r in refs]),
    }


BOOTSTRAP_RESAMPLES = 1000


def _resample_means(values, resamples: int, seed: int):
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(v), size=(resamples, len(v)))
    return v[idx].mean(axis=1)


def bootstrap_interval(values: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of the mean of `values` (resampling examples)."""
    import numpy as np

    lo, hi = np.percentile(_resample_means(values, resamples, seed), [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def paired_bootstrap(a: list[float], b: list[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Compare two systems on the same examples: mean of a - b, its 95% interval, and the share of
    resamples in which a scores higher (the same resampled examples for both)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ConvsumError(f"paired bootstrap needs the same examples for both systems ({len(a)} vs {len(b)})")
    diffs = _resample_means([x - y for x, y in zip(a, b)], resamples, seed)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"mean_diff": round(statistics.fmean(a) - statistics.fmean(b), 4), "ci95": [round(float(lo), 4),
            round(float(hi), 4)], "a_wins": round(float((diffs > 0).mean()), 4), "n": len(a), "resamples": resamples}


def compare_systems(a: list[str], b: list[str], references: list[list[str]]) -> dict[str, dict]:
    """Paired bootstrap of system A against system B per ROUGE key, on each example's mean over its
    references: {key: {"a", "b", "mean_diff", "ci95", "a_wins", ...}}."""
    if not (len(a) == len(b) == len(references)):
        raise ConvsumError(f"{len(a)} and {len(b)} predictions for {len(references)} examples")
    sa = [example_scores(p, refs) for p, refs in zip(a, references)]
    sb = [example_scores(p, refs) for p, refs in zip(b, references)]
    out = {}
    for key in KEYS:
        xa, xb = [statistics.fmean(e[key]) for e in sa], [statistics.fmean(e[key]) for e in sb]
        out[key] = {"a": _mean(xa), "b": _mean(xb), **paired_bootstrap(xa, xb)}
    return out


def format_comparison(comparison: dict[str, dict], a: str, b: str) -> str:
    lines = [f"{'':<7}{'A':>7}{'B':>7}{'A - B':>8}   {'95% CI of A - B':<18}{'A wins':>7}",
             *(f"{_LABELS[k]:<7}{c['a']:7.2f}{c['b']:7.2f}{c['mean_diff']:+8.2f}   "
               f"[{c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}]{'':<3}{100 * c['a_wins']:6.1f}%" for k, c in comparison.items()),
             f"A = {a}, B = {b}; {next(iter(comparison.values()))['n']} dialogues, mean over references; paired "
             f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples of dialogues); 'A wins' = share of resamples where A > B"]
    return "\n".join(lines)


def _column(metrics: dict, ref: str) -> tuple[str, dict, dict | None]:
    """(label, scores, 95% intervals) for one reference set; falls back to what exists for
    single-reference data."""
    per_ref, ci = metrics["per_reference"], metrics.get("ci95", {})
    if len(per_ref) == 1 or (ref not in ("mean", "best") and ref not in per_ref):
        name, scores = next(iter(per_ref.items()))
        return f"vs {name}", scores, ci.get(name)
    if ref in ("mean", "best"):
        return f"{ref} of {len(per_ref)}", metrics[ref], ci.get(ref)
    return f"vs {ref}", per_ref[ref], ci.get(ref)


def table_refs(results: dict) -> tuple[str, ...]:
    """The reference columns a table shows: the first reference, and with several the mean and best."""
    names = list(next(iter(results.values()))["per_reference"])
    return (names[0], "mean", "best") if len(names) > 1 else (names[0],)


def format_table(rows: dict[str, dict], refs=("summary1", "mean")) -> str:
    """Plain-text table: one row per model, R1/R2/RL/RLsum (1 decimal) per chosen reference set."""
    first = next(iter(rows.values()))
    labels = list(dict.fromkeys(_column(first, ref)[0] for ref in refs))  # dedupe, keep order
    with_ci = any("ci95" in m for m in rows.values())
    name_w = max(len("model"), *(len(name) for name in rows))
    group_w = 6 * len(KEYS)
    with_cut = any("cut_off_summaries" in m for m in rows.values())
    lines = [
        "model".ljust(name_w) + "".join(f" | {label:<{group_w}}" for label in labels) + (" | cut off" if with_cut else ""),
        " " * name_w + f" | {''.join(f'{_LABELS[k]:>6}' for k in KEYS)}" * len(labels)
        + (" | (at the token cap)" if with_cut else ""),
    ]
    for name, metrics in rows.items():
        cells = {label: (scores, ci) for label, scores, ci in (_column(metrics, ref) for ref in refs)}
        groups, halves = [], []
        for label in labels:
            scores, ci = cells.get(label, (None, None))
            groups.append("".join(f"{scores[k]:6.1f}" if scores else f"{'-':>6}" for k in KEYS))
            halves.append("".join(f"{'±' + format((ci[k][1] - ci[k][0]) / 2, '.1f'):>6}" if ci else f"{'':>6}"
                                  for k in KEYS))
        cut = metrics.get("cut_off_summaries")
        lines.append(name.ljust(name_w) + "".join(f" | {g}" for g in groups)
                     + (f" | {cut if cut is not None else '-':>7}" if with_cut else ""))
        if with_ci:
            lines.append(" " * name_w + "".join(f" | {h}" for h in halves))
    if with_ci:
        lines.append("(± = half the width of the 95% bootstrap interval over dialogues; the bounds are saved as ci95)")
    return "\n".join(line.rstrip() for line in lines)
