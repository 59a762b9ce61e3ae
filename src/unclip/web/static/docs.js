// Renders /api/v1/openapi.json as a plain page: operations, parameters, request fields, responses.
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function deref(spec, schema) {
  let s = schema || {};
  while (s.$ref) s = spec.components.schemas[s.$ref.split("/").pop()];
  return s;
}

function typeOf(spec, schema) {
  const s = deref(spec, schema);
  if (schema && schema.$ref) return schema.$ref.split("/").pop();
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(" | ");
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.type === "array") return `array of ${typeOf(spec, s.items)}`;
  return s.type || "object";
}

function limits(s) {
  const out = [];
  for (const [k, label] of [["minimum", "≥"], ["maximum", "≤"], ["minLength", "length ≥"], ["maxLength", "length ≤"],
    ["minItems", "items ≥"], ["maxItems", "items ≤"]]) if (s[k] !== undefined) out.push(`${label} ${s[k]}`);
  for (const x of s.anyOf || []) out.push(...limits(x));
  if (s.items) out.push(...limits(s.items).map((t) => `each ${t}`));
  return out;
}

function fieldTable(spec, schema, caption) {
  const s = deref(spec, schema);
  const table = el("table");
  table.append(el("caption", caption));
  const head = table.insertRow();
  for (const h of ["field", "type", "default", "limits", "description"]) head.append(el("th", h));
  const required = new Set(s.required || []);
  for (const [name, prop] of Object.entries(s.properties || {})) {
    const row = table.insertRow();
    row.append(el("td", name + (required.has(name) ? " (required)" : "")), el("td", typeOf(spec, prop)),
      el("td", prop.default === undefined ? "" : JSON.stringify(prop.default)), el("td", limits(prop).join(", ")),
      el("td", prop.description || deref(spec, prop).description || ""));
  }
  return table;
}

async function render() {
  const main = document.getElementById("docs");
  const spec = await (await fetch("/api/v1/openapi.json")).json();
  main.replaceChildren(el("p", `${spec.info.title} ${spec.info.version}: ${spec.info.summary || ""}`));
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const box = el("section", undefined, "op");
      const h = el("h2");
      h.append(el("span", method.toUpperCase(), "method"), ` ${path}`);
      box.append(h, el("p", op.description || op.summary || ""));
      const params = op.parameters || [];
      if (params.length) {
        const table = el("table");
        table.append(el("caption", "Parameters"));
        const head = table.insertRow();
        for (const t of ["name", "in", "type", "description"]) head.append(el("th", t));
        for (const p of params) {
          const row = table.insertRow();
          row.append(el("td", p.name), el("td", p.in), el("td", typeOf(spec, p.schema)), el("td", p.description || ""));
        }
        box.append(table);
      }
      const content = op.requestBody && op.requestBody.content;
      if (content) {
        for (const [type, media] of Object.entries(content)) box.append(fieldTable(spec, media.schema, `Request body (${type})`));
      }
      const responses = el("ul");
      for (const [code, r] of Object.entries(op.responses || {})) {
        const media = r.content && Object.entries(r.content)[0];
        const type = media ? ` ${media[0]}${media[1].schema ? ": " + typeOf(spec, media[1].schema) : ""}` : "";
        responses.append(el("li", `${code} ${r.description || ""}${type}`));
      }
      box.append(el("h3", "Responses"), responses);
      main.append(box);
    }
  }
  const models = el("section", undefined, "op");
  models.append(el("h2", "Schemas"));
  for (const [name, schema] of Object.entries(spec.components.schemas)) {
    if (schema.properties) models.append(fieldTable(spec, schema, name));
  }
  main.append(models);
}

document.addEventListener("DOMContentLoaded", () => render().catch((err) => {
  document.getElementById("docs").textContent = `Cannot load the API description: ${err.message}`;
}));
