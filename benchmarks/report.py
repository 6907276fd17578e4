"""Writing a run's results: report.md (Markdown tables), one CSV per section, results.json and charts.html."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

Row = dict[str, Any]

# Per section: (column title, row key, format). A `<key>_x_peft` ratio column follows each key listed in RATIOS.
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "steps": [("contender", "contender", "s"), ("prompt tokens", "prompt_tokens", "d"),
              ("step s (median [min-max])", "step_s", "spread"),
              ("x floor, same round (median [min-max])", "step_x_floor", "spread"),
              ("examples/s", "examples_per_s", ".2f"), ("peak MiB above model", "peak_mib", ".0f"),
              ("trainable params", "trainable_params", ",d"),
              ("artifact KiB", "artifact_bytes", "kib")],
    "inference": [("contender", "contender", "s"), ("batch", "batch_size", "d"),
                  ("prompt tokens", "prompt_tokens", "d"), ("ms per example (median [min-max])", "ms_per_example",
                                                            "spread_ms")],
    "accuracy": [("budget", "budget", "s"), ("contender", "contender", "s"), ("steps", "steps", "d"),
                 ("test accuracy: mean ± std [95% interval]", "accuracy", "interval"), ("seeds", "per_seed", "list"),
                 ("s per step (median)", "step_s", ".2f"), ("training s", "train_s", ".0f")],
    "growth": [("contender", "contender", "s"), ("l", "length", "d"), ("prompt tokens", "prompt_tokens", "d"),
               ("step s (median [min-max])", "step_s", "spread"), ("peak MiB above model", "peak_mib", ".0f")],
    "serving": [("contender", "contender", "s"), ("queries per call", "queries_per_call", "d"),
                ("rows per forward", "rows_per_forward", "d"),
                ("ms per query, every prompt (median [min-max])", "ms_per_query", "spread_ms"),
                ("queries/s", "queries_per_s", ".2f")],
    "serving-http": [("contender", "contender", "s"), ("K prompts", "prompts", "d"), ("clients", "clients", "d"),
                     ("p50 ms", "p50_ms", ".0f"), ("p99 ms", "p99_ms", ".0f"), ("requests/s", "requests_per_s", ".2f"),
                     ("x one prompt at a time", "requests_per_s_x_by_prompt", ".2f"),
                     ("x one request at a time", "requests_per_s_x_one", ".2f"),
                     ("input tokens/s", "tokens_per_s", ".0f"), ("failed", "failed", "d"),
                     ("answers", "codes", "codes"),
                     ("bare p50 ms", "bare_p50_ms", ".0f"), ("x bare", "x_bare", ".2f")],
}
RATIOS = (("x_sequential", "x sequential"), ("x_peft", "x PEFT"))
"""Ratio columns that follow a figure when its rows carry `<key>_<suffix>`."""
TITLES = {
    "steps": "Training step (forward + backward + optimizer step)",
    "inference": "Inference: label-word scoring latency",
    "accuracy": "Test accuracy of each method at its own defaults, over seeds (ranked label words)",
    "growth": "Growth with the prompt length",
    "serving": "Serving several prompts: mixed batches against one prompt at a time",
    "serving-http": "The API over HTTP: a real `lamp api` process, concurrent clients",
}


def _cell(row: Row, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if fmt == "spread":
        return f"{value:.3f} [{row[key + '_min']:.3f}-{row[key + '_max']:.3f}]"
    if fmt == "spread_ms":
        return f"{value:.1f} [{row['ms_min']:.1f}-{row['ms_max']:.1f}]"
    if fmt == "interval":
        return f"{value:.3f} ± {row[key + '_std']:.3f} [{row[key + '_low']:.3f}-{row[key + '_high']:.3f}]"
    if fmt == "list":
        return ", ".join(f"{v:.3f}" for v in value)
    if fmt == "codes":
        return ", ".join(f"{code}: {n}" for code, n in sorted(value.items(), key=lambda kv: str(kv[0])))
    if fmt == "kib":
        return f"{value / 1024:.1f}"
    return format(value, fmt)


def _ratio(row: Row, key: str, suffix: str = "x_peft") -> str:
    value = row.get(f"{key}_{suffix}")
    return "" if value is None else f"{value:.2f}x"


def markdown_table(section: str, rows: list[Row]) -> str:
    cols = COLUMNS[section]
    head, cells_of = [], []
    for title, key, fmt in cols:
        head.append(title)
        cells_of.append((key, fmt, ""))
        for suffix, label in RATIOS:
            if f"{key}_{suffix}" in (rows[0] if rows else {}):
                head.append(label)
                cells_of.append((key, fmt, suffix))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [_ratio(row, key, ratio) if ratio else _cell(row, key, fmt) for key, fmt, ratio in cells_of]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any], command: str) -> str:
    env, s = result["environment"], result["settings"]
    out = [
        "# LAMP Studio against PEFT prompt tuning",
        "",
        f"`{command}`",
        "",
        f"Model {env['model']} (hidden size {env['hidden_size']}), {env['device']} ({env['device_name']}), "
        f"{env['dtype']}, {env['threads']} threads; torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}; commit {env['commit']}. Seed {s['seed']}; every contender saw the same batches. "
        f"Timings: {s['warmup']} warm-up + {s['repeats']} timed repeats, median [min-max]; training steps (step "
        "and growth tables) are timed in interleaved rounds, one step of each contender per round. "
        f"Ratios (x PEFT) are over PEFT prompt tuning measured in this run. Total {result['total_seconds']:.0f} s.",
        "",
    ]
    notes = {
        "steps": f"Batch {s['batch_size']} (padded width {env['batch_width_tokens']} tokens before the prompt). "
                 f"Memory: {result['memory_method']}. Trainable parameters are counted from requires_grad; the "
                 "artifact is our save_artifact directory or PEFT's save_pretrained directory.",
        "inference": "Per example, for one batch of test inputs: ours through core.scoring.rank_candidates with the "
                     "stored prompt, PEFT through its model's forward and the label words' logits. PEFT's prompt "
                     f"scored both ways differs by at most {result.get('peft_score_gap') or 0:.1e}.",
        "accuracy": f"Task {s['task']}, {_test_examples(s['eval_examples'])}; "
                    f"{s['seeds']} seeds from {s['seed']} (prompt init and data order; the split is fixed). "
                    f"Budget `steps`: {s['accuracy_steps']} steps of batch {s['accuracy_batch_size']} each; "
                    "`time`: each of our methods trains as many steps as fit in the training time the slowest of "
                    "them needed for those steps (seconds per step: the median step of the `steps` runs); PEFT "
                    "sets no budget. Each method "
                    "at its own defaults (core.spec.RECIPES), the best validation checkpoint tested; PEFT at "
                    "prompt tuning's recipe by an explicit loop on the same batches, schedule and validation "
                    "steps, its best validation prompt scored by the same code. The interval is Student's t "
                    "over the seeds.",
        "growth": f"Batch {s['growth_batch_size']}; LAMP with r={s['rank']}, p={s['default_pool']}. Ratios are "
                  "over PEFT at the same l.",
        "serving": _serving_note(s, result.get("serving_check") or {}),
        "serving-http": (f"K succeeded jobs (LAMP l={s['length']} r={s['rank']} p={s['default_pool']}, untrained, one "
                         "seed each) in a private store; `lamp api` on loopback; clients call /v1/classify with one "
                         f"test review each, the jobs by turns, {s['http_requests']} requests per setting. The "
                         f"batched server gathers up to {s['http_max_batch']} requests for {s['http_max_wait_ms']:g} "
                         "ms; the one-prompt-at-a-time server gathers the same way but answers each prompt's "
                         "share on its own (--no-mix), the one-request-at-a-time server has --max-batch 1. PEFT "
                         "answers the same stream in this process, one request at a time, without HTTP. Ratios are "
                         "requests/s over those "
                         "servers at the same K and clients, and over PEFT at the same K."),
    }
    for section, data in result["sections"].items():
        out += [f"## {TITLES[section]}", "", notes[section], "", markdown_table(section, data["rows"]), ""]
    return "\n".join(out)


def _test_examples(count: int | None) -> str:
    return "the whole test split" if count is None else f"the first {count} test examples"


def _serving_note(s: dict[str, Any], check: dict[str, Any]) -> str:
    return (f"{s['serving_prompts']} prompts (by turns LAMP l={s['length']} r={s['rank']} p={s['default_pool']}, "
            f"{s['length'] // s['default_pool']} tokens, and prompt tuning, {s['length']} tokens; untrained) answer "
            f"the first {s['serving_queries']} test inputs by ranking the label words. Each call takes that many "
            "queries and answers them with every prompt: batched in one mixed batch (each row its own prompt, "
            "core.serving), sequential through our single-prompt path one prompt after another, PEFT with one "
            "adapter per prompt, `set_adapter` and a forward each. ms per query: the whole pass over the inputs "
            "divided by their number (answers_per_s in the CSV counts query-prompt pairs). Ratios are over the "
            "sequential row and the PEFT row at the same queries per call (below 1: less time). Answers batched = "
            "sequential: "
            f"{check.get('answers_equal')}, label scores differ by at most {check.get('max_score_diff') or 0:.1e} "
            f"(PEFT's: {check.get('peft_max_score_diff') or 0:.1e}).")


def write_csv(path: Path, rows: list[Row]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def charts_html(result: dict[str, Any]) -> str:
    """All charts in one self-contained page (plotly.js embedded once: it opens offline)."""
    import plotly.graph_objects as go

    figures: list[Any] = []
    sections = result["sections"]
    if "steps" in sections:
        rows = sections["steps"]["rows"]
        names = [r["contender"] for r in rows]
        figures.append(go.Figure(go.Bar(
            x=names, y=[r["step_s"] for r in rows],
            error_y={"type": "data", "symmetric": False, "array": [r["step_s_max"] - r["step_s"] for r in rows],
                     "arrayminus": [r["step_s"] - r["step_s_min"] for r in rows]},
            text=[f"{r['step_s_x_peft']:.2f}x" for r in rows]), layout={"title": "Training step time (s)"}))
        figures.append(go.Figure(go.Bar(x=names, y=[r["peak_mib"] for r in rows],
                                        text=[_ratio(r, "peak_mib") for r in rows]),
                                 layout={"title": "Peak memory above the loaded model (MiB)"}))
    if "inference" in sections:
        rows = sections["inference"]["rows"]
        fig = go.Figure(layout={"title": "Inference latency per example (ms)", "barmode": "group"})
        for batch in sorted({r["batch_size"] for r in rows}):
            sub = [r for r in rows if r["batch_size"] == batch]
            fig.add_trace(go.Bar(name=f"batch {batch}", x=[r["contender"] for r in sub],
                                 y=[r["ms_per_example"] for r in sub]))
        figures.append(fig)
    if "accuracy" in sections:
        rows = sections["accuracy"]["rows"]
        fig = go.Figure(layout={"title": "Test accuracy over seeds (mean, 95% interval)", "barmode": "group",
                                "yaxis": {"range": [0, 1], "title": "test accuracy"}})
        for budget in dict.fromkeys(r["budget"] for r in rows):
            sub = [r for r in rows if r["budget"] == budget]
            fig.add_trace(go.Bar(name=f"budget: {budget}", x=[r["contender"] for r in sub],
                                 y=[r["accuracy"] for r in sub], text=[f"{r['accuracy']:.3f}" for r in sub],
                                 error_y={"type": "data", "array": [r["accuracy_ci95"] for r in sub]}))
        figures.append(fig)
    if "growth" in sections:
        rows = sections["growth"]["rows"]
        for key, title in (("step_s", "Step time (s) against l"), ("peak_mib", "Peak memory (MiB) against l")):
            fig = go.Figure(layout={"title": title, "xaxis": {"title": "l", "type": "log"}})
            for method in dict.fromkeys(r["method"] for r in rows):
                sub = [r for r in rows if r["method"] == method]
                fig.add_trace(go.Scatter(name=method, x=[r["length"] for r in sub], y=[r[key] for r in sub],
                                         mode="lines+markers"))
            figures.append(fig)
    if "serving" in sections:
        rows = sections["serving"]["rows"]
        fig = go.Figure(layout={"title": "Serving several prompts: ms per query (every prompt)", "barmode": "group"})
        for per_call in sorted({r["queries_per_call"] for r in rows}):
            sub = [r for r in rows if r["queries_per_call"] == per_call]
            fig.add_trace(go.Bar(name=f"{per_call} per call", x=[r["contender"] for r in sub],
                                 y=[r["ms_per_query"] for r in sub]))
        figures.append(fig)
    parts = [f.to_html(full_html=False, include_plotlyjs=i == 0) for i, f in enumerate(figures)]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>LAMP Studio benchmark</title></head><body>"
            + "\n".join(parts) + "</body></html>")


def write_report(result: dict[str, Any], out: Path, command: str) -> dict[str, str]:
    """Write every file; returns their paths by kind."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / "report.md", "json": out / "results.json", "charts": out / "charts.html"}
    files["markdown"].write_text(markdown(result, command))
    files["json"].write_text(json.dumps({**result, "command": command}, indent=2))
    for section, data in result["sections"].items():
        files[f"csv_{section}"] = out / f"{section}.csv"
        write_csv(files[f"csv_{section}"], data["rows"])
    files["charts"].write_text(charts_html(result))
    return {k: str(v) for k, v in files.items()}
