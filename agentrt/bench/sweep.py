"""`agentrt bench workflows --rates R1,R2,...`: the same benchmark at several arrival rates, one
report per rate; a table of mean JCT per policy and rate, and a plot of mean JCT against the
arrival rate (log scale) per policy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--rates takes comma-separated programs/s, e.g. 0.05,0.1,0.2; got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise ValueError(f"--rates: every rate must be > 0 programs/s; got {text!r}")
    return sorted(set(rates))


def heaviest_sustained(reports: list[dict[str, Any]], policy: str = "lru") -> dict[str, Any] | None:
    """The report of the heaviest rate at which `policy` kept up with its arrivals (its JCT
    growth, agentrt.bench.metrics.jct_growth, at most GROWTH_SUSTAINED), or None."""
    from agentrt.bench.metrics import GROWTH_SUSTAINED
    kept = [r for r in reports if policy in r["policies"]
            and (g := r["policies"][policy]["median"].get("jct_growth")) is not None and g <= GROWTH_SUSTAINED]
    return max(kept, key=lambda r: r["settings"]["rate"], default=None)


def render_sweep(reports: list[dict[str, Any]]) -> Table:
    from agentrt.bench.metrics import GROWTH_SUSTAINED
    first = reports[0]
    policies = list(first["policies"])
    heaviest = heaviest_sustained(reports)
    caption = ["vs lru: lru's mean JCT / agentrt's at that rate; recompute: agentrt's over Bélády's",
               "lru growth: the mean JCT of lru's last fifth of arrivals over its second fifth's; "
               f"≤ {GROWTH_SUSTAINED:g}: lru keeps up (*: the heaviest such rate, where the targets are read)",
               "floor: the mean JCT of every program alone with a cache that loses nothing (no policy can beat it); "
               "bound: lru's mean JCT / floor, the most any policy can gain on lru"]
    if heaviest is not None:
        caption += [f"targets at {heaviest['settings']['rate']:g} programs/s:"]
        caption += [f"  {t['target']}: {_target_text(t)}" for t in heaviest.get("targets", [])]
    table = Table(title=f"agentrt bench workflows · {first['describe']} · {first['model']} · mean JCT s by arrival "
                        f"rate (median of {first['settings']['runs']} run(s))", title_style="bold",
                  caption="\n".join(caption), caption_justify="left")
    table.add_column("programs/s", justify="right")
    for p in policies:
        table.add_column(p, justify="right")
    for name in ("agentrt vs lru", "agentrt × Bélády", "lru growth", "floor", "bound"):
        table.add_column(name, justify="right")
    for rep in reports:
        med = {p: e["median"] for p, e in rep["policies"].items()}
        ratio = rep["vs_lru_mean_jct"].get("agentrt")
        belady = med.get("agentrt", {}).get("belady_ratio")
        growth = med.get("lru", {}).get("jct_growth")
        floor = rep.get("floor_mean_jct_s")
        bound = med["lru"]["mean_jct_s"] / floor if floor and "lru" in med else None
        mark = "*" if rep is heaviest else ""
        table.add_row(f"{rep['settings']['rate']:g}{mark}", *(f"{med[p]['mean_jct_s']:.1f}" for p in policies),
                      "—" if ratio is None else f"{ratio:.2f}×", "—" if belady is None else f"{belady:.2f}",
                      "—" if growth is None else f"{growth:.2f}", "—" if floor is None else f"{floor:.1f}",
                      "—" if bound is None else f"{bound:.2f}×")
    return table


def _target_text(t: dict[str, Any]) -> str:
    ratio = "—" if t["ratio"] is None else f"{t['ratio']:.2f}"
    return f"{ratio} ({'met' if t['met'] else 'missed' if t['met'] is False else 'n/a'})"


def plot_sweep(reports: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rates = [r["settings"]["rate"] for r in reports]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy in reports[0]["policies"]:
        ax.plot(rates, [r["policies"][policy]["median"]["mean_jct_s"] for r in reports], marker="o", label=policy)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate, programs/s")
    ax.set_ylabel("mean JCT, s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or reports[0]["describe"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
