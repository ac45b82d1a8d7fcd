"""Draws `cargo xtask bench ansible --chart`: wall time per playbook and
runner, one panel per RTT, from the JSON the benchmark writes.

Usage: chart.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(data_path, out_path):
    with open(data_path) as f:
        rows = json.load(f)
    rtts = sorted({r["rtt_ms"] for r in rows})
    playbooks = list(dict.fromkeys(r["playbook"] for r in rows))
    runners = list(dict.fromkeys(r["runner"] for r in rows))
    wall = {(r["rtt_ms"], r["playbook"], r["runner"]): r["wall_s"] for r in rows}

    fig, axes = plt.subplots(1, len(rtts), figsize=(7 * len(rtts), 0.9 * len(playbooks) + 2), sharey=True, squeeze=False)
    height = 0.8 / len(runners)
    for ax, rtt in zip(axes[0], rtts):
        for i, runner in enumerate(runners):
            ys = [p + i * height for p in range(len(playbooks))]
            xs = [wall.get((rtt, name, runner), 0) for name in playbooks]
            bars = ax.barh(ys, xs, height=height, label=runner)
            ax.bar_label(bars, labels=["%.1f" % x if x else "" for x in xs], fontsize=7, padding=2)
        ax.set_title("RTT %d ms" % rtt)
        ax.set_xlabel("wall time, s (median; shorter is better)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks([p + 0.4 - height / 2 for p in range(len(playbooks))])
    axes[0][0].set_yticklabels(playbooks, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("cargo xtask bench ansible")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
