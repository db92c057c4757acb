"""Memory timelines drawn side by side (one panel each, one y scale): where sim and the GPU part."""

from __future__ import annotations

from pathlib import Path

GiB = 1 << 30
COLORS = {"workspace": "#5a5a5a", "weights": "#9e9e9e", "optimizer": "#8e6bbf", "method_state": "#c9a0dc",
          "gradients": "#e8a33d", "activations": "#4c8dd6", "temporary": "#7fc97f", "scratch": "#d62728"}
# the phase each mark opens, and its shade
PHASES = {"importance_start": ("importance", "#f2d600"), "start": ("forward", "#4c8dd6"),
          "forward": ("backward", "#e8a33d"), "backward": ("optimizer", "#8e6bbf")}


def plot_timelines(timelines: list, path: str | Path) -> Path:
    """Stacked live bytes by category over the tracker's clock, phases shaded, the peak marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(timelines), figsize=(7 * len(timelines), 4.2), sharey=True, squeeze=False)
    top = max(max(t.peak, *(sum(v[i] for v in t.live.values()) for i in range(len(t.clock)))) for t in timelines)
    for ax, tl in zip(axes[0], timelines, strict=True):
        cats = [c for c in COLORS if any(tl.live.get(c, []))]
        if tl.workspace:
            tl.live["workspace"] = [tl.workspace] * len(tl.clock)
            cats = ["workspace"] + cats
        ax.stackplot(tl.clock, *[[b / GiB for b in tl.live[c]] for c in cats], labels=cats,
                     colors=[COLORS[c] for c in cats], step="post", linewidth=0)
        shown = set()
        for i, (phase, step, clock) in enumerate(tl.phases):
            nxt = tl.phases[i + 1][2] if i + 1 < len(tl.phases) else (tl.clock[-1] if tl.clock else clock)
            if phase in PHASES:
                name, color = PHASES[phase]
                ax.axvspan(clock, nxt, color=color, alpha=0.10, linewidth=0,
                           label=None if name in shown else f"phase: {name}")
                shown.add(name)
            if phase in ("start", "importance_start") and (phase, step) not in shown:
                shown.add((phase, step))
                ax.text(clock, top / GiB * 1.1, f"{'imp.' if phase != 'start' else 'step'} {step}", fontsize=6,
                        va="top")
        ax.axhline(tl.peak / GiB, color="k", linestyle="--", linewidth=0.8)
        what = "max_memory_allocated" if tl.backend == "cuda" else "estimated allocated peak"
        ax.text(tl.clock[0] if tl.clock else 0, tl.peak / GiB, f" {what} {tl.peak / GiB:.2f} GiB", fontsize=7,
                va="bottom")
        if tl.peak_clock is not None:
            ax.axvline(tl.peak_clock, color="#d62728", linewidth=0.6)
        ax.set_title(f"{tl.label} · {tl.backend}", fontsize=9)
        ax.set_xlabel("tracker events (tensor births and deaths)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("live GiB (allocator blocks)", fontsize=8)
    axes[0][0].set_ylim(0, top / GiB * 1.15)
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    from ist_bench.safeio import save_figure

    save_figure(fig, path, dpi=130, metadata={"Software": None})   # atomic; no version stamp
    plt.close(fig)
    return Path(path)
