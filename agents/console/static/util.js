// Small helpers shared by every page: DOM and SVG builders (text only, never HTML from data),
// formatting, the JSON API, live events, and what a page must close when it is left.
"use strict";
window.RB = window.RB || {};

(function (RB) {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function fill(node, attrs, children) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        node.addEventListener(key.slice(2), value);
      } else if (key === "text") {
        node.textContent = value;
      } else {
        node.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  RB.h = (tag, attrs, ...children) => fill(document.createElement(tag), attrs, children);
  RB.s = (tag, attrs, ...children) => fill(document.createElementNS(SVG_NS, tag), attrs, children);

  RB.fmtTime = (epoch) => {
    if (!epoch) return "–";
    const d = new Date(epoch * 1000);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  };
  RB.fmtDate = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleString() : "–");
  RB.fmtMs = (ms) => {
    if (ms === null || ms === undefined) return "…";
    if (ms === 0) return "0";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${ms.toFixed(1)} ms`;
    return `${(ms / 1000).toFixed(2)} s`;
  };
  // amounts are integer micro-units of the currency (1 USD = 1,000,000)
  RB.fmtCost = (micro) => {
    if (!micro) return "–";
    const v = Math.abs(micro / 1e6);
    return (micro < 0 ? "-$" : "$") + (v >= 100 ? v.toFixed(2) : v >= 0.01 ? v.toFixed(4) : v.toPrecision(2));
  };
  // a run's duration in seconds (the run record's), as the runs list and the run page show it
  RB.fmtSeconds = (sec) => (sec === null || sec === undefined ? "…" : `${sec.toFixed(2)} s`);
  RB.short = (id) => (id && id.length > 12 ? id.slice(0, 10) + "…" : id || "–");
  RB.pill = (status, big) => RB.h("span", { class: `pill ${status || ""}${big ? " big" : ""}` }, status || "–");
  RB.runLink = (id) => RB.h("a", { href: `#/run/${encodeURIComponent(id)}`, class: "mono", title: id }, RB.short(id));

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  RB.ApiError = ApiError;

  // `quiet`: a 401 does not bring up the sign-in form (background refreshes)
  RB.api = async (path, body, quiet) => {
    const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (_) { data = { error: res.statusText }; }
    if (!res.ok) {
      if (res.status === 401 && RB.needLogin && !quiet) RB.needLogin(data.error);
      throw new ApiError(res.status, (data && data.error) || res.statusText);
    }
    return data;
  };

  let toastTimer = null;
  RB.toast = (text, bad) => {
    const box = document.getElementById("toast");
    box.textContent = text;
    box.className = bad ? "bad" : "";
    box.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { box.hidden = true; }, 4000);
  };

  // what the current page opened (event sources, timers), closed when the route changes
  const open = [];
  RB.onLeave = (fn) => open.push(fn);
  RB.leave = () => {
    while (open.length) { try { open.pop()(); } catch (_) { /* closing */ } }
    document.getElementById("toast").hidden = true;
  };

  // live events: `onEvent(row)` for each, `onState(bool)` when the stream connects or drops
  RB.live = (params, onEvent, onState) => {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v) query.set(k, v);
    const source = new EventSource(`/api/events?${query}`);
    source.addEventListener("relay", (e) => onEvent(JSON.parse(e.data)));
    source.onopen = () => onState && onState(true);
    source.onerror = () => onState && onState(false);
    RB.onLeave(() => source.close());
    return source;
  };

  RB.debounce = (fn, ms) => {
    let timer = null;
    const run = () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
    RB.onLeave(() => clearTimeout(timer));
    return run;
  };

  // `fn()` when `el` changes width (a window resized, a panel stacked), until the page is left
  RB.onResize = (el, fn) => {
    let width = el.clientWidth, timer = null;
    const observer = new ResizeObserver(() => {
      if (Math.abs(el.clientWidth - width) < 4) return;
      width = el.clientWidth;
      clearTimeout(timer);
      timer = setTimeout(fn, 120);
    });
    observer.observe(el);
    RB.onLeave(() => { observer.disconnect(); clearTimeout(timer); });
  };

  // a table that scrolls sideways inside its own box when it cannot wrap narrower
  RB.tableBox = (table) => RB.h("div", { class: "table-scroll" }, table);

  RB.errorBox = (err) => RB.h("div", { class: "error-box" }, err.message || String(err));
})(window.RB);
