// The run's timeline: one row per task — queued (light), running (in its status colour), its
// tool and LLM calls as ticks — as inline SVG as wide as its box.
"use strict";

(function (RB) {
  const s = RB.s;
  const short = (text, n) => (text.length > n ? text.slice(0, Math.max(1, n - 1)) + "…" : text);

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
    const room = holder.clientWidth || 1100;
    const LABEL = Math.round(Math.min(230, Math.max(110, room * 0.28))), RH = 24;
    const W = Math.max(160, room - LABEL - 30), fits = Math.floor((LABEL - 12) / 6.6);
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
      const y = i * RH + 4, color = RB.STATUS_COLOR[task.status] || "#64748b";
      const start = task.started, end = task.ended || now, name = `${task.agent} [${task.via}]`;
      svg.append(
        s("text", { x: 6, y: y + 14, "font-size": 12, fill: "#374151" }, s("title", {}, name), short(name, fits)),
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
