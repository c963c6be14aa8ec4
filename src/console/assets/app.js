// The liaison officer's console: live feed, search, detail, acknowledge,
// compose, map, status; English and Russian. Alert contents are untrusted:
// they only ever reach the page as text (dom.js).

import { $, $$, api, el, post, replace } from "./dom.js";
import { language, setLanguage, t, time } from "./i18n.js";
import * as map from "./map.js";
import * as compose from "./compose.js";

const state = {
  session: null,
  gazetteer: null,
  feed: new Map(), // id → record summary, the live list
  results: [], // search results
  nextPage: "",
  open: null, // the record shown in detail
  tab: "feed",
  filters: { category: "", min_severity: "", origin_country: "" },
  receipts: null, // EventSource of the open alert's receipts
};

const SEVERITY_RANK = { unknown: 0, minor: 1, moderate: 2, severe: 3, extreme: 4 };

function timeEl(iso) {
  const { text, title } = time(iso);
  return el("time", { datetime: iso || "", title }, text);
}

function tlpBadge(tlp) {
  const name = (tlp || "amber").toLowerCase();
  return el("span", { class: `tlp tlp-${name}` }, `TLP:${name.replace("_", "+").toUpperCase()}`);
}

function statusBadge(status) {
  if (status === "exercise") return el("span", { class: "badge exercise" }, t("exercise"));
  if (status === "test") return el("span", { class: "badge test" }, t("test"));
  return null;
}

function origin(a) {
  const o = a.origin || {};
  return `${o.country || "?"} · ${o.agency || "?"} · ${o.node || "?"}`;
}

/** One row of a list. */
function row(record) {
  const a = record.alert;
  const classes = ["row", `sev-${a.severity}`];
  if (record.unread) classes.push("unread");
  if (state.open && state.open.alert.id === a.id) classes.push("selected");
  if (a.status !== "actual") classes.push("not-actual");
  return el(
    "li",
    {
      class: classes.join(" "),
      tabindex: 0,
      dataset: { id: a.id },
      onclick: () => openAlert(a.id),
      onkeydown: (e) => e.key === "Enter" && openAlert(a.id),
    },
    el(
      "div",
      { class: "row-top" },
      tlpBadge(a.marking && a.marking.tlp),
      statusBadge(a.status),
      el("span", { class: "sev" }, t(`severity.${a.severity}`)),
      el("span", { class: "muted" }, `${t(`urgency.${a.urgency}`)} · ${t(`certainty.${a.certainty}`)}`),
      el("span", { class: "cat" }, t(`category.${a.category}`)),
      record.unread ? el("span", { class: "dot", title: t("new") }, "●") : null,
    ),
    el("div", { class: "headline" }, a.headline),
    el("div", { class: "row-bottom muted" }, el("span", {}, origin(a)), timeEl(record.received_at)),
  );
}

function passes(record) {
  const a = record.alert;
  const f = state.filters;
  if (f.category && a.category !== f.category) return false;
  if (f.min_severity && SEVERITY_RANK[a.severity] < SEVERITY_RANK[f.min_severity]) return false;
  if (f.origin_country && (a.origin || {}).country !== f.origin_country) return false;
  return true;
}

function renderFeed() {
  const list = $("#feed-list");
  const records = [...state.feed.values()].filter(passes).sort((x, y) => y.seq - x.seq);
  replace(list, records.length ? records.map(row) : el("li", { class: "empty" }, t("feed.empty")));
  const unread = [...state.feed.values()].filter((r) => r.unread).length;
  replace($("#unread"), unread ? t("unread", { n: unread }) : "");
  document.title = unread ? `(${unread}) ${t("app.title")}` : t("app.title");
}

function addToFeed(record) {
  const old = state.feed.get(record.alert.id);
  if (old && old.unread === false) record.unread = false;
  state.feed.set(record.alert.id, record);
  map.show(record);
}

async function loadFeed() {
  state.feed.clear();
  map.clear();
  const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
  let page = "";
  for (let i = 0; i < 10; i++) {
    const body = await api(`/api/alerts?since=${encodeURIComponent(since)}&page=${encodeURIComponent(page)}`);
    body.alerts.forEach(addToFeed);
    page = body.next_page;
    if (!page) break;
  }
  renderFeed();
}

