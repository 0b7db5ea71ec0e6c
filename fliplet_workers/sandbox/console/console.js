// The sandbox console: data sources, their entries, and the commit log, refreshed while a run goes.
// Plain JavaScript served by the sandbox itself (no build step, no CDN). Every value reaches the page
// as text (textContent), never as HTML. Routes live in the URL's hash: #/, #/ds/2?search=x&page=2,
// #/commits?ds=2&page=1, #/commit/12.
"use strict";

(() => {
  const view = document.getElementById("view");
  const live = document.getElementById("live");
  const PAGE = 50;
  const CHANGES_PAGE = 200;
  const POLL_MS = 2000;
  let version = null;
  let screen = null; // {key, refresh}

  // ------------------------------------------------------------------------------ helpers

  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    if (attrs && attrs.text !== undefined && attrs.text !== null) {
      node.textContent = String(attrs.text);
      return node;
    }
    return fill(node, ...kids);
  }

  // Replace a node's children: nested lists are flattened, null/undefined/false left out, text as text.
  function fill(node, ...kids) {
    node.replaceChildren();
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return node;
  }

  async function getJSON(path) {
    const reply = await fetch(path, {credentials: "same-origin", headers: {Accept: "application/json"}});
    if (reply.status === 401) { // the session ended (logout, restart, token removed): show the login form
      window.location.reload();
      throw new Error("Not logged in");
    }
    const body = await reply.json().catch(() => ({}));
    if (!reply.ok) throw new Error(body.message || `HTTP ${reply.status}`);
    return body;
  }

  function plural(n, one, many) { return `${n} ${n === 1 ? one : many}`; }

  function pad(n) { return String(n).padStart(2, "0"); }

  function when(iso) {
    if (!iso) return el("span", {class: "null", text: "—"});
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el("span", {text: iso});
    const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return el("time", {datetime: iso, title: iso, text});
  }

  function route() {
    const [path, query] = (window.location.hash.replace(/^#/, "") || "/").split("?");
    const parts = path.split("/").filter(Boolean);
    return {name: parts[0] || "index", id: parts[1] || "", params: new URLSearchParams(query || "")};
  }

  function setHash(path, params) {
    const query = params.toString();
    history.replaceState(null, "", `#${path}${query ? "?" + query : ""}`);
  }

  function isEncrypted(value) { return typeof value === "string" && value.startsWith("U2FsdGVkX1"); }

  function isFileUrl(value) { return typeof value === "string" && /^https?:\/\/[^/]+\/media\/files\/\d+\//.test(value); }

  // A column's value as the console shows it: null, encrypted (marked, not shown), a file link, text.
  function cell(value, fileColumn) {
    if (value === null || value === undefined) return el("span", {class: "null", text: "null"});
    if (isEncrypted(value)) {
      return el("span", {class: "enc", title: "Encrypted (CryptoJS AES): the sandbox has no key"},
        "encrypted ", el("code", {text: value.slice(0, 14) + "\u2026"}));
    }
    if (typeof value === "string" && (fileColumn || isFileUrl(value)) && /^https?:\/\//.test(value)) {
      const name = decodeURIComponent(value.split("/").pop() || value);
      return el("span", {class: "file"}, el("a", {href: value, rel: "noreferrer noopener", title: value, text: name}));
    }
    if (typeof value === "string" && /^https?:\/\/\S+$/.test(value)) {
      return el("a", {href: value, rel: "noreferrer noopener", target: "_blank", text: value});
    }
    const text = typeof value === "string" ? value : JSON.stringify(value);
    return el("span", {class: "value", title: text.length > 40 ? text : null, text});
  }

  function fileColumns(columns) {
    return new Set(columns.filter((c) => columns.includes(`${c}MediaFileId`)));
  }

  function pager(offset, limit, total, go) {
    const page = Math.floor(offset / limit) + 1;
    const pages = Math.max(1, Math.ceil(total / limit));
    return el("div", {class: "pager"},
      el("button", {type: "button", disabled: page <= 1, onclick: () => go(page - 1), text: "\u2039 Previous"}),
      el("span", {text: `Page ${page} of ${pages}`}),
      el("button", {type: "button", disabled: page >= pages, onclick: () => go(page + 1), text: "Next \u203a"}));
  }

  function mount(...nodes) { fill(view, ...nodes); }

  function fail(error) { return el("p", {class: "error", text: `Could not load: ${error.message}`}); }

  // ------------------------------------------------------------------------------ the index

  function indexScreen() {
    const body = el("div");
    mount(el("h1", {text: "Data sources"}), body);
    async function refresh() {
      const index = await getJSON("/_console/api/index");
      const total = index.dataSources.reduce((sum, s) => sum + s.entries, 0);
      const rows = index.dataSources.map((s) => el("tr", {},
        el("td", {class: "num", text: s.id}),
        el("td", {}, el("a", {href: `#/ds/${s.id}`, text: s.name})),
        el("td", {class: "num", text: s.entries}),
        el("td", {}, when(s.lastChange)),
        el("td", {class: "num"}, s.commits ? el("a", {href: `#/commits?ds=${s.id}`, text: s.commits}) : "0"),
        el("td", {text: s.type || ""})));
      fill(body,
        el("p", {class: "meta", text: `${index.dataSources.length} data source(s) this token may read, ` +
          `${total} entries in total, ${index.loggedCommits} commit(s) in the log.`}),
        rows.length ? el("table", {class: "grid"},
          el("thead", {}, el("tr", {}, el("th", {class: "num", text: "ID"}), el("th", {text: "Data source"}),
            el("th", {class: "num", text: "Entries"}), el("th", {text: "Last change"}),
            el("th", {class: "num", text: "Commits received"}), el("th", {text: "Type"}))),
          el("tbody", {}, rows)) : el("p", {class: "empty", text: "This token may read no data source."}));
    }
    return refresh;
  }

  // ------------------------------------------------------------------------ one data source

  function entriesTable(data) {
    const files = fileColumns(data.columns);
    const head = el("tr", {},
      el("th", {class: "entry-id"}, "Entry ID", el("small", {text: "Fliplet's, not a column"})),
      data.columns.map((c) => el("th", {text: c})),
      el("th", {class: "stamp", text: "Entry updated"}));
    const rows = data.entries.map((e) => el("tr", {"data-entry-id": e.id},
      el("td", {class: "entry-id", text: `#${e.id}`}),
      data.columns.map((c) => el("td", {}, c in e.data ? cell(e.data[c], files.has(c)) : el("span", {class: "missing", text: "—"}))),
      el("td", {class: "stamp"}, when(e.updatedAt))));
    return el("div", {class: "scroll"}, el("table", {class: "grid entries"}, el("thead", {}, head), el("tbody", {}, rows)));
  }

  function sourceScreen(r) {
    const id = r.id;
    const title = el("h1", {text: `Data source #${id}`});
    const meta = el("p", {class: "meta"});
    const search = el("input", {type: "search", id: "search", placeholder: "Search: an entry id or text in any column",
      value: r.params.get("search") || "", "aria-label": "Search entries"});
    const count = el("span", {class: "count"});
    const results = el("div", {id: "results"});
    let page = Number(r.params.get("page") || 1);
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { page = 1; refresh(); }, 250);
    });
    mount(el("p", {class: "crumbs"}, el("a", {href: "#/", text: "Data sources"}), " \u203a ", `#${id}`), title, meta,
      el("div", {class: "toolbar"}, search, count), results);
    async function refresh() {
      const params = new URLSearchParams();
      if (search.value) params.set("search", search.value);
      if (page > 1) params.set("page", page);
      setHash(`/ds/${id}`, params);
      const query = new URLSearchParams({search: search.value, offset: (page - 1) * PAGE, limit: PAGE});
      const data = await getJSON(`/_console/api/data-sources/${id}/entries?${query}`);
      if (!data.entries.length && page > 1 && data.matched) { // past the end (entries went away): the last page
        page = Math.ceil(data.matched / PAGE);
        return refresh();
      }
      const s = data.dataSource;
      title.textContent = `#${s.id} ${s.name}`;
      document.title = `${s.name}: Fliplet sandbox`;
      fill(meta, `${data.total} entries, organization ${s.organizationId}${s.type ? ", type " + s.type : ""}. `,
        el("a", {href: `#/commits?ds=${s.id}`, text: "Commits of this data source \u203a"}));
      const shown = data.matched ? `; showing ${data.offset + 1}\u2013${data.offset + data.entries.length}` : "";
      count.textContent = search.value ? `${data.matched} of ${data.total} entries match${shown}`
        : (data.total ? `Showing ${data.offset + 1}\u2013${data.offset + data.entries.length} of ${data.total}` : "");
      const go = (p) => { page = p; refresh(); };
      fill(results, data.entries.length ? entriesTable(data)
        : el("p", {class: "empty", text: search.value ? "No entry matches." : "No entries."}),
      pager(data.offset, data.limit, data.matched, go));
    }
    return refresh;
  }

  // ------------------------------------------------------------------------ the commit log

  function counts(c) {
    return el("span", {class: "counts"}, el("span", {class: "ins", text: `+${c.inserted} inserted`}),
      el("span", {class: "upd", text: `~${c.updated} updated`}), el("span", {class: "del", text: `\u2212${c.deleted} deleted`}));
  }

  function statusBadge(c) {
    const label = {applied: "applied", refused: "refused", received: "not applied"}[c.status] || c.status;
    return el("span", {class: `badge ${c.status}`, title: c.message || label, text: label});
  }

  function mode(c) { return (c.append ? "append" : "replace") + (c.extend ? ", extend" : ""); }

  function commitRow(c) {
    const open = () => { window.location.hash = `#/commit/${c.seq}`; };
    return el("tr", {class: "link", onclick: open, "data-seq": c.seq},
      el("td", {class: "num"}, el("a", {href: `#/commit/${c.seq}`, text: `#${c.seq}`})),
      el("td", {}, when(c.receivedAt)),
      el("td", {text: `#${c.dataSourceId} ${c.dataSourceName}`}),
      el("td", {}, statusBadge(c), c.message ? el("div", {class: "crumbs", text: c.message}) : null),
      el("td", {class: "num", text: c.inserted}), el("td", {class: "num", text: c.updated}),
      el("td", {class: "num", text: c.deleted}),
      el("td", {class: "num", text: `${c.sentEntries} / ${c.sentDeletes}`}), el("td", {text: mode(c)}));
  }

  function commitsScreen(r) {
    const filter = el("select", {id: "ds-filter", "aria-label": "Data source"}, el("option", {value: "", text: "All data sources"}));
    const count = el("span", {class: "count"});
    const results = el("div");
    let page = Number(r.params.get("page") || 1);
    let ds = r.params.get("ds") || "";
    filter.addEventListener("change", () => { ds = filter.value; page = 1; refresh(); });
    mount(el("h1", {text: "Commit log"}),
      el("p", {class: "meta", text: "Every commit the sandbox received, newest first (the last 1,000 are kept). " +
        "Open one to see each entry's change, before \u2192 after."}),
      el("div", {class: "toolbar"}, filter, count), results);
    async function refresh() {
      const params = new URLSearchParams();
      if (ds) params.set("ds", ds);
      if (page > 1) params.set("page", page);
      setHash("/commits", params);
      const query = new URLSearchParams({offset: (page - 1) * PAGE, limit: PAGE});
      if (ds) query.set("dataSourceId", ds);
      const [index, log] = await Promise.all([getJSON("/_console/api/index"), getJSON(`/_console/api/commits?${query}`)]);
      if (!log.commits.length && page > 1 && log.total) {
        page = Math.ceil(log.total / PAGE);
        return refresh();
      }
      fill(filter, el("option", {value: "", text: "All data sources"}), index.dataSources.map((s) =>
        el("option", {value: s.id, selected: String(s.id) === ds, text: `#${s.id} ${s.name}`})));
      count.textContent = `${log.total} commit(s)`;
      const head = el("tr", {}, ["#", "Received", "Data source", "Status", "Inserted", "Updated", "Deleted",
        "Sent entries / deletes", "Mode"].map((h, i) => el("th", {class: i >= 4 && i <= 7 ? "num" : null, text: h})));
      fill(results, log.commits.length
        ? el("div", {class: "scroll"}, el("table", {class: "grid commits"}, el("thead", {}, head),
          el("tbody", {}, log.commits.map(commitRow))))
        : el("p", {class: "empty", text: "No commit received yet."}),
      pager(log.offset, log.limit, log.total, (p) => { page = p; refresh(); }));
    }
    return refresh;
  }

  // ---------------------------------------------------------------------------- one commit

  function side(row, which, changed) {
    const missing = row[`${which}Missing`];
    return el("td", {class: `${which}${changed ? " changed" : ""}`},
      missing ? el("span", {class: "missing", text: "(none)"}) : cell(row[which], false));
  }

  // The entry in its data source's view (found by the search for its id); a deleted one is not there.
  function entryLink(change, ds) {
    if (change.op === "delete") return `#${change.entryId}`;
    return el("a", {href: `#/ds/${ds}?search=%23${change.entryId}`, title: "Show this entry now", text: `#${change.entryId}`});
  }

  // An update, one row per changed column: before → after (the unchanged ones only counted).
  function changeRows(change, ds) {
    const span = change.columns.length + (change.sameColumns ? 1 : 0);
    const rows = change.columns.map((row, i) => el("tr", {class: i === 0 ? "entry-start" : null},
      i === 0 ? el("td", {class: "entry-id", rowspan: span}, entryLink(change, ds)) : null,
      el("td", {class: "column", text: row.column}), side(row, "before", true),
      el("td", {class: "arrow", text: "\u2192"}), side(row, "after", true)));
    if (!rows.length) {
      rows.push(el("tr", {class: "entry-start"}, el("td", {class: "entry-id"}, entryLink(change, ds)),
        el("td", {colspan: 4, class: "empty", text: "no column changed"})));
    } else if (change.sameColumns) {
      rows.push(el("tr", {}, el("td", {colspan: 4, class: "empty", text: `${change.sameColumns} other column(s) unchanged`})));
    }
    return rows;
  }

  function changesTable(changes, ds) {
    return el("div", {class: "scroll"}, el("table", {class: "grid changes"},
      el("thead", {}, el("tr", {}, el("th", {class: "entry-id", text: "Entry ID"}), el("th", {text: "Column"}),
        el("th", {text: "Before"}), el("th", {class: "arrow", text: ""}), el("th", {text: "After"}))),
      el("tbody", {}, changes.map((change) => changeRows(change, ds)))));
  }

  // Inserted or deleted entries: one row each, their data as a grid (after for inserts, before for deletes).
  function wholeEntriesTable(changes, ds, side) {
    const columns = [...new Set(changes.flatMap((ch) => ch.columns.map((row) => row.column)))];
    const files = fileColumns(columns);
    const rows = changes.map((ch) => {
      const data = Object.fromEntries(ch.columns.map((row) => [row.column, row[side]]));
      return el("tr", {}, el("td", {class: "entry-id"}, entryLink(ch, ds)),
        columns.map((col) => el("td", {class: side === "after" ? "after changed" : "before changed"},
          col in data ? cell(data[col], files.has(col)) : el("span", {class: "missing", text: "\u2014"}))));
    });
    return el("div", {class: "scroll"}, el("table", {class: `grid whole ${side}`},
      el("thead", {}, el("tr", {}, el("th", {class: "entry-id", text: "Entry ID"}), columns.map((col) => el("th", {text: col})))),
      el("tbody", {}, rows)));
  }

  // A page of changes: updates column by column (before → after), then inserts, then deletes as grids.
  function changeSections(changes, ds) {
    const of = (op) => changes.filter((ch) => ch.op === op);
    const [updates, inserts, deletes] = [of("update"), of("insert"), of("delete")];
    return [
      updates.length ? [el("h3", {text: `Updated (${updates.length})`}), changesTable(updates, ds)] : null,
      inserts.length ? [el("h3", {text: `Inserted (${inserts.length})`}), wholeEntriesTable(inserts, ds, "after")] : null,
      deletes.length ? [el("h3", {text: `Deleted (${deletes.length})`}), wholeEntriesTable(deletes, ds, "before")] : null,
    ];
  }

  function facts(c) {
    const pairs = [["Data source", el("a", {href: `#/ds/${c.dataSourceId}`, text: `#${c.dataSourceId} ${c.dataSourceName}`})],
      ["Received", when(c.receivedAt)], ["Applied", when(c.appliedAt)], ["Status", statusBadge(c)],
      ["Sent", `${plural(c.sentEntries, "entry", "entries")}, ${plural(c.sentDeletes, "deletion", "deletions")} ` +
        `(${mode(c)})`], ["Result", counts(c)]];
    if (c.message) pairs.push(["Note", c.message]);
    if (c.via === "direct") pairs.push(["Via", "a Python call on the sandbox's store (not an HTTP request)"]);
    return el("dl", {class: "facts"}, pairs.map(([k, v]) => [el("dt", {text: k}), el("dd", {}, v)]));
  }

  function commitScreen(r) {
    const seq = r.id;
    const body = el("div");
    let page = Number(r.params.get("page") || 1);
    mount(el("p", {class: "crumbs"}, el("a", {href: "#/commits", text: "Commit log"}), " \u203a ", `#${seq}`),
      el("h1", {text: `Commit #${seq}`}), body);
    async function refresh() {
      setHash(`/commit/${seq}`, new URLSearchParams(page > 1 ? {page} : {}));
      const query = new URLSearchParams({offset: (page - 1) * CHANGES_PAGE, limit: CHANGES_PAGE});
      const c = await getJSON(`/_console/api/commits/${seq}?${query}`);
      const dropped = c.changesDropped ? el("p", {class: "meta", text: `${c.changesDropped} change(s) of this commit ` +
        "are no longer kept (the log keeps the details of its newest changes only)."}) : null;
      const paged = () => (c.changesKept > CHANGES_PAGE
        ? pager(c.changesOffset, c.changesLimit, c.changesKept, (p) => { page = p; refresh(); }) : null);
      fill(body, facts(c), el("h2", {text: `Changes (${c.changesKept})`}), paged(),
        c.changes.length ? changeSections(c.changes, c.dataSourceId) : el("p", {class: "empty", text: c.status === "applied"
          ? "This commit changed no entry." : "Nothing was applied."}), paged(), dropped);
    }
    return refresh;
  }

  // ------------------------------------------------------------------------- navigation

  const SCREENS = {index: indexScreen, ds: sourceScreen, commits: commitsScreen, commit: commitScreen};

  function markNav(name) {
    for (const link of document.querySelectorAll("header nav a")) {
      const on = link.dataset.nav === (name === "index" || name === "ds" ? "index" : "commits");
      link.classList.toggle("current", on);
    }
  }

  async function show() {
    const r = route();
    const make = SCREENS[r.name] || indexScreen;
    markNav(r.name);
    document.title = "Fliplet sandbox";
    const refresh = make(r);
    screen = {refresh};
    try { await refresh(); } catch (error) { view.append(fail(error)); }
  }

  async function poll() {
    if (document.hidden) return;
    try {
      const index = await getJSON("/_console/api/index");
      const changed = version !== null && index.version !== version;
      version = index.version;
      const d = new Date();
      live.classList.remove("stale");
      live.textContent = `Live \u00b7 checked ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
      if (changed && screen) await screen.refresh();
    } catch (error) {
      live.classList.add("stale");
      live.textContent = `Not updating: ${error.message}`;
    }
  }

  window.addEventListener("hashchange", show);
  show().then(poll);
  setInterval(poll, POLL_MS);
})();
