"""Report plots (matplotlib, headless): memory at the peak, a policy's saving, step time per phase,
and what IST learned (importance over steps, selection frequency per layer)."""

from __future__ import annotations

import json

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ist_bench.report.cells import column  # noqa: E402
from ist_bench.report.frame import MODEL_ORDER, column_key, select, unit_free  # noqa: E402
from ist_bench.results import model_label  # noqa: E402
from ist_bench.safeio import save_figure  # noqa: E402

GiB = 1 << 30
PARTS = (("weights", "weights", "#4c72b0"), ("activations", "activations", "#dd8452"),
         ("gradients", "gradients", "#55a868"), ("optimizer", "optimizer state", "#c44e52"),
         ("method_state", "method state", "#8172b3"), ("temporary", "temporaries", "#937860"),
         ("overhead", "rounding + workspace", "#bbbbbb"))


def _save(fig, path) -> str:
    fig.tight_layout()
    save_figure(fig, path, dpi=110, metadata={"Software": None})   # atomic; no version stamp: same rows, same bytes
    plt.close(fig)
    return str(path)


def breakdown(frame, backend: str, path) -> str | None:
    """Stacked bars: what is live at the steady step's peak, per model x method (+ policy)."""
    sub = select(frame, "memory", backend, ok=True)
    sub = sub[sub["at peak: weights (GiB)"].notna()]
    if sub.empty:
        return None
    models = [m for m in MODEL_ORDER if m in set(sub["model"])] + sorted(set(sub["model"]) - set(MODEL_ORDER))
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models) + 1.5, 4.2), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        cells = sub[sub["model"] == model].drop_duplicates("column", keep="last").set_index("column")
        names = sorted(cells.index, key=column_key)
        bottom = np.zeros(len(names))
        for key, label, color in PARTS:
            vals = [cells.at[n, f"at peak: {key} (GiB)"] for n in names]
            ax.bar(range(len(names)), vals, bottom=bottom, color=color, label=label, width=0.75)
            bottom += np.array(vals)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("GiB at the steady peak" if ax is axes[0][0] else "")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"What is live at the steady step's peak ({backend}: "
                 f"{'max_memory_allocated' if backend == 'cuda' else 'estimate of max_memory_allocated' if backend == 'sim' else 'tensor peak'})",
                 fontsize=11)
    return _save(fig, path)


def savings(table, path, figure: str = "allocated peak (GiB)", backend: str = "") -> str | None:
    """Bars: the % of peak memory a policy saves against its method without selection, ours and the paper's."""
    if table is None or table.empty:
        return None
    labels = [f"{m}\n{cell}" for m, cell in zip(table["model"], table["cell"], strict=True)]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(labels) + 2), 4))
    ax.bar(x - 0.2, table["saving %"], width=0.4, label="ours", color="#4c72b0")
    if "paper saving %" in table:   # no bar where the paper has no number (not a bar of 0)
        ax.bar(x + 0.2, table["paper saving %"], width=0.4, label="paper (Table 1)", color="#dd8452")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("peak memory saved, %")
    ax.axhline(0, color="black", lw=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Peak memory a layer-selection policy saves against the same method without it\n"
                 f"({unit_free(figure)}, steady-state bound, {backend})", fontsize=10)
    return _save(fig, path)


def step_time(frame, path) -> str | None:
    """Stacked bars: mean ms per iteration in each phase (importance forwards spread over iterations)."""
    ok = select(frame, "time", ok=True)
    if ok.empty:
        return None
    names = list(ok["column"])
    parts = (("forward ms (mean)", "forward", "#4c72b0"), ("backward ms (mean)", "backward", "#dd8452"),
             ("optimizer ms (mean)", "optimizer", "#55a868"), ("importance ms/iter", "importance forwards", "#c44e52"))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) + 2.5), 4))
    bottom = np.zeros(len(names))
    for key, label, color in parts:
        vals = ok[key].fillna(0).to_numpy(dtype=float)
        ax.bar(range(len(names)), vals, bottom=bottom, label=label, color=color, width=0.6)
        bottom += vals
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per iteration (mean)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, bottom.max() * 1.3)
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    gpu = ok["gpu"].dropna().iloc[0] if ok["gpu"].notna().any() else ok["backend"].iloc[0]
    ax.set_title(f"Time per iteration by phase ({gpu})", fontsize=10)
    return _save(fig, path)