/** Live alerts from the console's durable feed. */
function listen() {
  const source = new EventSource(`/api/events?after=${state.session.head}`);
  source.addEventListener("alert", (e) => {
    addToFeed(JSON.parse(e.data));
    renderFeed();
  });
  source.addEventListener("reload", () => loadFeed());
}

async function openAlert(id) {
  let record;
  try {
    record = await api(`/api/alerts/${encodeURIComponent(id)}`);
  } catch (err) {
    replace($("#detail"), el("p", { class: "error" }, t("error", { error: (err.body && err.body.error) || err.status })));
    return;
  }
  state.open = record;
  const known = state.feed.get(id);
  if (known) known.unread = false;
  renderFeed();
  renderResults();
  renderDetail();
  map.show(record);
  map.focus(id);
}

function markingText(m) {
  if (!m) return [];
  const lines = [t(`tlp.${m.tlp}`)];
  if (m.releasable_to && m.releasable_to.length) lines.push(t("tlp.releasable", { list: m.releasable_to.join(", ") }));
  if (m.recipients && m.recipients.length) lines.push(t("tlp.recipients", { list: m.recipients.join(", ") }));
  if (m.handling_codes && m.handling_codes.length) lines.push(t("detail.handling", { codes: m.handling_codes.join(", ") }));
  return lines;
}

function paramValue(p) {
  const v = p.text ?? p.integer ?? p.number ?? p.flag;
  return p.unit ? `${v} ${p.unit}` : String(v);
}

function linkTo(record) {
  if (record.missing) return el("li", {}, t("detail.missing", { id: record.alert.id }));
  const a = record.alert;
  return el(
    "li",
    {},
    el("a", { href: "#", onclick: (e) => (e.preventDefault(), openAlert(a.id)) }, `${t(`msg_type.${a.msg_type}`)}: ${a.headline}`),
    " ",
    timeEl(record.received_at),
  );
}

function section(title, ...body) {
  return el("section", {}, el("h3", {}, title), ...body);
}

