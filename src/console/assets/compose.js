// Writing an alert: the form, the JSON the console publishes (the same
// shape as `liaison publish --json`), and the broker's refusal shown next
// to the field it names. Nothing typed is lost on a refused submit.

import { $, $$, el, post, replace } from "./dom.js";
import { t } from "./i18n.js";
import * as map from "./map.js";

const CATEGORIES = ["drugs", "arms", "cbrn", "terrorism", "human_smuggling", "migration", "document_fraud", "health", "other"];
const SEVERITIES = ["extreme", "severe", "moderate", "minor", "unknown"];
const URGENCIES = ["immediate", "expected", "future", "past", "unknown"];
const CERTAINTIES = ["observed", "likely", "possible", "unlikely", "unknown"];
const TLPS = ["clear", "green", "amber", "amber_strict", "red"];

function select(name, values, label, selected) {
  return el(
    "select",
    { name, id: `compose-${name}` },
    values.map((v) => el("option", { value: v, selected: v === selected }, label(v))),
  );
}

function field(name, label, input) {
  return el(
    "div",
    { class: "field", dataset: { field: name } },
    el("label", { for: `compose-${name}` }, label),
    input,
    el("div", { class: "field-error", role: "alert" }),
  );
}

/** Builds the form into `root`; `state.session` gives the CSRF token. */
export function render(root, state, gazetteer, onSent) {
  const keep = formValues(root);
  const crossings = gazetteer ? gazetteer.crossings : [];
  const form = el(
    "form",
    { id: "compose-form", novalidate: true },
    el("h2", {}, t("compose.title")),
    el(
      "div",
      { class: "grid" },
      field("category", t("compose.category"), select("category", CATEGORIES, (v) => t(`category.${v}`), "drugs")),
      field("severity", t("compose.severity"), select("severity", SEVERITIES, (v) => t(`severity.${v}`), "severe")),
      field("urgency", t("compose.urgency"), select("urgency", URGENCIES, (v) => t(`urgency.${v}`), "expected")),
      field("certainty", t("compose.certainty"), select("certainty", CERTAINTIES, (v) => t(`certainty.${v}`), "likely")),
      field("status", t("compose.status"), select("status", ["actual", "exercise", "test"], (v) => t(`status.${v}`), "actual")),
      field("msg_type", t("compose.msg_type"), select("msg_type", ["alert", "update", "cancel"], (v) => t(`msg_type.${v}`), "alert")),
    ),
    field("references", t("compose.references"), el("input", { name: "references", id: "compose-references" })),
    field("headline", t("compose.headline"), el("input", { name: "headline", id: "compose-headline", maxlength: 256 })),
    field("description", t("compose.description"), el("textarea", { name: "description", id: "compose-description", rows: 4 })),
    field("instruction", t("compose.instruction"), el("textarea", { name: "instruction", id: "compose-instruction", rows: 2 })),
    field("parameters", t("compose.parameters"), el("textarea", { name: "parameters", id: "compose-parameters", rows: 3 })),
    el(
      "div",
      { class: "grid" },
      field("tlp", t("compose.tlp"), select("tlp", TLPS, (v) => `TLP:${v.replace("_", "+").toUpperCase()}`, "amber")),
      field("language", t("compose.language"), el("input", { name: "language", id: "compose-language", value: document.documentElement.lang })),
    ),
    field("releasable_to", t("compose.releasable_to"), el("input", { name: "releasable_to", id: "compose-releasable_to" })),
    field("recipients", t("compose.recipients"), el("input", { name: "recipients", id: "compose-recipients" })),
    el(
      "div",
      { class: "grid" },
      field(
        "crossing_point",
        t("compose.crossing"),
        el(
          "select",
          { name: "crossing_point", id: "compose-crossing_point" },
          el("option", { value: "" }, t("compose.none")),
          crossings.map((x) => el("option", { value: x.code }, `${x.name} (${x.code})`)),
        ),
      ),
      field(
        "point",
        t("compose.point"),
        el(
          "div",
          { class: "point" },
          el("input", { name: "latitude", id: "compose-point", placeholder: "lat", inputmode: "decimal" }),
          el("input", { name: "longitude", placeholder: "lon", inputmode: "decimal" }),
          el(
            "button",
            {
              type: "button",
              id: "compose-pick",
              onclick: (e) => {
                e.target.textContent = t("compose.picking");
                map.pick($("#map"), (lat, lon) => {
                  form.latitude.value = lat.toFixed(4);
                  form.longitude.value = lon.toFixed(4);
                  e.target.textContent = t("compose.pick");
                });
              },
            },
            t("compose.pick"),
          ),
        ),
      ),
      field("radius_km", t("compose.radius"), el("input", { name: "radius_km", id: "compose-radius_km", value: "0", inputmode: "decimal" })),
    ),
    el("div", { class: "actions" }, el("button", { type: "submit", id: "compose-send" }, t("compose.send")), el("span", { id: "compose-result", role: "status" })),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    await submit(form, state, onSent);
  });
  replace(root, form);
  restore(form, keep);
}