NO_RUN = "no IST run of 20 steps or more with importance rounds"
MIN_REWARD = 1e-3   # below it IST's rewards are noise (docs/reports.md, "What IST learned")


def importance_run(rows: list[dict]) -> tuple[dict | None, str]:
    """The IST run whose importance is worth a plot, or None and why not. A plot of importance says
    which layers mattered; it is drawn only when the rewards carry signal: a run of at least 20 steps
    with importance rounds whose largest |reward| reaches MIN_REWARD. Rewards are exp(-loss) minus the
    round's mean, so a model at chance level (the zoo's random weights: loss near ln(vocabulary), about
    10-11) gives rewards near 1e-5 whatever the layers, and sim's losses have no values (all 0)."""
    runs = [r for r in rows if r["status"] == "ok" and (r.get("selection") or {}).get("rounds")
            and len(r["selection"].get("history") or []) >= 20]   # a memory case's few steps say nothing
    if not runs:
        return None, NO_RUN
    run = max(runs, key=lambda r: (len(r["selection"]["history"]), json.dumps(r, sort_keys=True)))
    rounds = run["selection"]["rounds"]
    top = max((abs(x) for rd in rounds for x in rd.get("rewards") or []), default=0.0)
    losses = [x for rd in rounds for x in rd.get("losses") or []]
    where = f"{model_label(run['case']['model'])} {column(run['case'])} on {run['backend']}"
    if top < MIN_REWARD:
        loss = f", losses {min(losses):.2f}-{max(losses):.2f}" if losses and max(losses) else ""
        return None, (f"the largest |reward| of {where} is {top:.1e} < {MIN_REWARD:g}{loss}: on the zoo's random "
                      f"weights suppressing layers does not change the loss, so the importance is noise")
    return run, f"{where}, {len(rounds)} importance rounds, largest |reward| {top:.1e}"


def importance(rows: list[dict], path) -> str | None:
    """For the IST run with the most steps, when its rewards carry signal (importance_run): importance
    of each layer over steps, and how often each layer was selected."""
    run, why = importance_run(rows)
    if run is None:
        return None
    hist = [h for h in run["selection"]["history"] if "importance" in h]
    imp = np.array([h["importance"] for h in hist]).T
    n_layers = imp.shape[0]
    freq = np.zeros(n_layers)
    for h in hist:
        for i in (h["active"] if h["active"] is not None else range(n_layers)):
            freq[i] += 1
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    lim = max(1e-9, float(np.abs(imp).max()))
    im = a.imshow(imp, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower",
                  extent=(hist[0]["step"] - 0.5, hist[-1]["step"] + 0.5, -0.5, n_layers - 0.5))
    a.set_xlabel("step")
    a.set_ylabel("layer")
    a.set_title(f"{run['selection']['policy']['name']} importance over steps\n({why})", fontsize=9)
    fig.colorbar(im, ax=a, fraction=0.04)
    b.barh(range(n_layers), freq / len(hist), color="#4c72b0")
    b.set_ylim(-0.5, n_layers - 0.5)
    b.set_xlabel("fraction of steps selected")
    for axis in (a.yaxis, b.yaxis):
        axis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    b.set_title("selection frequency", fontsize=10)
    return _save(fig, path)


def fit_curves(model: str, target, answers, path) -> str:
    """Estimated peak (plus the margin) against sequence length per method, with the usable memory."""
    from ist_bench.fit import margin

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for a in answers:
        xs = sorted(int(k) for k in a.probes)
        ys = [(a.probes[str(x)] + margin(a.probes[str(x)], a.method)) / GiB for x in xs]
        ax.plot(xs, ys, marker="o", ms=3, label=a.label)
    ax.axhline(target.usable / GiB, color="black", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], target.usable / GiB, f"  usable: {target.note}", va="bottom", fontsize=7)
    ax.set_xlabel("sequence length (tokens, batch 1)")
    ax.set_ylabel("estimated peak + margin, GiB")
    ax.set_title(f"{model}: what fits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