function renderDetail() {
  const box = $("#detail");
  const r = state.open;
  if (state.receipts) {
    state.receipts.close();
    state.receipts = null;
  }
  if (!r) {
    replace(box, el("p", { class: "muted" }, t("detail.none")));
    return;
  }
  const a = r.alert;
  const me = state.session.node.split(":");
  const own = a.origin && me.length === 5 && a.origin.country === me[2] && a.origin.agency === me[3];
  const area = a.area;
  const parts = [
    el(
      "div",
      { class: "detail-head" },
      tlpBadge(a.marking && a.marking.tlp),
      statusBadge(a.status),
      el("h2", {}, a.headline),
      el("button", { type: "button", class: "close", onclick: () => ((state.open = null), renderDetail(), renderFeed()) }, t("detail.close")),
    ),
    el(
      "dl",
      { class: "facts" },
      el("dt", {}, t("detail.origin")), el("dd", {}, a.origin ? a.origin.urn : "?"),
      el("dt", {}, t("detail.category")), el("dd", {}, t(`category.${a.category}`)),
      el("dt", {}, t("detail.assessment")), el("dd", {}, `${t(`severity.${a.severity}`)} / ${t(`urgency.${a.urgency}`)} / ${t(`certainty.${a.certainty}`)}`),
      el("dt", {}, t("detail.status")), el("dd", {}, `${t(`status.${a.status}`)} · ${t(`msg_type.${a.msg_type}`)}`),
      el("dt", {}, t("detail.sent")), el("dd", {}, timeEl(a.sent)),
      el("dt", {}, t("detail.received")), el("dd", {}, timeEl(r.received_at)),
      a.expires ? [el("dt", {}, t("detail.expires")), el("dd", {}, timeEl(a.expires))] : null,
      a.incident ? [el("dt", {}, t("detail.incident")), el("dd", {}, a.incident)] : null,
      a.language ? [el("dt", {}, t("detail.language")), el("dd", {}, a.language)] : null,
      el("dt", {}, t("detail.id")), el("dd", { class: "mono" }, a.id),
    ),
    a.description ? section(t("detail.description"), el("p", { class: "pre" }, a.description)) : null,
    a.instruction ? section(t("detail.instruction"), el("p", { class: "pre" }, a.instruction)) : null,
    a.translations && a.translations.length
      ? section(
          t("detail.translations"),
          a.translations.map((tr) => el("div", { class: "translation", lang: tr.language }, el("strong", {}, `[${tr.language}] ${tr.headline}`), tr.description ? el("p", { class: "pre" }, tr.description) : null)),
        )
      : null,
    a.parameters && a.parameters.length
      ? section(
          t("detail.parameters"),
          el(
            "table",
            { class: "params" },
            el("thead", {}, el("tr", {}, el("th", {}, t("detail.param.key")), el("th", {}, t("detail.param.value")))),
            el("tbody", {}, a.parameters.map((p) => el("tr", {}, el("td", { class: "mono" }, p.key), el("td", {}, paramValue(p))))),
          ),
        )
      : null,
    area
      ? section(
          t("detail.area"),
          el(
            "ul",
            {},
            area.description ? el("li", {}, area.description) : null,
            area.crossing_point ? el("li", {}, t("detail.crossing", { code: area.crossing_point })) : null,
            area.border_sector ? el("li", {}, t("detail.sector", { sector: area.border_sector })) : null,
            area.circles.length ? el("li", {}, t("detail.circles", { n: area.circles.length })) : null,
            area.polygons.length ? el("li", {}, t("detail.polygons", { n: area.polygons.length })) : null,
          ),
          el("button", { type: "button", onclick: () => map.focus(a.id) }, t("detail.show_on_map")),
        )
      : null,
    section(t("detail.markings"), markingText(a.marking).map((line) => el("p", {}, line))),
    a.source
      ? section(t("detail.source"), el("p", {}, `${(a.source.reliability || "?").toUpperCase()}${a.source.accuracy || ""}`))
      : null,
    a.attachments && a.attachments.length
      ? section(
          t("detail.attachments"),
          a.attachments.map((at) =>
            el(
              "figure",
              { class: "attachment" },
              at.data_url ? el("img", { src: at.data_url, alt: at.description || at.filename }) : null,
              el(
                "figcaption",
                {},
                `${at.filename} · ${at.mime_type} · ${at.size} B · `,
                el("span", { class: at.digest_ok ? "ok" : "bad" }, at.digest_ok ? t("detail.digest_ok") : t("detail.digest_bad")),
                at.description ? ` · ${at.description}` : "",
              ),
            ),
          ),
        )
      : null,
    r.references && r.references.length ? section(t("detail.references"), el("ul", {}, r.references.map(linkTo))) : null,
    r.referenced_by && r.referenced_by.length ? section(t("detail.referenced_by"), el("ul", {}, r.referenced_by.map(linkTo))) : null,
    section(
      t("detail.proof"),
      r.proof
        ? [
            el("p", {}, t("detail.proof.text", { broker: r.proof.origin_broker, scheme: r.proof.scheme || "?", path: r.proof.path.join(" → ") })),
            r.proof.batch ? el("p", { class: "muted" }, t("detail.proof.batch", { size: r.proof.batch.size, index: r.proof.batch.index + 1 })) : null,
          ]
        : el("p", { class: "muted" }, t("detail.local")),
    ),
    own ? section(t("detail.receipts"), el("ul", { id: "receipts" }, el("li", { class: "muted" }, t("detail.receipts.none")))) : null,
    el(
      "section",
      { class: "ack" },
      el("label", { for: "ack-note" }, t("detail.ack.note")),
      el("textarea", { id: "ack-note", rows: 2, maxlength: 1024 }),
      el("button", { type: "button", id: "ack", onclick: () => acknowledge(a.id) }, t("detail.ack")),
      el("span", { id: "ack-result", role: "status" }),
    ),
    el(
      "section",
      { class: "actions" },
      own ? el("button", { type: "button", onclick: () => followUp(a, "update") }, t("detail.update")) : null,
      own ? el("button", { type: "button", onclick: () => followUp(a, "cancel") }, t("detail.cancel")) : null,
      el("a", { href: `/api/alerts/${encodeURIComponent(a.id)}/cap`, target: "_blank", rel: "noopener" }, t("detail.cap")),
    ),
  ];
  replace(box, el("article", { lang: a.language || "" }, parts));
  if (own) followReceipts(a.id);
}

