// Spend over time: cumulative cost per user / agent / model / tool, as an SVG step chart.
"use strict";

(function (RB) {
  const s = RB.s;
  const PALETTE = ["#4338ca", "#0891b2", "#ea580c", "#16a34a", "#db2777", "#7c3aed", "#ca8a04", "#475569"];

  function keyOf(line, dimension) {
    if (dimension === "model") return line.model || (line.tool ? "(tools)" : "(none)");
    if (dimension === "tool") return line.tool || (line.model ? "(LLM calls)" : "(none)");
    return line[dimension] || "(none)";
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const mag = Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 2.5, 5, 10].map((m) => m * mag).find((m) => m >= v);
  }

  RB.drawSpendChart = (holder, lines, dimension) => {
    holder.replaceChildren();
    if (!lines.length) { holder.append(RB.h("p", { class: "hint" }, "nothing charged yet")); return; }
    const series = new Map();
    for (const line of lines) {
      const key = keyOf(line, dimension);
      if (!series.has(key)) series.set(key, []);
      series.get(key).push(line);
    }
    const t0 = lines[0].time, t1 = Math.max(lines[lines.length - 1].time, t0 + 1);
    const totals = [...series.entries()].map(([key, ls]) => {
      let sum = 0;
      return { key, points: ls.map((l) => ({ t: l.time, v: (sum += l.amount) })), total: sum };
    }).sort((a, b) => b.total - a.total);
    const top = niceMax(Math.max(...totals.map((t) => Math.max(...t.points.map((p) => p.v)))));
    const W = Math.max(420, (holder.clientWidth || 900) - 10), H = 280, L = 78, R = W < 700 ? 150 : 190, T = 14, B = 30;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const svg = s("svg", { id: "spend-chart", width: W, height: H });
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#eef0f3" }),
        s("text", { x: L - 8, y: y(v) + 4, "text-anchor": "end", "font-size": 11, fill: "#6b7280" }, RB.fmtCost(v) === "–" ? "$0" : RB.fmtCost(v)));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", "font-size": 11, fill: "#6b7280" },
        t1 - t0 < 60 ? RB.fmtTime(t) : RB.fmtTime(t).slice(0, 8)));
    }
    totals.forEach((serie, i) => {
      const color = PALETTE[i % PALETTE.length];
      let d = `M${x(t0)},${y(0)}`;
      let last = 0;
      for (const p of serie.points) { d += ` H${x(p.t)} V${y(p.v)}`; last = p.v; }
      d += ` H${x(t1)}`;
      svg.append(s("path", { d, fill: "none", stroke: color, "stroke-width": 2.2, "data-series": serie.key }));
      for (const p of serie.points) svg.append(s("circle", { cx: x(p.t), cy: y(p.v), r: 2.5, fill: color }));
      const ly = T + 8 + i * 18;
      svg.append(s("rect", { x: W - R + 14, y: ly - 8, width: 12, height: 4, fill: color }),
        s("text", { x: W - R + 32, y: ly - 2, "font-size": 12, fill: "#374151" }, `${serie.key}  ${RB.fmtCost(last)}`));
    });
    holder.append(svg);
  };
})(window.RB);
