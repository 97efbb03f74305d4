"""A workflow's step graph as data, as text, and as a PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import networkx as nx
from rich.table import Table

from agentrt.graph import END, CompiledWorkflow

KIND_COLORS = {"llm": "#8ecae6", "tool": "#ffb703", "python": "#cdb4db", "end": "#d9d9d9"}


def _edge_label(wf: CompiledWorkflow, u: str, v: str, data: dict) -> str:
    kind = data["kind"]
    if kind == "fan_out":
        fan = wf.fan_outs[u]
        return f"for each {fan.item} in {fan.over}"
    if (u, v) in wf.loop_edges:
        return f"loop ≤{wf.branches[u].max_loops}×"
    return {"branch": "if", "join": "join"}.get(kind, "")


def describe(wf: CompiledWorkflow) -> dict[str, Any]:
    g = wf.graph
    steps = [{"name": n, **{k: v for k, v in g.nodes[n].items() if v is not None}} for n in wf.steps]
    edges = [{"from": u, "to": v, "kind": d["kind"], "label": _edge_label(wf, u, v, d)} for u, v, d in g.edges(data=True)]
    analysis = wf.analysis
    return {"workflow": wf.name, "state": wf.state.__name__, "entry": wf.entry, "output": wf.output,
            "agents": {a.name: {"tools": [t.name for t in a.tools], "max_turns": a.max_turns}
                       for a in wf.agents.values()},
            "tools": {t.name: {"expected_duration": t.expected_duration, "timeout": t.timeout,
                               "retries": t.retries} for t in wf.tools.values()},
            "steps": steps, "edges": edges,
            "steps_to_execution_from_start": analysis.steps_to_execution([wf.entry]),
            "expected_turns_from_start": round(analysis.expected_remaining_turns([wf.entry]), 3)}


def render_text(wf: CompiledWorkflow, info: dict[str, Any]) -> Table:
    table = Table(title=f"{wf.name} · state {wf.state.__name__} · starts at {wf.entry}", title_justify="left")
    for col in ("step", "kind", "agent / tool", "then"):
        table.add_column(col)
    by_source: dict[str, list[str]] = {}
    for e in info["edges"]:
        target = "END" if e["to"] == END else e["to"]
        by_source.setdefault(e["from"], []).append(f"{target} ({e['label']})" if e["label"] else target)
    for s in info["steps"]:
        who = s.get("agent") or s.get("tool") or ""
        table.add_row(s["name"], s["kind"], who, ", ".join(by_source.get(s["name"], [])))
    dist = ", ".join(f"{a} {d}" for a, d in sorted(info["steps_to_execution_from_start"].items(), key=lambda x: x[1]))
    table.caption = f"steps to each agent's first turn: {dist} · expected agent turns: {info['expected_turns_from_start']}"
    return table


def _layers(wf: CompiledWorkflow) -> dict[str, int]:
    """Rows of the drawing: each step's distance from the start."""
    return nx.single_source_shortest_path_length(wf.graph, wf.entry)


def draw_png(wf: CompiledWorkflow, path: Path) -> None:
    """Steps top to bottom in graph order, coloured by kind; loops drawn curved."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = wf.graph
    layers = _layers(wf)
    by_layer: dict[int, list[str]] = {}
    for node, layer in layers.items():
        by_layer.setdefault(layer, []).append(node)
    pos = {n: (i - (len(nodes) - 1) / 2, -layer) for layer, nodes in by_layer.items() for i, n in enumerate(nodes)}
    width = max(6.0, 2.4 * max(len(nodes) for nodes in by_layer.values()))
    fig, ax = plt.subplots(figsize=(width, 1.4 * (max(layers.values()) + 1) + 1))
    labels = {n: "END" if n == END else f"{n}\n[{g.nodes[n].get('agent') or g.nodes[n].get('tool') or g.nodes[n]['kind']}]"
              for n in g}
    colors = [KIND_COLORS[g.nodes[n]["kind"]] for n in g]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=2600, node_shape="s")
    nx.draw_networkx_labels(g, pos, labels, ax=ax, font_size=8)
    straight = [e for e in g.edges if e not in wf.loop_edges]
    nx.draw_networkx_edges(g, pos, edgelist=straight, ax=ax, arrows=True, node_size=2600, arrowsize=14)
    nx.draw_networkx_edges(g, pos, edgelist=list(wf.loop_edges), ax=ax, arrows=True, node_size=2600,
                           connectionstyle="arc3,rad=0.6", edge_color="#c1121f", style="dashed")
    edge_labels = {(u, v): _edge_label(wf, u, v, d) for u, v, d in g.edges(data=True) if _edge_label(wf, u, v, d)}
    nx.draw_networkx_edge_labels(g, pos, edge_labels, ax=ax, font_size=7)
    ax.set_title(f"{wf.name} (agent step graph)")
    ax.axis("off")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc}") from None
    finally:
        plt.close(fig)