function followReceipts(id) {
  const seen = [];
  state.receipts = new EventSource(`/api/alerts/${encodeURIComponent(id)}/receipts`);
  state.receipts.addEventListener("receipt", (e) => {
    seen.push(JSON.parse(e.data));
    const list = $("#receipts");
    if (!list) return;
    replace(
      list,
      seen.map((r) =>
        el(
          "li",
          {},
          t(`receipt.${r.kind}`, { who: r.recipient }),
          " ",
          timeEl(r.at),
          r.note ? el("q", {}, r.note) : null,
        ),
      ),
    );
  });
}

async function acknowledge(id) {
  const result = $("#ack-result");
  try {
    const receipt = await post(`/api/alerts/${encodeURIComponent(id)}/ack`, state.session.csrf, { note: $("#ack-note").value });
    replace(result, t("detail.ack.done", { time: time(receipt.at).text }));
    $("#ack").disabled = true;
  } catch (err) {
    replace(result, t("error", { error: (err.body && err.body.error) || err.status }));
  }
}

function followUp(alert, kind) {
  setTab("compose");
  compose.follow($("#compose"), alert, kind);
}

// --- search ---

function renderResults() {
  const list = $("#search-list");
  if (!list) return;
  replace(list, state.results.length ? state.results.map(row) : el("li", { class: "empty" }, t("search.none")));
  replace($("#search-count"), t("search.count", { n: state.results.length }));
  $("#search-more").hidden = !state.nextPage;
}

async function search(more) {
  const form = $("#search-form");
  const q = new URLSearchParams();
  for (const name of ["category", "min_severity", "origin_country", "q"]) {
    if (form.elements[name].value) q.set(name, form.elements[name].value);
  }
  for (const name of ["since", "until"]) {
    const v = form.elements[name].value;
    if (v) q.set(name, new Date(v).toISOString());
  }
  if (form.elements.actual_only.checked) q.set("actual_only", "true");
  if (more) q.set("page", state.nextPage);
  else state.results = [];
  try {
    const body = await api(`/api/alerts?${q}`);
    state.results.push(...body.alerts);
    state.nextPage = body.next_page;
    for (const r of body.alerts) map.show(r);
    renderResults();
  } catch (err) {
    replace($("#search-count"), t("error", { error: (err.body && err.body.error) || err.status }));
  }
}

// --- status ---

async function refreshStatus() {
  let s;
  try {
    s = await api("/api/status");
  } catch {
    replace($("#status"), el("span", { class: "bad" }, t("status.not_serving")));
    return;
  }
  const parts = [
    el("span", { class: s.serving ? "ok" : "bad" }, `${t(s.kind === "agent" ? "status.agent" : "status.broker")}: ${t(s.serving ? "status.serving" : "status.not_serving")}`),
    el("span", { class: s.feed_up ? "ok" : "bad" }, s.feed_up ? t("status.feed_up") : t("status.feed_down", { error: s.feed_error || "…" })),
  ];
  if (s.agent) {
    parts.push(el("span", { class: s.agent.link_state === "up" ? "ok" : "bad" }, t("status.link", { state: s.agent.link_state })));
    parts.push(el("span", {}, t("status.outbox", { n: s.agent.outbox_depth })));
    const contact = s.agent.last_contact ? time(s.agent.last_contact) : { text: t("status.never"), title: "" };
    parts.push(el("span", { title: contact.title }, t("status.last_contact", { time: contact.text })));
  }
  replace($("#status"), parts);
}

// --- layout ---

