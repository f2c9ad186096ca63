// A self-contained API reference built from /openapi.json (Swagger UI would fetch its assets from a CDN).
"use strict";

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return resolve(spec, schema.$ref.split("/").slice(1).reduce((o, k) => o[k], spec));
  return schema || {};
}

function typeOf(spec, schema) {
  schema = resolve(spec, schema);
  if (schema.anyOf) return schema.anyOf.map((s) => typeOf(spec, s)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return typeOf(spec, schema.items) + "[]";
  return schema.type || schema.title || "object";
}

function bounds(schema) {
  const parts = [];
  for (const [key, label] of [["minimum", "≥"], ["maximum", "≤"], ["minLength", "min length"], ["maxLength", "max length"], ["pattern", "pattern"]]) {
    if (schema[key] !== undefined) parts.push(`${label} ${schema[key]}`);
  }
  for (const s of schema.anyOf || []) parts.push(...bounds(s));
  return parts;
}

function schemaTable(spec, schema) {
  schema = resolve(spec, schema);
  const table = el("table");
  const head = table.insertRow();
  for (const h of ["field", "type", "default", "limits", "description"]) head.appendChild(el("th", h));
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(schema.properties || {})) {
    const row = table.insertRow();
    row.insertCell().appendChild(el("code", name + (required.has(name) ? " *" : "")));
    row.insertCell().textContent = typeOf(spec, prop);
    row.insertCell().textContent = prop.default === undefined ? "" : JSON.stringify(prop.default);
    row.insertCell().textContent = bounds(prop).join(", ");
    row.insertCell().textContent = prop.description || "";
  }
  return table;
}

async function main() {
  const spec = await (await fetch("/openapi.json", { cache: "no-store" })).json();
  document.getElementById("title").textContent = `${spec.info.title} ${spec.info.version}`;
  document.getElementById("description").textContent = spec.info.description || "";
  const ops = document.getElementById("ops");
  ops.replaceChildren();
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const box = el("section", undefined, "op");
      const title = el("h2");
      title.append(el("span", method.toUpperCase(), "method"), el("code", path));
      box.appendChild(title);
      if (op.summary) box.appendChild(el("p", op.summary));
      for (const p of op.parameters || []) box.appendChild(el("p", `${p.in} parameter ${p.name}: ${typeOf(spec, p.schema)}`, "note"));
      const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
      if (body) {
        box.appendChild(el("p", "JSON body (* = required):", "note"));
        box.appendChild(schemaTable(spec, body.schema));
      }
      const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code}${r.description ? " " + r.description : ""}`);
      box.appendChild(el("p", "Responses: " + codes.join(" · "), "note"));
      ops.appendChild(box);
    }
  }
}

document.addEventListener("DOMContentLoaded", () => main().catch((err) => { document.getElementById("ops").textContent = String(err); }));