/** Fills the form to update or cancel `alert` (references set). */
export function follow(root, alert, kind) {
  const form = $("#compose-form", root);
  if (!form) return;
  form.msg_type.value = kind;
  form.references.value = alert.id;
  form.category.value = alert.category;
  form.tlp.value = alert.marking ? alert.marking.tlp : "amber";
  form.releasable_to.value = alert.marking ? alert.marking.releasable_to.join(", ") : "";
  form.headline.value = "";
  form.headline.focus();
}

function formValues(root) {
  const form = $("#compose-form", root);
  if (!form) return null;
  return Object.fromEntries($$("input, select, textarea", form).map((i) => [i.name, i.value]));
}

function restore(form, values) {
  if (!values) return;
  for (const [name, value] of Object.entries(values)) {
    if (form.elements[name]) form.elements[name].value = value;
  }
}

const list = (s) =>
  s
    .split(/[,\n]/)
    .map((x) => x.trim())
    .filter(Boolean);

/** `key=value` lines as typed facts, as the command line reads them. */
function parameters(text) {
  return list(text.replace(/\n/g, ",")).map((line) => {
    const at = line.indexOf("=");
    const key = at < 0 ? line : line.slice(0, at).trim();
    const value = at < 0 ? "" : line.slice(at + 1).trim();
    if (/^-?\d+$/.test(value)) return { key, integer: Number(value) };
    if (/^-?\d*\.\d+$/.test(value)) return { key, number: Number(value) };
    if (value === "true" || value === "false") return { key, flag: value === "true" };
    return { key, text: value };
  });
}

function alertOf(form) {
  const v = (name) => form.elements[name].value.trim();
  const alert = {
    status: v("status"),
    msg_type: v("msg_type"),
    references: list(v("references")),
    category: v("category"),
    urgency: v("urgency"),
    severity: v("severity"),
    certainty: v("certainty"),
    headline: v("headline"),
    description: form.elements.description.value,
    instruction: form.elements.instruction.value,
    language: v("language"),
    parameters: parameters(form.elements.parameters.value),
    marking: {
      tlp: v("tlp"),
      releasable_to: list(v("releasable_to")),
      recipients: list(v("recipients")),
      handling_codes: [],
    },
  };
  const lat = v("latitude");
  const lon = v("longitude");
  if (v("crossing_point") || lat || lon) {
    alert.area = { crossing_point: v("crossing_point"), circles: [] };
    if (lat || lon) {
      alert.area.circles.push({
        center: { latitude: Number(lat), longitude: Number(lon) },
        radius_km: Number(v("radius_km") || 0),
      });
    }
  }
  return alert;
}

/** Which field of the form an error's path (alert.marking.tlp) names. */
function fieldOf(path) {
  const name = path.replace(/^alert\./, "").replace(/\[.*$/, "").replace(/\..*$/, "");
  const nested = {
    marking: path.match(/^alert\.marking\.(\w+)/),
    area: path.match(/^alert\.area\.(\w+)/),
  };
  if (name === "marking" && nested.marking) return nested.marking[1];
  if (name === "area" && nested.area) return nested.area[1] === "circles" ? "point" : nested.area[1];
  return name;
}

async function submit(form, state, onSent) {
  for (const e of $$(".field-error", form)) e.textContent = "";
  for (const f of $$(".field.invalid", form)) f.classList.remove("invalid");
  const result = $("#compose-result", form);
  result.textContent = "";
  try {
    const ack = await post("/api/alerts", state.session.csrf, alertOf(form));
    result.textContent = t("compose.sent", { id: ack.id });
    form.reset();
    onSent(ack);
  } catch (err) {
    const body = err.body || {};
    const name = body.field ? fieldOf(body.field) : "";
    const box = name && form.querySelector(`.field[data-field="${CSS.escape(name)}"]`);
    if (box) {
      box.classList.add("invalid");
      $(".field-error", box).textContent = body.error;
      const input = $("input, select, textarea", box);
      if (input) input.focus();
      result.textContent = t("compose.refused", { error: body.error });
    } else {
      result.textContent = t("compose.failed", { error: body.error || err.status || err });
    }
  }
}
