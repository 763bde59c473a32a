"""A study's HTML report: per claim its verdict and evidence, per run its grids, curves and numbers over seeds;
and its findings as data, which the README quotes (tests/unit/test_findings.py holds them equal).

    html = report_html(study, "quick", reports, verdicts)   # `study.build_report` writes it from the records
    findings(study, "quick", reports, verdicts)             # … and findings.json beside it
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flower_pipeline.metrics import BY_NAME, SUMMARY
from flower_pipeline.training import TrainConfig
from flower_pipeline.verdicts import NOT_MEASURED, STATUSES, Verdict

if TYPE_CHECKING:  # the study model imports this module to write its report
    from flower_pipeline.study import PlannedRun, Study

@dataclass(frozen=True)
class RunReport:
    """What the report shows of a finished run (one seed)."""

    run: PlannedRun
    metrics: dict[str, float]
    unavailable: dict[str, str]
    grid: str  # the final fixed-noise grid (PNG path)
    snapshot_grids: tuple[str, str] | None  # the snapshot's and the final generator's samples, the same latents
    timeline: str | None
    history: list[dict[str, float]]
    it_per_s: float
    seconds: float
    link: str = ""  # the MLflow run (a URL where the store is a server)
    provenance: dict[str, str] | None = None  # training.provenance (None in records of earlier versions)


TABLE_COLUMNS = {name: BY_NAME[name].title for name in SUMMARY}


def _grouped(reports: list[RunReport]) -> dict[str, list[RunReport]]:
    """The reports by run (base label), seeds in order."""
    groups: dict[str, list[RunReport]] = {}
    for report in sorted(reports, key=lambda r: (r.run.base, r.run.seed)):
        groups.setdefault(report.run.base, []).append(report)
    return groups


def _mean_sd(values: list[float]) -> str:
    import numpy as np

    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{np.mean(values):.3g} ± {np.std(values, ddof=1):.2g}"


def runs_table(reports: list[RunReport]) -> Any:
    """One row per run of a variant (its table's heading): label, architecture, changes, seeds, each metric as
    mean ± sd over seeds; a metric no run has (FID without Inception weights) is left out, its reason below."""
    import pandas as pd

    rows = []
    for label, seeds in _grouped(reports).items():
        first = seeds[0].run
        row: dict[str, Any] = {"label": label, "arch": first.arch, "seeds": len(seeds),
                               "changes": ", ".join(f"{k}={v}" for k, v in first.changes.items()) or "-"}
        for key, title in TABLE_COLUMNS.items():
            values = [r.metrics[key] for r in seeds if key in r.metrics]
            row[title] = _mean_sd(values) if len(values) == len(seeds) else "n/a"  # why: under the table
        row["it/s"] = _mean_sd([r.it_per_s for r in seeds])
        row["wall s"] = round(sum(r.seconds for r in seeds), 1)
        row["trained beside"] = ", ".join(sorted({_group_size(r) for r in seeds}))
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.loc[:, ~(table == "n/a").all()]


def _group_size(report: RunReport) -> str:
    """How many runs it was trained with as one model ("alone" for a solo training, "?" before provenance)."""
    if report.provenance is None:
        return "?"
    group = report.provenance.get("fused_group", "solo")
    return "alone" if group == "solo" else f"{len(group.split()) - 1} runs"


def machines(reports: list[RunReport]) -> list[str]:
    """Each distinct machine and kernel set the runs trained on (their provenance less the fused group)."""
    seen = {", ".join(f"{k}={v}" for k, v in sorted(r.provenance.items()) if k != "fused_group")
            for r in reports if r.provenance}
    return sorted(seen) + (["(runs of an earlier version: no provenance recorded)"]
                           if any(r.provenance is None for r in reports) else [])


def unavailable_reasons(reports: list[RunReport]) -> dict[str, str]:
    """Why a table column says n/a: metric → reason, each said once."""
    reasons: dict[str, str] = {}
    for report in reports:
        for key in TABLE_COLUMNS:
            if key not in report.metrics and key in report.unavailable:
                reasons.setdefault(TABLE_COLUMNS[key], report.unavailable[key])
    return reasons


def _png(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _figure(plot: Callable[[Any], None], width: float = 9, height: float = 3) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(width, height), dpi=90)
    plot(axes)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return _png(buffer.getvalue())


def _curves(groups: dict[str, list[RunReport]]) -> str:
    """D(x) (solid) and D(G(z)) (dashed) over training, the mean over seeds with a band from the lowest to the
    highest seed."""
    import numpy as np

    def plot(axes: Any) -> None:
        for label, seeds in groups.items():
            length = min(len(r.history) for r in seeds)
            steps = [h["iteration"] for h in seeds[0].history[:length]]
            colour = None
            for key, style in (("d_real", "-"), ("d_fake", "--")):
                values = np.array([[h[key] for h in r.history[:length]] for r in seeds])
                line, = axes.plot(steps, values.mean(axis=0), linestyle=style, color=colour,
                                  label=f"{label} {'D(x)' if key == 'd_real' else 'D(G(z))'}")
                colour = line.get_color()
                if len(seeds) > 1:
                    axes.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.15)
        axes.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        axes.set_ylim(0, 1)
        axes.set_xlabel("iteration")
        axes.legend(fontsize=7, ncol=2)

    return _figure(plot)


def _seed_strip(seeds: dict[str, tuple[float, ...]]) -> str:
    """Each measure a rule read, one panel per measure and one row per run: every seed a dot, the mean a bar.
    An outlier seed shows at a glance."""
    by_measure: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for name, values in seeds.items():
        by_measure.setdefault(name.split(": ")[-1], []).append((name, values))

    def strip(rows: list[tuple[str, tuple[float, ...]]]) -> Callable[[Any], None]:
        def plot(axes: Any) -> None:
            for y, (_, values) in enumerate(rows):
                axes.scatter(values, [y] * len(values), s=18, color="#3366aa", zorder=3)
                axes.plot([sum(values) / len(values)] * 2, [y - 0.3, y + 0.3], color="#aa3333", linewidth=2)
            axes.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
            axes.tick_params(axis="x", labelsize=7)
            axes.invert_yaxis()
            axes.grid(axis="x", alpha=0.3)
        return plot

    figures = [_figure(strip(rows), width=5, height=0.5 + 0.28 * len(rows)) for rows in by_measure.values()]
    return f"<div class='grids'>{''.join(figures)}</div>"


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3;text-align:center}.supported{color:#11703a;font-weight:bold}.not-supported{color:#a01c1c;font-weight:bold}
.inconclusive{color:#8a6d00;font-weight:bold}.not-measured{color:#777;font-weight:bold}
.note{background:#fff6d6;border:1px solid #e5cf7a;padding:.8em}
.check{background:#e8eefc;border:1px solid #9db3e6;padding:.8em}
.own{font-size:11px;color:#555;font-style:italic}
.grids{display:flex;flex-wrap:wrap;gap:12px}.grids figure{margin:0}figcaption{font-size:12px;text-align:center}
img{max-width:100%}.wide{overflow-x:auto}.fragile{color:#b35c00;font-size:11px;display:block}
td{overflow-wrap:break-word}.claims{width:100%}.runs{font-size:11px;width:100%}.runs td{padding:2px 3px}
.runs td:nth-child(4){overflow-wrap:anywhere;min-width:9em;text-align:left}"""
HOW_JUDGED = ("Every run is trained with several seeds; each number is the mean ± sd over them. A claim is "
              "<b>supported</b> or <b>not supported</b> only when its tests decide beyond the seeds' spread "
              "(Welch's t-test at 5% between runs; a 95% t-interval against a limit; a 95% interval inside or outside "
              "a margin for 'about the same'); otherwise it is <b>inconclusive</b>. A verdict whose deciding test "
              "is near its threshold (p within 0.01-0.10, an interval edge within 10% of its limit or margin) is "
              "marked <b>fragile</b>: another seed, CPU or fused group may flip it. A run missing, a number "
              "unavailable or a dataset the profile does not train makes a claim <b>not measured</b>. "
              "<i>The source says</i> quotes the project brief's summary of the source's findings (the source "
              "report's own text is not part of this project); blank where the brief states none.")


def _snapshot_grids(groups: dict[str, list[RunReport]]) -> str:
    """Each snapshot beside its final generator, from the same latent vectors (first seed): the eye's check of
    what more iterations changed."""
    figures = []
    for seeds in groups.values():
        pair, run = seeds[0].snapshot_grids, seeds[0].run
        if pair:
            figures += [f"<figure>{_png(Path(path).read_bytes())}<figcaption>{html.escape(run.label)} at {iteration:,}"
                        " iterations</figcaption></figure>"
                        for path, iteration in zip(pair, (run.snapshots[0], run.config["iterations"]), strict=True)]
    return f"<div class='grids'>{''.join(figures)}</div>" if figures else ""


def report_html(study: Study, profile: str, reports: list[RunReport], verdicts: dict[str, Verdict]) -> str:
    """The study's report as one self-contained HTML page (tables by pandas, plots by matplotlib)."""
    chosen = study.profiles[profile]
    groups = _grouped(reports)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(study.title)}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>{esc(study.title)}</h1><p>Study <b>{esc(study.name)}</b>, profile <b>{esc(profile)}</b>: "
             f"{len(groups)} of the {len({run.base for run in study.plan(profile)})} runs it trains finished "
             f"({len(study.runs)} in the study), {chosen.seeds} seed(s) each.</p>"]
    if chosen.machinery_check:
        parts.append("<p class='check'><b>Machinery check.</b> This profile is short and small: its verdicts show "
                     "that every rule runs end to end, they are not findings about the source's claims.</p>")
    notes = [chosen.note] if chosen.note else []
    parts += [f"<p class='note'>{esc(n)}</p>" for n in notes]
    sourced = any(claim.source for claim in study.claims)  # the beyond study quotes no source: no empty column
    parts.append(f"<h2>The claims</h2><p>{HOW_JUDGED}</p><table class='claims'><tr>"
                 + ("<th>the source says</th>" if sourced else "")
                 + "<th>claim, as tested</th><th>verdict</th><th>deciding test, and its margin</th><th>numbers</th>"
                   "</tr>")
    for claim in study.claims:
        verdict = verdicts[claim.id]
        own = "<br><span class='own'>the project's own claim, not the source's</span>" if claim.own else ""
        said = f"<td style='text-align:left'><i>“{esc(claim.source)}”</i></td>" if claim.source else "<td></td>"
        fragile = "<span class='fragile'>fragile</span>" if verdict.fragile else ""
        parts.append(f"<tr>{said if sourced else ''}"
                     f"<td style='text-align:left'>{esc(claim.text)}{own}</td><td class='"
                     f"{verdict.status.replace(' ', '-')}'>"
                     f"{'machinery check: ' if chosen.machinery_check and verdict.status != NOT_MEASURED else ''}"
                     f"{verdict.status}{fragile}</td><td style='text-align:left'>{esc(verdict.deciding)}</td>"
                     f"<td style='text-align:left'>{esc(verdict.evidence)}</td></tr>")
    parts.append("</table>")
    parts.append("<h2>Every run</h2><p>D scores on training and held-out images, scored as D was trained; "
                 "fd_flowers, kd_flowers, precision and recall in the variant's own feature network's space, so each "
                 "variant has a table of its own (numbers of two feature spaces never share a column); fd_effnet "
                 "in the standard space (ImageNet EfficientNet-Lite0, the same for every variant, so it compares "
                 "across tables); FID/KID where Inception weights exist.</p>")
    for variant in sorted({r.run.variant for r in reports}):
        chosen_reports = [r for r in reports if r.run.variant == variant]
        parts.append(f"<h3>{esc(variant)}</h3><div class='wide'>"
                     + runs_table(chosen_reports).to_html(index=False, border=0, na_rep="-", classes="runs")
                     + "</div>")
    parts.append("<p><b>Trained on</b>: " + "; ".join(esc(m) for m in machines(reports)) + ". A run's numbers "
                 "hold for these kernels and its fused group (<i>trained beside</i>); another CPU or group acts "
                 "as another seed.</p>")
    parts += [f"<p><b>{esc(column)} n/a</b>: {esc(reason)}</p>"
              for column, reason in unavailable_reasons(reports).items()]
    noted = {label: seeds[0].run.note for label, seeds in groups.items() if seeds[0].run.note}
    parts += [f"<p><b>{esc(label)}</b>: {esc(note)}</p>" for label, note in noted.items()]
    parts.append("<h2>Samples from the same fixed noise, every seed</h2><div class='grids'>")
    for seeds in groups.values():
        for report in seeds:
            caption = esc(report.run.label) + (f" (<a href='{esc(report.link)}'>MLflow</a>)"
                                               if report.link.startswith("http") else "")
            parts.append(f"<figure>{_png(Path(report.grid).read_bytes())}<figcaption>{caption}</figcaption>"
                         "</figure>")
    parts.append("</div><h2>Each claim's runs</h2>")
    for claim in study.claims:
        shown = {label: groups[label] for label in claim.runs if label in groups}
        if not shown:
            continue
        verdict = verdicts[claim.id]
        strip = _seed_strip(verdict.seeds) if verdict.seeds else ""
        parts.append(f"<h3>{esc(claim.text)}</h3><p><i>{esc(verdict.status)}"
                     f"{' (fragile)' if verdict.fragile else ''}</i>: {esc(verdict.evidence)}</p>{strip}"
                     f"{_curves(shown)}")
    snapshots = _snapshot_grids(groups)
    if snapshots:
        parts.append("<h2>Snapshots against the final generator</h2><p>The same latent vectors at the snapshot and "
                     f"at the end (first seed): what the last iterations changed, by eye.</p>{snapshots}")
    parts.append("<h2>Resolved settings</h2><table><tr><th>run</th><th>settings (architecture defaults filled "
                 "in)</th></tr>")
    for label, seeds in groups.items():
        resolved = asdict(TrainConfig(**seeds[0].run.config).resolved())
        listed = ", ".join(f"{k}={v}" for k, v in resolved.items() if k != "seed")
        parts.append(f"<tr><td>{esc(label)}</td><td style='text-align:left'>{esc(listed)}; seeds "
                     f"{', '.join(str(r.run.config['seed']) for r in seeds)}</td></tr>")
    parts.append("</table><h2>Training timelines</h2><p>The first fixed-noise samples of grids taken during "
                 "training, oldest on top (first seed).</p><div class='grids'>")
    for label, seeds in groups.items():
        if seeds[0].timeline:
            parts.append(f"<figure>{_png(Path(seeds[0].timeline).read_bytes())}<figcaption>{esc(label)}"
                         "</figcaption></figure>")
    parts.append("</div></body></html>")
    return "\n".join(parts)


