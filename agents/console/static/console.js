// The console's shell: who is looking, the router (#/feed, #/runs, #/run/ID, #/costs, #/dlq,
// #/approvals), the token login when the console is not on loopback, the approvals badge.
"use strict";

(function (RB) {
  const h = RB.h;
  const main = document.getElementById("main");
  let routing = 0;

  RB.needLogin = (why) => {
    const shown = document.getElementById("login");
    if (shown) { // already asking: say why, and let the user type again
      document.getElementById("login-why").textContent = why || "";
      document.getElementById("token").value = "";
      return;
    }
    RB.leave();
    main.replaceChildren(h("div", { class: "card login", id: "login" },
      h("h2", {}, "Sign in with a user token"),
      h("p", { class: "hint", id: "login-why" }, why || "This console needs a user token."),
      h("p", { class: "hint" }, "Signed in, you see only your own runs, costs, dead letters and approvals."),
      h("form", { onsubmit: async (e) => {
        e.preventDefault();
        const token = document.getElementById("token").value.trim();
        try { await RB.api("/api/login", { token }); await who(); route(); }
        catch (err) { RB.toast(err.message, true); }
      } },
        h("input", { id: "token", type: "password", placeholder: "rb_…", autocomplete: "off" }),
        h("button", { class: "primary", type: "submit" }, "Sign in"))));
  };

  async function who() {
    const box = document.getElementById("who");
    try {
      const me = await RB.api("/api/me");
      box.replaceChildren(me.user
        ? h("span", {}, `signed in as ${me.user}`, h("button", { onclick: async () => {
          await RB.api("/api/logout", {}); location.reload();
        } }, "sign out"))
        : h("span", {}, "local operator (sees every run)"));
      return me;
    } catch (_) { box.replaceChildren(); return null; }
  }

  RB.refreshBadge = async () => {
    const badge = document.getElementById("approval-count");
    try {
      const rows = await RB.api("/api/approvals", undefined, true);
      badge.textContent = String(rows.length);
      badge.hidden = rows.length === 0;
    } catch (_) { badge.hidden = true; }
  };

  async function route() {
    const mine = ++routing;
    RB.leave();
    const [path, query] = (location.hash.replace(/^#\/?/, "") || "feed").split("?");
    const [page, ...rest] = path.split("/");
    const params = new URLSearchParams(query || "");
    const render = RB.pages[page] || RB.pages.feed;
    for (const link of document.querySelectorAll("header nav a")) {
      link.classList.toggle("active", link.dataset.page === (page === "run" ? "runs" : page));
    }
    main.replaceChildren();
    document.title = `relaybus console — ${page}`;
    try {
      await render(main, params, decodeURIComponent(rest.join("/")));
    } catch (err) {
      if (mine === routing && !(err instanceof RB.ApiError && err.status === 401)) main.append(RB.errorBox(err));
    }
  }

  window.addEventListener("hashchange", route);
  (async () => {
    const me = await who();
    if (me) route(); // otherwise the 401 already showed the login form
    RB.refreshBadge();
    setInterval(RB.refreshBadge, 10000);
  })();
})(window.RB);
