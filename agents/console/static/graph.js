// The run graph (agents as nodes, the tasks they created as edges) and the run's timeline,
// drawn as inline SVG. No library: a layered layout by depth in the run's tree.
"use strict";

(function (RB) {
  const NODE_W = 184, NODE_H = 64, COL_W = 360, ROW_H = 118, PAD = 34;
  const STROKE = {
    completed: "#15803d", "handed off": "#15803d", ok: "#15803d", returned: "#15803d",
    failed: "#dc2626", "dead-lettered": "#dc2626", cancelled: "#dc2626",
    denied: "#c2410c", waiting: "#b45309", running: "#2563eb", user: "#4338ca",
  };
  const EDGE = { failed: "#dc2626", "dead-lettered": "#dc2626", cancelled: "#dc2626",
    denied: "#c2410c", waiting: "#b45309", running: "#2563eb" };
  const FILL = { failed: "#fef2f2", "dead-lettered": "#fef2f2", cancelled: "#fef2f2",
    denied: "#fff7ed", waiting: "#fffbeb", user: "#eef2ff" };
  const edgeColor = (status) => EDGE[status] || "#64748b";
  const s = RB.s;

  function layout(nodes) {
    const columns = new Map();
    for (const node of nodes) {
      if (!columns.has(node.depth)) columns.set(node.depth, []);
      columns.get(node.depth).push(node);
    }
    const depths = [...columns.keys()].sort((a, b) => a - b);
    const tallest = Math.max(1, ...[...columns.values()].map((c) => c.length));
    const at = new Map();
    depths.forEach((depth, col) => {
      const column = columns.get(depth);
      const top = PAD + 24 + ((tallest - column.length) * ROW_H) / 2;
      column.forEach((node, i) => at.set(node.id, { x: PAD + col * COL_W, y: top + i * ROW_H, col }));
    });
    return { at, width: PAD * 2 + (depths.length - 1) * COL_W + NODE_W, height: PAD * 2 + 24 + (tallest - 1) * ROW_H + NODE_H };
  }

  function markers(defs) {
    const colors = new Set(["#64748b", ...Object.values(EDGE)]);
    for (const color of colors) {
      defs.append(s("marker", { id: `arrow-${color.slice(1)}`, viewBox: "0 0 10 10", refX: 9.5, refY: 5,
        markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
        s("path", { d: "M0,0 L10,5 L0,10 z", fill: color })));
    }
  }

  function edgeLabel(edge) {
    const via = edge.fan_out ? `fan-out ×${edge.count}` : edge.count > 1 ? `${edge.via} ×${edge.count}` : edge.via;
    const facts = [RB.fmtMs(edge.duration_ms), RB.fmtCost(edge.cost)].filter((t) => t !== "–");
    const lines = [via, facts.join(" · ")];
    if (edge.attempts > edge.count) lines.push(`${edge.attempts} attempts`);
    if (edge.denied) lines.push("⚠ denied");
    else if (["failed", "dead-lettered", "cancelled"].includes(edge.status)) lines.push(edge.status);
    else if (edge.status === "waiting") lines.push("waiting");
    return lines.filter(Boolean);
  }

  function route(a, b, offset, selfLoop, backward) {
    if (selfLoop) {
      const x = a.x + NODE_W - 30, y = a.y;
      return { d: `M${x},${y} C${x + 10},${y - 70} ${x + 80},${y - 40} ${a.x + NODE_W},${y + 18}`, mid: { x: x + 40, y: y - 46 } };
    }
    if (backward) {
      const x1 = a.x + NODE_W / 2 + offset, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + offset, y2 = b.y + NODE_H;
      const low = Math.max(y1, y2) + 64 + Math.abs(offset);
      return { d: `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2 + 2}`, mid: { x: (x1 + x2) / 2, y: low - 16 } };
    }
    const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2 + offset, x2 = b.x - 2, y2 = b.y + NODE_H / 2 + offset;
    const bend = (x2 - x1) * 0.45;
    const c1 = { x: x1 + bend, y: y1 }, c2 = { x: x2 - bend, y: y2 };
    // the label sits past the middle, where edges leaving one node have spread apart
    const t = 0.6, u = 1 - t, w = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
    const mid = { x: w[0] * x1 + w[1] * c1.x + w[2] * c2.x + w[3] * x2, y: w[0] * y1 + w[1] * c1.y + w[2] * c2.y + w[3] * y2 };
    return { d: `M${x1},${y1} C${c1.x},${c1.y} ${c2.x},${c2.y} ${x2},${y2}`, mid };
  }

  function drawEdge(edge, at, offset, select) {
    const a = at.get(edge.from), b = at.get(edge.to);
    if (!a || !b) return null;
    const color = edgeColor(edge.status);
    const path = route(a, b, offset, edge.from === edge.to, b.col <= a.col && edge.from !== edge.to);
    const width = Math.min(2 + (edge.count - 1) * 1.5, 7);
    const lines = edgeLabel(edge);
    const labelW = Math.max(...lines.map((l) => l.length)) * 6.4 + 16, labelH = lines.length * 14 + 8;
    const g = s("g", { class: `g-edge ${edge.status}${edge.denied ? " denied" : ""}`, "data-id": edge.id,
      "data-from": edge.from, "data-to": edge.to, "data-via": edge.via, "data-status": edge.status,
      "data-count": edge.count },
      s("path", { class: "hit", d: path.d }),
      s("path", { class: "line", d: path.d, stroke: color, "stroke-width": width,
        "marker-end": `url(#arrow-${color.slice(1)})` }),
      s("rect", { class: "label", x: path.mid.x - labelW / 2, y: path.mid.y - labelH / 2, width: labelW,
        height: labelH, rx: 6, stroke: edge.status === "completed" || edge.status === "handed off" ? "#e5e7eb" : color }),
      lines.map((line, i) => s("text", { class: i === 0 ? "via" : "", x: path.mid.x, "text-anchor": "middle",
        y: path.mid.y - labelH / 2 + 15 + i * 14, fill: i > 1 && edge.status !== "completed" ? color : undefined }, line)));
    g.addEventListener("click", (e) => { e.stopPropagation(); select("edge", edge, g); });
    return g;
  }

  function drawNode(node, p, select) {
    const isUser = node.kind === "user";
    const status = isUser ? "user" : node.denied && node.status !== "failed" ? "denied" : node.status;
    const stroke = STROKE[status] || "#64748b";
    const name = isUser ? node.id.replace(/^user:/, "") : node.id;
    const sub1 = isUser ? "user · submitted the run"
      : `${node.tasks} task${node.tasks === 1 ? "" : "s"}${node.cost ? " · " + RB.fmtCost(node.cost) : ""}`;
    const sub2 = isUser ? "" : node.attempts > node.tasks ? `${node.status} · ${node.attempts} attempts` : node.status;
    const g = s("g", { class: `g-node ${status}`, "data-agent": node.id, "data-status": node.status,
      transform: `translate(${p.x},${p.y})` },
      s("rect", { class: "box", width: NODE_W, height: NODE_H, rx: isUser ? NODE_H / 2 : 10,
        stroke, style: `fill:${FILL[status] || "#fff"}` }),
      isUser ? null : s("rect", { x: 0, y: 0, width: 7, height: NODE_H, rx: 3, fill: stroke }),
      s("text", { class: "name", x: isUser ? NODE_W / 2 : 18, y: 24, "text-anchor": isUser ? "middle" : "start" },
        name),
      s("text", { class: "sub", x: isUser ? NODE_W / 2 : 18, y: 42, "text-anchor": isUser ? "middle" : "start" }, sub1),
      sub2 ? s("text", { class: "sub", x: 18, y: 57, fill: stroke }, sub2) : null,
      node.denied ? s("g", { transform: `translate(${NODE_W - 62},-10)` },
        s("rect", { width: 60, height: 20, rx: 10, fill: "#c2410c" }),
        s("text", { x: 30, y: 14, "text-anchor": "middle", fill: "#fff", "font-size": 11, "font-weight": 700 }, "denied")) : null);
    g.addEventListener("click", (e) => { e.stopPropagation(); select("node", node, g); });
    return g;
  }

  // draws into `holder`; `onSelect(kind, item)` when a node or edge is clicked
  RB.drawGraph = (holder, graph, onSelect, selectedId) => {
    holder.replaceChildren();
    const { at, width } = layout(graph.nodes);
    const col = (id) => (at.get(id) || { col: 0 }).col;
    const loops = graph.edges.some((e) => e.from === e.to || col(e.to) <= col(e.from));
    const height = layout(graph.nodes).height + (loops ? 110 : 0);
    const svg = s("svg", { id: "run-graph", width, height, viewBox: `0 0 ${width} ${height}`,
      role: "img", "aria-label": "run graph" });
    const defs = s("defs");
    markers(defs);
    svg.append(defs);
    const select = (kind, item, g) => {
      svg.querySelectorAll(".selected").forEach((el) => el.classList.remove("selected"));
      g.classList.add("selected");
      onSelect(kind, item);
    };
    const pairs = new Map();
    for (const edge of graph.edges) {
      const key = [edge.from, edge.to].sort().join("→");
      pairs.set(key, [...(pairs.get(key) || []), edge]);
    }
    const edgeLayer = s("g", { class: "edges" });
    for (const group of pairs.values()) {
      group.forEach((edge, i) => {
        const g = drawEdge(edge, at, (i - (group.length - 1) / 2) * 16, select);
        if (g) { edgeLayer.append(g); if (edge.id === selectedId) g.classList.add("selected"); }
      });
    }
    const nodeLayer = s("g", { class: "nodes" });
    for (const node of graph.nodes) {
      const g = drawNode(node, at.get(node.id), select);
      if (node.id === selectedId) g.classList.add("selected");
      nodeLayer.append(g);
    }
    svg.append(edgeLayer, nodeLayer);
    holder.append(svg);
    return svg;
  };

  RB.graphLegend = () => RB.h("div", { class: "legend" },
    [["#64748b", "completed"], ["#2563eb", "running"], ["#b45309", "waiting (signal)"],
      ["#c2410c", "denied"], ["#dc2626", "failed / dead-lettered"]].map(([c, t]) =>
      RB.h("span", {}, RB.h("i", { style: `background:${c}` }), t)),
    RB.h("span", {}, "thicker edge = more tasks (fan-out); click a node or an edge for its tasks, timings and chain"));

  function niceStep(span) {
    const raw = span / 6, mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    return [1, 2, 5, 10].map((m) => m * mag).find((v) => v >= raw) || raw;
  }

  // one row per task: queued (light), running (status colour), its calls as ticks
  RB.drawTimeline = (holder, tasks, runStart, runEnd) => {
    holder.replaceChildren();
    if (!tasks.length) { holder.append(RB.h("p", { class: "hint" }, "no tasks yet")); return; }
    const rows = [...tasks].sort((a, b) => a.started - b.started);
    const now = Date.now() / 1000;
    const t0 = Math.min(runStart || Infinity, ...rows.map((t) => t.started - t.queued_ms / 1000));
    const t1 = Math.max(runEnd || 0, ...rows.map((t) => t.ended || now));
    const LABEL = 230, W = Math.max(640, (holder.clientWidth || 1100) - LABEL - 30), RH = 24;
    const x = (t) => LABEL + ((t - t0) / Math.max(t1 - t0, 1e-3)) * W;
    const height = rows.length * RH + 34;
    const svg = s("svg", { id: "run-timeline", width: LABEL + W + 20, height });
    const spanMs = (t1 - t0) * 1000, step = niceStep(spanMs);
    for (let ms = 0; ms <= spanMs + 1e-9; ms += step) {
      const px = x(t0 + ms / 1000);
      svg.append(s("line", { x1: px, x2: px, y1: 0, y2: height - 18, stroke: "#eef0f3" }),
        s("text", { x: px, y: height - 4, "text-anchor": "middle", "font-size": 11, fill: "#6b7280" }, RB.fmtMs(ms)));
    }
    rows.forEach((task, i) => {
      const y = i * RH + 4, color = STROKE[task.status] || "#64748b";
      const start = task.started, end = task.ended || now;
      svg.append(
        s("text", { x: 6, y: y + 14, "font-size": 12, fill: "#374151" }, `${task.agent} [${task.via}]`),
        s("rect", { x: x(start - task.queued_ms / 1000), y: y + 4, width: Math.max(1, x(start) - x(start - task.queued_ms / 1000)),
          height: 12, fill: "#e5e7eb", rx: 2 }, s("title", {}, `queued ${RB.fmtMs(task.queued_ms)}`)),
        s("rect", { class: "bar", "data-task": task.task_id, x: x(start), y: y + 2, width: Math.max(2, x(end) - x(start)),
          height: 16, rx: 3, fill: color, "fill-opacity": task.ended ? 0.85 : 0.45 },
        s("title", {}, `${task.agent}: ${task.status}, ${RB.fmtMs(task.duration_ms)}, ${task.attempts} attempt(s), ${RB.fmtCost(task.cost)}`)));
      for (const call of task.calls) {
        svg.append(s("rect", { x: x(call.time - call.latency_ms / 1000), y: y + 6, height: 8, rx: 1,
          width: Math.max(2, (call.latency_ms / 1000 / Math.max(t1 - t0, 1e-3)) * W),
          fill: call.error ? "#7f1d1d" : "#111827", "fill-opacity": 0.55 },
          s("title", {}, `${call.kind} ${call.name} ${RB.fmtMs(call.latency_ms)} ${RB.fmtCost(call.cost)} ${call.error || ""}`)));
      }
    });
    holder.append(svg);
  };
})(window.RB);