def findings(study: Study, profile: str, reports: list[RunReport], verdicts: dict[str, Verdict]) -> dict[str, Any]:
    """What the report concludes, as data: each claim's verdict, whether it is fragile, its deciding test, what
    fd_effnet says of it and each seed's values; the machines the runs trained on."""
    def claim_findings(claim: Any) -> dict[str, Any]:
        verdict = verdicts[claim.id]
        return {"id": claim.id, "claim": claim.text, "verdict": verdict.status, "fragile": verdict.fragile,
                "deciding": verdict.deciding, "spaces": verdict.spaces,
                "seeds": {k: list(v) for k, v in verdict.seeds.items()}}

    return {"study": study.name, "profile": profile, "runs": len(_grouped(reports)), "trained_on": machines(reports),
            "claims": [claim_findings(claim) for claim in study.claims]}


def findings_summary(found: dict[str, Any]) -> str:
    """The findings as the README quotes them: one line per verdict, its claims (fragile ones marked)."""
    lines = []
    for status in STATUSES:
        claims = [f"`{c['id']}`" + (" (fragile)" if c["fragile"] else "") for c in found["claims"]
                  if c["verdict"] == status]
        if claims:
            lines.append(f"- {status}: {', '.join(claims)}")
    return "\n".join(lines)
