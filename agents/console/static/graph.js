// The run graph (agents as nodes, the tasks they created as edges), drawn as inline SVG. No
// library: a layered layout by depth in the run's tree — left to right when the box is wide
// enough, top to bottom when it is not — scaled to fit its box (it scrolls inside its own box
// only past MIN_SCALE). Statuses, notes and counts come from the server (graph.py).
"use strict";

(function (RB) {
  const NODE_W = 184, NODE_H = 64, PAD = 34, TOP = 24;
  const COL_W = 360, ROW_H = 118; // left to right: columns by depth
  const LAYER_H = 170, SIB_W = 240; // top to bottom: rows by depth
  const LOOP_ROOM = 110; // edges back to an earlier depth run around the nodes
  const MIN_SCALE = 0.5;
  const STROKE = {
    completed: "#15803d", "handed off": "#15803d", ok: "#15803d", returned: "#15803d",
    failed: "#dc2626", "dead-lettered": "#dc2626", cancelled: "#dc2626",
    denied: "#c2410c", waiting: "#b45309", running: "#2563eb", user: "#4338ca",
  };
  const EDGE = { failed: "#dc2626", "dead-lettered": "#dc2626", cancelled: "#dc2626",
    denied: "#c2410c", waiting: "#b45309", running: "#2563eb" };
  const FILL = { failed: "#fef2f2", "dead-lettered": "#fef2f2", cancelled: "#fef2f2",
    denied: "#fff7ed", waiting: "#fffbeb", user: "#eef2ff" };
  const REFUSED = "#c2410c";
  const edgeColor = (status) => EDGE[status] || "#64748b";
  const s = RB.s;
  RB.STATUS_COLOR = STROKE;

  // where each node goes; `vertical`: depths as rows instead of columns
  function layout(nodes, edges, vertical) {
    const layers = new Map();
    for (const node of nodes) {
      if (!layers.has(node.depth)) layers.set(node.depth, []);
      layers.get(node.depth).push(node);
    }
    const depths = [...layers.keys()].sort((a, b) => a - b);
    const widest = Math.max(1, ...[...layers.values()].map((c) => c.length));
    const at = new Map();
    depths.forEach((depth, col) => {
      const layer = layers.get(depth);
      layer.forEach((node, i) => at.set(node.id, vertical
        ? { x: PAD + ((widest - layer.length) * SIB_W) / 2 + i * SIB_W, y: PAD + TOP + col * LAYER_H, col }
        : { x: PAD + col * COL_W, y: PAD + TOP + ((widest - layer.length) * ROW_H) / 2 + i * ROW_H, col }));
    });
    const col = (id) => (at.get(id) || { col: 0 }).col;
    const loops = edges.some((e) => e.from === e.to || col(e.to) <= col(e.from));
    const across = (depths.length - 1), along = (widest - 1);
    const width = vertical ? PAD * 2 + along * SIB_W + NODE_W + (loops ? LOOP_ROOM : 0)
      : PAD * 2 + across * COL_W + NODE_W;
    const height = vertical ? PAD * 2 + TOP + across * LAYER_H + NODE_H + (loops ? 70 : 0)
      : PAD * 2 + TOP + along * ROW_H + NODE_H + (loops ? LOOP_ROOM : 0);
    return { at, width, height, vertical };
  }

  // the layout that reads best in `room` pixels: left to right unless that must shrink a lot
  // more than top to bottom; then the scale that makes it fit
  function fit(graph, room) {
    const wide = layout(graph.nodes, graph.edges, false), tall = layout(graph.nodes, graph.edges, true);
    const scaleOf = (l) => Math.min(1, room / l.width);
    const chosen = scaleOf(wide) >= 0.8 || scaleOf(wide) >= scaleOf(tall) ? wide : tall;
    return { ...chosen, scale: Math.max(MIN_SCALE, scaleOf(chosen)) };
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
    const lines = [via, facts.join(" · "), ...edge.notes.map((n) => n.endsWith("refused") ? `⚠ ${n}` : n)];
    if (["failed", "dead-lettered", "cancelled", "denied", "stopped", "waiting"].includes(edge.status)) lines.push(edge.status);
    return lines.filter(Boolean);
  }

  const bezier = (p, t) => {
    const u = 1 - t, w = [u * u * u, 3 * u * u * t, 3 * u * t * t, t * t * t];
    return { x: p.reduce((sum, q, i) => sum + w[i] * q.x, 0), y: p.reduce((sum, q, i) => sum + w[i] * q.y, 0) };
  };
  const curve = (p) => `M${p[0].x},${p[0].y} C${p[1].x},${p[1].y} ${p[2].x},${p[2].y} ${p[3].x},${p[3].y}`;

  function route(a, b, offset, vertical) {
    if (a === b) { // a task of an agent that created another of the same agent
      const x = a.x + NODE_W - 30, y = a.y;
      return { d: `M${x},${y} C${x + 10},${y - 70} ${x + 80},${y - 40} ${a.x + NODE_W},${y + 18}`, mid: { x: x + 40, y: y - 46 } };
    }
    if (b.col <= a.col) { // back to an earlier (or the same) depth: around the nodes
      if (vertical) {
        const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2 + offset, x2 = b.x + NODE_W, y2 = b.y + NODE_H / 2 + offset;
        const far = Math.max(x1, x2) + 64 + Math.abs(offset);
        return { d: `M${x1},${y1} C${far},${y1} ${far},${y2} ${x2 + 2},${y2}`, mid: { x: far - 20, y: (y1 + y2) / 2 } };
      }
      const x1 = a.x + NODE_W / 2 + offset, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + offset, y2 = b.y + NODE_H;
      const low = Math.max(y1, y2) + 64 + Math.abs(offset);
      return { d: `M${x1},${y1} C${x1},${low} ${x2},${low} ${x2},${y2 + 2}`, mid: { x: (x1 + x2) / 2, y: low - 16 } };
    }
    let p;
    if (vertical) {
      const x1 = a.x + NODE_W / 2 + offset, y1 = a.y + NODE_H, x2 = b.x + NODE_W / 2 + offset, y2 = b.y - 2;
      const bend = (y2 - y1) * 0.45;
      p = [{ x: x1, y: y1 }, { x: x1, y: y1 + bend }, { x: x2, y: y2 - bend }, { x: x2, y: y2 }];
    } else {
      const x1 = a.x + NODE_W, y1 = a.y + NODE_H / 2 + offset, x2 = b.x - 2, y2 = b.y + NODE_H / 2 + offset;
      const bend = (x2 - x1) * 0.45;
      p = [{ x: x1, y: y1 }, { x: x1 + bend, y: y1 }, { x: x2 - bend, y: y2 }, { x: x2, y: y2 }];
    }
    // the label sits past the middle, where edges leaving one node have spread apart
    return { d: curve(p), mid: bezier(p, vertical ? 0.55 : 0.6) };
  }

  function drawEdge(edge, at, offset, select, vertical) {
    const a = at.get(edge.from), b = at.get(edge.to);
    if (!a || !b) return null;
    const color = edgeColor(edge.status);
    const path = route(a, b, offset, vertical);
    const width = Math.min(2 + (edge.count - 1) * 1.5, 7);
    const lines = edgeLabel(edge);
    const labelW = Math.max(...lines.map((l) => l.length)) * 6.4 + 16, labelH = lines.length * 14 + 8;
    const plain = edge.status === "completed" || edge.status === "handed off";
    const g = s("g", { class: `g-edge ${edge.status}${edge.refused ? " refused" : ""}`, "data-id": edge.id,
      "data-from": edge.from, "data-to": edge.to, "data-via": edge.via, "data-status": edge.status,
      "data-count": edge.count, "data-refused": edge.refused },
      s("path", { class: "hit", d: path.d }),
      s("path", { class: "line", d: path.d, stroke: color, "stroke-width": width,
        "marker-end": `url(#arrow-${color.slice(1)})` }),
      s("rect", { class: "label", x: path.mid.x - labelW / 2, y: path.mid.y - labelH / 2, width: labelW,
        height: labelH, rx: 6, stroke: plain ? (edge.refused ? REFUSED : "#e5e7eb") : color }),
      lines.map((line, i) => s("text", { class: i === 0 ? "via" : "", x: path.mid.x, "text-anchor": "middle",
        y: path.mid.y - labelH / 2 + 15 + i * 14,
        fill: i > 1 ? (line.startsWith("⚠") ? REFUSED : plain ? undefined : color) : undefined }, line)));
    g.addEventListener("click", (e) => { e.stopPropagation(); select("edge", edge, g); });
    return g;
  }

  function drawNode(node, p, select) {
    const isUser = node.kind === "user";
    const status = isUser ? "user" : node.status;
    const stroke = STROKE[status] || "#64748b";
    const name = isUser ? node.id.replace(/^user:/, "") : node.id;
    const sub1 = isUser ? "user · submitted the run"
      : `${node.tasks} task${node.tasks === 1 ? "" : "s"}${node.cost ? " · " + RB.fmtCost(node.cost) : ""}`;
    const sub2 = isUser ? "" : [node.status, ...node.notes.filter((n) => !n.endsWith("refused"))].join(" · ");
    const badge = node.refused ? `${node.refused} refused` : "";
    const g = s("g", { class: `g-node ${status}${node.refused ? " refused" : ""}`, "data-agent": node.id,
      "data-status": node.status, "data-refused": node.refused, transform: `translate(${p.x},${p.y})` },
      s("rect", { class: "box", width: NODE_W, height: NODE_H, rx: isUser ? NODE_H / 2 : 10,
        stroke, style: `fill:${FILL[status] || "#fff"}` }),
      isUser ? null : s("rect", { x: 0, y: 0, width: 7, height: NODE_H, rx: 3, fill: stroke }),
      s("text", { class: "name", x: isUser ? NODE_W / 2 : 18, y: 24, "text-anchor": isUser ? "middle" : "start" },
        name),
      s("text", { class: "sub", x: isUser ? NODE_W / 2 : 18, y: 42, "text-anchor": isUser ? "middle" : "start" }, sub1),
      sub2 ? s("text", { class: "sub", x: 18, y: 57, fill: stroke }, sub2) : null,
      badge ? s("g", { class: "badge-refused", transform: `translate(${NODE_W - 82},-10)` },
        s("rect", { width: 80, height: 20, rx: 10, fill: REFUSED }),
        s("title", {}, node.errors.filter((e) => e.startsWith("denied:")).join("\n")),
        s("text", { x: 40, y: 14, "text-anchor": "middle", fill: "#fff", "font-size": 11, "font-weight": 700 }, `⚠ ${badge}`)) : null);
    g.addEventListener("click", (e) => { e.stopPropagation(); select("node", node, g); });
    return g;
  }

  // draws into `holder`, fitted to its width; `onSelect(kind, item)` when a node or edge is
  // clicked
  RB.drawGraph = (holder, graph, onSelect, selectedId) => {
    holder.replaceChildren();
    const room = Math.max(160, holder.clientWidth - 2);
    const { at, width, height, vertical, scale } = fit(graph, room);
    const svg = s("svg", { id: "run-graph", width: Math.floor(width * scale), height: Math.floor(height * scale),
      viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "run graph",
      "data-layout": vertical ? "top-down" : "left-right", "data-scale": scale.toFixed(3) });
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
        const g = drawEdge(edge, at, (i - (group.length - 1) / 2) * 16, select, vertical);
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
      [REFUSED, "refused call (⚠) / denied task"], ["#dc2626", "failed / dead-lettered"]].map(([c, t]) =>
      RB.h("span", {}, RB.h("i", { style: `background:${c}` }), t)),
    RB.h("span", {}, "thicker edge = more tasks (fan-out); click a node or an edge for its tasks, timings and chain"));
})(window.RB);