function setTab(tab) {
  state.tab = tab;
  for (const b of $$("nav [data-tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === tab));
  for (const p of $$("[data-panel]")) p.hidden = p.dataset.panel !== tab;
  map.invalidate();
}

function filterBar() {
  const cats = ["drugs", "arms", "cbrn", "terrorism", "human_smuggling", "migration", "document_fraud", "health", "other"];
  const sevs = ["extreme", "severe", "moderate", "minor"];
  const countries = state.gazetteer.countries.map((c) => c.code);
  const sel = (name, values, label) =>
    el(
      "label",
      {},
      label,
      el(
        "select",
        { name, onchange: (e) => ((state.filters[name] = e.target.value), renderFeed()) },
        el("option", { value: "" }, t("filter.any")),
        values.map((v) => el("option", { value: v, selected: state.filters[name] === v }, name === "origin_country" ? v : t(`${name === "category" ? "category" : "severity"}.${v}`))),
      ),
    );
  return el("div", { class: "filters" }, sel("category", cats, t("filter.category")), sel("min_severity", sevs, t("filter.min_severity")), sel("origin_country", countries, t("filter.origin")));
}

function searchForm() {
  const cats = ["drugs", "arms", "cbrn", "terrorism", "human_smuggling", "migration", "document_fraud", "health", "other"];
  const sevs = ["extreme", "severe", "moderate", "minor"];
  const countries = state.gazetteer.countries.map((c) => c.code);
  const opts = (values, label) => [el("option", { value: "" }, t("filter.any")), values.map((v) => el("option", { value: v }, label(v)))];
  return el(
    "form",
    { id: "search-form", onsubmit: (e) => (e.preventDefault(), search(false)) },
    el("label", {}, t("filter.category"), el("select", { name: "category" }, opts(cats, (v) => t(`category.${v}`)))),
    el("label", {}, t("filter.min_severity"), el("select", { name: "min_severity" }, opts(sevs, (v) => t(`severity.${v}`)))),
    el("label", {}, t("filter.origin"), el("select", { name: "origin_country" }, opts(countries, (v) => v))),
    el("label", {}, t("filter.since"), el("input", { type: "datetime-local", name: "since" })),
    el("label", {}, t("filter.until"), el("input", { type: "datetime-local", name: "until" })),
    el("label", {}, t("filter.text"), el("input", { type: "search", name: "q" })),
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "actual_only" }), t("filter.actual_only")),
    el("button", { type: "submit", id: "search-go" }, t("search.go")),
  );
}

/** Builds the page (header and left column) in the current language; the
 * map and the detail column stay (index.html). */
function render() {
  document.documentElement.lang = language();
  document.title = t("app.title");
  replace(
    $("#app"),
    el(
      "header",
      {},
      el("h1", {}, t("app.title")),
      el("nav", { role: "tablist" }, ["feed", "search", "compose"].map((tab) => el("button", { type: "button", role: "tab", dataset: { tab }, onclick: () => setTab(tab) }, t(`tab.${tab}`)))),
      el("span", { id: "unread", class: "unread" }),
      el("span", { id: "status", class: "status" }),
      el("span", { class: "muted node" }, t("node", { node: state.session.node || state.session.upstream })),
      el("button", { type: "button", id: "lang", onclick: () => (setLanguage(language() === "en" ? "ru" : "en"), render()) }, t("lang.switch")),
    ),
    el(
      "div",
      { class: "left" },
      el("div", { dataset: { panel: "feed" } }, el("p", { class: "muted" }, t("feed.showing")), filterBar(), el("ul", { id: "feed-list", class: "list" })),
      el(
        "div",
        { dataset: { panel: "search" }, hidden: true },
        searchForm(),
        el("p", { id: "search-count", class: "muted" }),
        el("ul", { id: "search-list", class: "list" }),
        el("button", { type: "button", id: "search-more", hidden: true, onclick: () => search(true) }, t("search.more")),
      ),
      el("div", { id: "compose", dataset: { panel: "compose" }, hidden: true }),
    ),
  );
  compose.render($("#compose"), state, state.gazetteer, () => loadFeed());
  setTab(state.tab);
  renderFeed();
  renderResults();
  renderDetail();
  refreshStatus();
}

async function start() {
  setLanguage(language());
  state.session = await api("/api/session");
  state.gazetteer = await api("/api/gazetteer");
  render();
  await map.init($("#map"), openAlert);
  await loadFeed();
  listen();
  setInterval(refreshStatus, 5000);
}

start().catch((err) => {
  replace($("#app"), el("p", { class: "error" }, t("error", { error: (err && err.body && err.body.error) || err })));
});
