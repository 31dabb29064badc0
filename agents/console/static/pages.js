// The pages: live feed, runs, one run (graph + timeline), costs, dead letters, approvals.
"use strict";

(function (RB) {
  const h = RB.h;
  const STATUSES = ["", "queued", "running", "sent", "ok", "waiting", "received", "retry", "error", "denied", "cancelled", "scored"];
  const MAX_ROWS = 500;
  RB.pages = {};

  function liveBadge() { return h("span", { class: "live", id: "live" }, "connecting"); }
  function setLive(on) {
    const el = document.getElementById("live");
    if (el) { el.classList.toggle("on", on); el.textContent = on ? "live" : "reconnecting…"; }
  }

  // -- live feed --------------------------------------------------------------------------
  RB.pages.feed = (main, params) => {
    const filters = { run: params.get("run") || "", agent: params.get("agent") || "", status: params.get("status") || "" };
    const apply = () => {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
      location.hash = `#/feed${q.toString() ? "?" + q : ""}`;
    };
    const input = (key, placeholder, cls) => h("input", { id: `filter-${key}`, value: filters[key], placeholder, class: cls,
      onchange: (e) => { filters[key] = e.target.value.trim(); apply(); } });
    const status = h("select", { id: "filter-status", onchange: (e) => { filters.status = e.target.value; apply(); } },
      STATUSES.map((v) => h("option", { value: v, selected: v === filters.status }, v || "any status")));
    const body = h("tbody", { id: "feed-rows" });
    const empty = h("tr", { class: "empty-row" }, h("td", { colspan: 9, class: "empty" }, "waiting for events…"));
    body.append(empty);
    main.append(
      h("h1", {}, "Live handoffs", liveBadge()),
      h("div", { class: "filters" },
        h("label", {}, "run", input("run", "run id", "wide")),
        h("label", {}, "agent", input("agent", "agent name")),
        h("label", {}, "status", status),
        h("button", { onclick: () => { filters.run = filters.agent = filters.status = ""; apply(); } }, "clear")),
      h("div", { class: "card" }, RB.tableBox(h("table", { id: "feed" },
        h("thead", {}, h("tr", {}, ["time", "run", "from → to", "kind", "try", "status", "latency", "cost", "detail"]
          .map((t) => h("th", { class: ["try", "latency", "cost"].includes(t) ? "num" : "" }, t)))),
        body))));
    const seen = new Set();
    RB.live(filters, (e) => {
      const key = `${e.run_id}|${e.kind}|${e.envelope_id || ""}|${e.time}|${e.detail || ""}`;
      if (seen.has(key)) return;
      seen.add(key);
      empty.remove();
      const detail = [e.detail, e.error ? `${e.error.type}: ${e.error.message}` : ""].filter(Boolean).join(" ");
      body.prepend(h("tr", { class: `event fresh ${e.status}`, "data-run": e.run_id, "data-kind": e.kind,
        "data-status": e.status, "data-from": e.from, "data-to": e.to },
        h("td", { class: "mono" }, RB.fmtTime(e.time)),
        h("td", {}, RB.runLink(e.run_id)),
        h("td", {}, `${e.from || "–"} → ${e.to || "–"}`),
        h("td", {}, e.kind),
        h("td", { class: "num" }, e.attempt || "–"),
        h("td", {}, RB.pill(e.status)),
        h("td", { class: "num" }, e.latency_ms ? RB.fmtMs(e.latency_ms) : "–"),
        h("td", { class: "num", title: e.cost ? `${e.cost} micro-units` : "" }, RB.fmtCost(e.cost)),
        h("td", { class: "detail" }, detail)));
      while (body.children.length > MAX_ROWS) body.lastChild.remove();
    }, setLive);
  };

  // -- runs -------------------------------------------------------------------------------
  RB.pages.runs = async (main) => {
    const body = h("tbody", { id: "runs-rows" });
    main.append(h("h1", {}, "Runs", liveBadge()), h("div", { class: "card" }, RB.tableBox(h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["run", "agent", "status", "user", "started", "took", "steps", "failures", "cost", "waiting for"]
        .map((t) => h("th", { class: ["steps", "failures", "cost", "took"].includes(t) ? "num" : "" }, t)))), body))));
    const load = async () => {
      const rows = await RB.api("/api/runs?limit=100");
      body.replaceChildren(...(rows.length ? rows.map((r) => h("tr", { class: "run", "data-run": r.run_id, "data-status": r.status },
        h("td", {}, RB.runLink(r.run_id)), h("td", {}, r.agent), h("td", {}, RB.pill(r.status)),
        h("td", {}, r.submitted_by), h("td", {}, RB.fmtDate(r.started)),
        h("td", { class: "num run-took" }, RB.fmtSeconds(r.duration_s)),
        h("td", { class: "num run-steps" }, r.steps), h("td", { class: "num run-failures" }, r.failures),
        h("td", { class: "num run-cost", title: `${r.cost} micro-units · ${r.cost_check}` }, RB.fmtCost(r.cost)),
        h("td", { class: "run-waiting" }, r.waiting_for.join(", "))))
        : [h("tr", {}, h("td", { colspan: 10, class: "empty" }, "no runs yet"))]));
    };
    await load();
    const reload = RB.debounce(() => load().catch((err) => RB.toast(err.message, true)), 400);
    RB.live({ since: Date.now() / 1000 }, (e) => {
      if (["submitted", "completed", "failed", "cancelled", "suspended", "signal", "dead_lettered"].includes(e.kind)) reload();
    }, setLive);
  };

  // -- one run ----------------------------------------------------------------------------
  function chainBox(chain) {
    return chain.length ? h("div", { class: "chain" }, h("b", {}, "delegation chain"),
      chain.map((link) => h("div", { class: "mono" }, link))) : null;
  }

  function taskCard(task, shownChain) {
    return h("div", { class: "task", "data-task": task.task_id },
      h("div", { class: "head" }, h("b", {}, `${task.agent} [${task.via}]`),
        h("span", {}, task.refused && task.status !== "denied" ? h("span", { class: "pill denied" }, `⚠ ${task.refused} refused`) : null,
          " ", RB.pill(task.status))),
      h("div", { class: "muted" }, `from ${task.from} · took ${RB.fmtMs(task.duration_ms)} · queued ${RB.fmtMs(task.queued_ms)} · ` +
        `${task.attempts} attempt${task.attempts === 1 ? "" : "s"} · cost ${RB.fmtCost(task.cost)}`),
      task.calls.length ? h("ul", {}, task.calls.map((c) => h("li", { class: c.error ? "err" : "" },
        `${c.kind} ${c.name} · ${RB.fmtMs(c.latency_ms)}${c.cost ? " · " + RB.fmtCost(c.cost) : ""}` +
        `${c.input_tokens || c.output_tokens ? ` · tokens ${c.input_tokens}/${c.output_tokens}` : ""}${c.error ? " · " + c.error : ""}`))) : null,
      task.errors.length ? h("ul", {}, task.errors.map((e) => h("li", { class: e.startsWith("denied") ? "deny" : "err" }, e))) : null,
      JSON.stringify(task.chain) === JSON.stringify(shownChain) ? null : chainBox(task.chain));
  }

  function details(holder, kind, item) {
    holder.replaceChildren();
    const side = { append: (...parts) => holder.append(...parts.flat(Infinity).filter(Boolean)) };
    if (kind === "edge") {
      const via = item.fan_out ? `fan-out ×${item.count}` : `${item.via}${item.count > 1 ? " ×" + item.count : ""}`;
      side.append(h("h3", {}, `${item.from} → ${item.to} · ${via}`),
        h("p", { class: "muted" }, `${RB.fmtMs(item.duration_ms)} · ${item.attempts} attempt(s) · ${RB.fmtCost(item.cost)}`),
        chainBox(item.chain), item.tasks.map((task) => taskCard(task, item.chain)));
    } else {
      side.append(h("h3", {}, item.id),
        h("p", { class: "muted" }, `${item.tasks} task(s) · ${item.attempts} attempt(s) · ${RB.fmtCost(item.cost)} · ${item.status}`),
        item.errors.length ? h("ul", {}, item.errors.map((e) => h("li", { class: e.startsWith("denied") ? "deny" : "err" }, e))) : null,
        RB.currentRun ? RB.currentRun.graph.tasks.filter((t) => t.agent === item.id).map((task) => taskCard(task, null)) : null);
    }
  }

  function decisionButtons(runId, signal, after) {
    const act = async (decision, button) => {
      button.disabled = true;
      try {
        const done = await RB.api(`/api/runs/${encodeURIComponent(runId)}/signals/${encodeURIComponent(signal)}`, { decision });
        RB.toast(`${signal}: ${decision === "approve" ? "approved" : "rejected"} — run ${RB.short(runId)} ${done.delivered ? "resumes" : "gets it when it asks"}`);
        RB.refreshBadge();
        if (after) after();
      } catch (err) { RB.toast(err.message, true); button.disabled = false; }
    };
    return [
      h("button", { class: "approve", "data-run": runId, "data-signal": signal, onclick: (e) => act("approve", e.target) }, "Approve"),
      " ",
      h("button", { class: "reject", "data-run": runId, "data-signal": signal, onclick: (e) => act("reject", e.target) }, "Reject"),
    ];
  }

  RB.pages.run = async (main, params, runId) => {
    let view;
    try { view = await RB.api(`/api/runs/${encodeURIComponent(runId)}`); }
    catch (err) { main.append(h("h1", {}, "Run"), RB.errorBox(err)); return; }
    const head = h("div"), graphBox = h("div", { class: "graph-wrap", id: "graph-box" });
    const side = h("div", { class: "card side", id: "details" }, h("p", { class: "hint" }, "Click an agent or an edge for its tasks, timings, attempts, cost and delegation chain."));
    const timeline = h("div", { id: "timeline-box" }), events = h("tbody", { id: "run-events" }), extra = h("div");
    main.append(head,
      h("div", { class: "row" },
        h("div", { class: "card grow" }, h("h2", {}, "Run graph"), graphBox, RB.graphLegend()), side),
      h("div", { class: "card" }, h("h2", {}, "Timeline"), timeline),
      extra,
      h("div", { class: "card" }, h("h2", {}, "Events"), RB.tableBox(h("table", { id: "run-event-table" },
        h("thead", {}, h("tr", {}, ["time", "from → to", "kind", "try", "status", "latency", "cost", "detail"].map((t) => h("th", {}, t)))), events))));
    let selected = null;
    const render = () => {
      RB.currentRun = view;
      const run = view.run, trace = view.trace;
      head.replaceChildren(
        h("h1", {}, `Run `, h("span", { class: "mono" }, run.run_id), h("span", { id: "run-status", "data-status": run.status }, RB.pill(run.status, true)),
          view.pending.length ? RB.pill(`waiting for ${view.pending.join(", ")}`, true) : "", liveBadge()),
        h("div", { class: "facts" },
          // every number from the run row: the same as the runs list shows (figures.py)
          [["agent", run.agent || "–"], ["user", run.submitted_by || "–"], ["started", RB.fmtDate(run.started || trace.started)],
            ["duration", RB.fmtSeconds(run.duration_s)], ["cost", `${RB.fmtCost(run.cost)} (${run.cost_check})`],
            ["steps", run.steps], ["attempts", run.attempts], ["failures", run.failures],
            ["tokens", run.input_tokens || run.output_tokens ? `${run.input_tokens} in / ${run.output_tokens} out` : "–"]]
            .map(([k, v]) => h("div", { "data-fact": k }, h("span", {}, k), h("b", {}, String(v))))),
        view.pending.length ? h("div", { class: "card", id: "run-pending" }, h("h2", {}, "Waiting for a decision"),
          view.pending.map((name) => h("div", {}, h("b", { class: "mono" }, name), "  ", decisionButtons(run.run_id, name, refresh)))) : "",
        run.error ? h("div", { class: "error-box" }, run.error) : "",
        run.traceback ? h("details", { class: "traceback", id: "run-traceback" },
          h("summary", {}, "traceback (where the handler failed)"), h("pre", {}, run.traceback)) : "");
      events.replaceChildren(...view.events.map((e) => h("tr", { class: `event ${e.status}`, "data-kind": e.kind },
        h("td", { class: "mono" }, RB.fmtTime(e.time)), h("td", {}, `${e.from || "–"} → ${e.to || "–"}`), h("td", {}, e.kind),
        h("td", {}, e.attempt || "–"), h("td", {}, RB.pill(e.status)), h("td", {}, e.latency_ms ? RB.fmtMs(e.latency_ms) : "–"),
        h("td", {}, RB.fmtCost(e.cost)), h("td", { class: "detail" }, [e.detail, e.error ? `${e.error.type}: ${e.error.message}` : ""].filter(Boolean).join(" ")))));
      extra.replaceChildren(...[
        trace.chain.length ? h("div", { class: "card" }, h("h2", {}, "Delegation chain"),
          trace.chain.map((l) => h("div", { class: "mono" }, `${"  ".repeat(l.depth_in_chain)}${l.issuer} → agent:${l.subject}  [${l.scopes.join(", ")}]`))) : null,
        trace.denials.length ? h("div", { class: "card" }, h("h2", {}, "Denials"), trace.denials.map((d) => h("div", { class: "deny" }, d))) : null,
        trace.dead_letters.length ? h("div", { class: "card" }, h("h2", {}, "Dead letters"),
          trace.dead_letters.map((d) => h("div", {}, `task ${d.task_id}: ${d.reason}`)), h("a", { href: "#/dlq" }, "replay on the dead-letter page")) : null,
      ].filter(Boolean));
      drawings(); // last: drawn to the width the page has with everything else in it
      setLive(true);
    };
    const drawings = () => {
      RB.drawGraph(graphBox, view.graph, (kind, item) => {
        selected = item.id;
        details(side, kind, item);
        // stacked under the graph (a narrower window), the details may start below the fold
        if (side.getBoundingClientRect().top > window.innerHeight - 120) side.scrollIntoView({ block: "nearest" });
      }, selected);
      RB.drawTimeline(timeline, view.graph.tasks, view.trace.started, view.trace.ended);
    };
    RB.onResize(main, drawings);
    const refresh = () => RB.api(`/api/runs/${encodeURIComponent(runId)}`).then((v) => { view = v; render(); }).catch((err) => RB.toast(err.message, true));
    render();
    const again = RB.debounce(refresh, 250);
    // the stream replays the run from its start: only events newer than the page's redraw it
    const newest = () => Math.max(0, ...view.events.map((e) => e.time));
    RB.live({ run: runId }, (e) => { if (e.time > newest()) again(); }, setLive);
  };

  // -- costs ------------------------------------------------------------------------------
  RB.pages.costs = async (main, params) => {
    const dimension = params.get("by") || "agent";
    main.append(h("h1", {}, "Costs"));
    let data;
    try { data = await RB.api("/api/costs"); } catch (err) { main.append(RB.errorBox(err)); return; }
    const chart = h("div", { id: "chart-box" });
    const pick = h("select", { id: "cost-dimension", onchange: (e) => { location.hash = `#/costs?by=${e.target.value}`; } },
      ["user", "agent", "model", "tool"].map((d) => h("option", { value: d, selected: d === dimension }, `per ${d}`)));
    const levels = data.levels.map((l) => {
      const used = l.limit ? Math.min(100, ((l.spent + l.held) / l.limit) * 100) : 0;
      return h("tr", { class: "level", "data-level": l.level },
        h("td", { class: "mono" }, l.level), h("td", { class: "num" }, RB.fmtCost(l.spent)), h("td", { class: "num" }, RB.fmtCost(l.held)),
        h("td", { class: "num" }, l.limit ? RB.fmtCost(l.limit) : "no limit"),
        h("td", { class: "num" }, l.remaining === null ? "–" : RB.fmtCost(l.remaining)),
        h("td", {}, l.limit ? h("div", { class: "bar", title: `${used.toFixed(1)}% used` }, h("div", { class: used > 90 ? "hot" : "", style: `width:${used}%` })) : ""),
        h("td", { class: "num" }, l.steps), h("td", { class: "num" }, l.tokens));
    });
    main.append(
      h("div", { class: "facts" }, [["spent", RB.fmtCost(data.total)], ["charges", data.lines.length], ["budget levels", data.levels.length], ["alerts", data.alerts.length]]
        .map(([k, v]) => h("div", {}, h("span", {}, k), h("b", {}, String(v))))),
      h("div", { class: "card" }, h("div", { class: "filters" }, h("h2", { style: "margin:0" }, "Spend over time"), pick), chart),
      h("div", { class: "card" }, h("h2", {}, "Budgets"), RB.tableBox(h("table", { id: "levels" },
        h("thead", {}, h("tr", {}, ["level", "spent", "held", "limit", "remaining", "used", "charged steps", "tokens"].map((t) => h("th", { class: t === "level" || t === "used" ? "" : "num",
          title: t === "charged steps" ? "costed steps the ledger charged at this level; a run's steps (runs list, run page) count every tool call, step and LLM call, costed or not" : undefined }, t)))),
        h("tbody", {}, levels.length ? levels : h("tr", {}, h("td", { colspan: 8, class: "empty" }, "no budget levels yet")))))),
      h("div", { class: "card" }, h("h2", {}, "Alerts"), data.alerts.length ? RB.tableBox(h("table", { id: "alerts" },
        h("tbody", {}, data.alerts.map((a) => h("tr", {}, h("td", { class: "mono" }, RB.fmtDate(a.time)), h("td", {}, RB.runLink(a.run_id)), h("td", { class: "detail" }, a.detail))))))
        : h("p", { class: "hint" }, "no spend alerts")));
    RB.drawSpendChart(chart, data.lines, dimension);
    RB.onResize(chart, () => RB.drawSpendChart(chart, data.lines, dimension));
  };

  // -- dead letters -----------------------------------------------------------------------
  RB.pages.dlq = async (main) => {
    const body = h("tbody", { id: "dlq-rows" });
    main.append(h("h1", {}, "Dead letters"), h("div", { class: "card" }, RB.tableBox(h("table", { id: "dlq" },
      h("thead", {}, h("tr", {}, ["id", "agent", "run", "reason", "attempts", "time", "last error", ""].map((t) => h("th", {}, t)))), body))));
    const load = async () => {
      const rows = await RB.api("/api/dlq");
      body.replaceChildren(...(rows.length ? rows.map((d) => h("tr", { class: "letter", "data-id": d.id, "data-run": d.run_id },
        h("td", {}, d.id), h("td", {}, d.agent), h("td", {}, d.run_id ? RB.runLink(d.run_id) : "–"), h("td", { class: "detail" }, d.reason),
        h("td", { class: "num" }, d.attempts), h("td", {}, RB.fmtDate(d.time)),
        h("td", { class: "detail" }, d.last_error ? `${d.last_error.type}: ${d.last_error.message}` : "–"),
        h("td", {}, h("button", { class: "primary replay", "data-id": d.id, onclick: async (e) => {
          e.target.disabled = true;
          try { await RB.api(`/api/dlq/${d.id}/replay`, {}); RB.toast(`dead letter ${d.id} replayed: the run continues`); await load(); }
          catch (err) { RB.toast(err.message, true); e.target.disabled = false; }
        } }, "Replay"))))
        : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "no dead letters"))]));
    };
    try { await load(); } catch (err) { main.append(RB.errorBox(err)); }
  };

  // -- approvals --------------------------------------------------------------------------
  RB.pages.approvals = async (main) => {
    const body = h("tbody", { id: "approval-rows" });
    main.append(h("h1", {}, "Pending approvals", liveBadge()),
      h("p", { class: "hint" }, "Runs waiting in ctx.wait_signal (or parked on a budget). Approve sends true, reject sends false — as `relaybus approve RUN --signal NAME --data …` does."),
      h("div", { class: "card" }, RB.tableBox(h("table", { id: "approvals" },
        h("thead", {}, h("tr", {}, ["run", "signal", "waiting agent", "run agent", "user", "started", ""].map((t) => h("th", {}, t)))), body))));
    const load = async () => {
      const rows = await RB.api("/api/approvals");
      body.replaceChildren(...(rows.length ? rows.map((a) => h("tr", { class: "approval", "data-run": a.run_id, "data-signal": a.signal },
        h("td", {}, RB.runLink(a.run_id)), h("td", { class: "mono" }, a.signal), h("td", {}, a.agent), h("td", {}, a.run_agent),
        h("td", {}, a.submitted_by), h("td", {}, RB.fmtDate(a.started)), h("td", {}, decisionButtons(a.run_id, a.signal, () => load()))))
        : [h("tr", {}, h("td", { colspan: 7, class: "empty" }, "nothing waits for a decision"))]));
    };
    try { await load(); } catch (err) { main.append(RB.errorBox(err)); return; }
    const reload = RB.debounce(() => load().catch((err) => RB.toast(err.message, true)), 300);
    RB.live({ since: Date.now() / 1000 }, (e) => {
      if (["suspended", "parked", "signal", "resumed", "completed", "failed", "cancelled"].includes(e.kind)) reload();
    }, setLive);
  };

  // -- human review -------------------------------------------------------------------------
  const fmtScore = (s) => (s === null || s === undefined ? "–" : Number(s).toFixed(2));
  RB.pages.reviews = async (main, params, runId) => {
    if (runId) return reviewOne(main, runId);
    const rows = await RB.api("/api/reviews");
    main.append(h("h1", {}, "Reviews"), h("p", { class: "hint" },
      "Runs routed to human review (a low score, a sample, or on request) that your review scopes cover. " +
      "Disagreement: the human score is 0.5 or more away from the automated ones."),
    h("div", { class: "card" }, RB.tableBox(h("table", { id: "reviews" },
      h("thead", {}, h("tr", {}, ["run", "agent", "why", "automated", "human", "state"].map((t) => h("th", {}, t)))),
      h("tbody", {}, ...(rows.length ? rows.map((r) => h("tr", { class: "review", "data-run": r.run_id,
        "data-state": r.state, "data-disagree": String(r.disagreement) },
        h("td", {}, h("a", { href: `#/reviews/${encodeURIComponent(r.run_id)}`, class: "mono", title: r.run_id }, RB.short(r.run_id))),
        h("td", {}, r.agent), h("td", { class: "detail" }, r.reasons.join("; ")),
        h("td", {}, Object.entries(r.automated).map(([k, v]) => `${k} ${fmtScore(v)}`).join(", ") || "–"),
        h("td", {}, fmtScore(r.human)),
        h("td", {}, h("span", { class: `pill ${r.disagreement ? "error" : r.state === "reviewed" ? "ok" : "waiting"}` },
          r.disagreement ? "judge and humans disagree" : r.state))))
        : [h("tr", {}, h("td", { colspan: 6, class: "empty" }, "nothing to review"))]))))));
  };

  async function reviewOne(main, runId) {
    const r = await RB.api(`/api/reviews/${encodeURIComponent(runId)}`);
    const field = (id, el) => h("label", {}, id, el);
    const score = h("input", { id: "review-score", type: "number", min: 0, max: 1, step: 0.05, placeholder: "0–1" });
    const label = h("input", { id: "review-label", maxlength: 64 });
    const comment = h("textarea", { id: "review-comment", maxlength: 2000, rows: 3 });
    const send = async (verdict) => {
      const body = { verdict, label: label.value, comment: comment.value };
      if (score.value !== "") body.score = Number(score.value);
      try { await RB.api(`/api/reviews/${encodeURIComponent(runId)}/verdict`, body); RB.toast(`recorded: ${verdict}`); location.hash = "#/reviews"; }
      catch (err) { RB.toast(err.message, true); }
    };
    main.append(h("h1", {}, "Review ", RB.runLink(r.run_id)),
      h("div", { class: "card" },
        h("p", {}, `agent ${r.agent} · run ${r.run_status} · for ${r.principal}`),
        h("p", { class: "hint" }, r.reasons.join("; ")),
        h("h3", {}, "Automated scores"),
        h("ul", {}, ...Object.entries(r.automated).map(([k, v]) => h("li", {}, `${k}: ${fmtScore(v)}`))),
        r.disagreement ? h("p", { class: "warn", id: "disagreement" }, `Judge and humans disagree: human ${fmtScore(r.human)}`) : "",
        h("h3", {}, r.error ? "Error" : "Result"),
        h("pre", { class: "result" }, r.error || JSON.stringify(r.result, null, 2)),
        h("h3", {}, "Verdicts"),
        h("ul", { id: "verdicts" }, ...(r.verdicts.length ? r.verdicts.map((v) =>
          h("li", {}, `${v.reviewer}: ${v.verdict} ${fmtScore(v.score)} ${v.label} ${v.comment}`)) : [h("li", {}, "none yet")]))),
      h("div", { class: "card review-form" }, h("h3", {}, "Your verdict"),
        h("div", { class: "filters" }, field("score", score), field("label", label)), field("comment", comment),
        h("div", {}, h("button", { class: "primary", id: "review-pass", onclick: () => send("pass") }, "Pass"),
          h("button", { id: "review-fail", onclick: () => send("fail") }, "Fail"))));
  }
})(window.RB);
