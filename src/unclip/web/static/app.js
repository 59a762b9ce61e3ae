// unclip web page: plain JS, no build step, no external resources. Talks to /api/v1 (see /docs).
"use strict";

const API = "/api/v1";
const HISTORY_KEY = "unclip-history";
const HISTORY_MAX = 12;
const DIFF_THETAS = [0, 0.1, 0.2, 0.3, 0.4, 0.5]; // the paper's range; cut to the server's limits (diffThetas)
const $ = (id) => document.getElementById(id);
const state = { config: null, images: new Map(), a: null, b: null, diffSource: null, diffFrames: [], active: [] };
const FIELDS = [ // form input id -> request field, number parser
  ["prior-steps", "prior_steps", parseInt], ["decoder-steps", "decoder_steps", parseInt],
  ["upsampler-steps", "upsampler_steps", parseInt], ["prior-guidance", "prior_guidance_scale", parseFloat],
  ["decoder-guidance", "decoder_guidance_scale", parseFloat],
];
const CARD_ACTIONS = []; // [button text, fn(image)] added to every result card (mix.js, inpaint.js push theirs)

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function announce(text) { $("status").textContent = text; }

// ---------------------------------------------------------------- API

function describeError(status, body, headers) {
  if (status === 429) return `The server is busy; try again in ${headers.get("Retry-After") || "a few"} s.`;
  if (status === 413) return "The request is too large for this server.";
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`).join("; ");
  }
  return detail || `The server answered ${status}.`;
}

async function call(path, options = {}) {
  const response = await fetch(API + path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error(describeError(response.status, body, response.headers));
  return body;
}

// A seed is kept as its digits and sent as a JSON number of any size: a JS number is exact only up to 2**53,
// seeds go up to 2**64 - 1. (Inside JSON strings every quote is escaped, so only the key itself can match.)
const toJSON = (data) => JSON.stringify(data).replace(/"seed":"(\d+)"/g, '"seed":$1');

const post = (path, data) => call(path, {
  method: "POST", headers: { "Content-Type": "application/json" }, body: toJSON(data),
});

// ---------------------------------------------------------------- config and form

async function loadConfig() {
  const config = await call("/config");
  state.config = config;
  $("model-line").textContent = `Model: ${config.model} · ${config.image_size}×${config.image_size} px`;
  const sampler = $("sampler");
  for (const name of config.samplers) sampler.append(el("option", { value: name, text: name }));
  sampler.addEventListener("change", applyStepMinimum);
  $("num-images").max = config.limits.max_images;
  $("frames").max = config.limits.max_frames;
  for (const [id] of FIELDS) $(id).max = id.endsWith("steps") ? config.limits.max_steps : config.limits.max_guidance;
  resetDefaults();
  const thetas = diffThetas();
  $("theta").max = thetas[thetas.length - 1];
}

// The θ values of a text diff: DIFF_THETAS within the server's theta_range, at most max_thetas of them.
function diffThetas() {
  const { theta_range: [low, high], max_thetas: most } = state.config.limits;
  const inside = DIFF_THETAS.filter((t) => t >= low && t <= high);
  if (inside.length <= most) return inside;
  if (most === 1) return [inside[inside.length - 1]];
  return Array.from({ length: most }, (_, i) => inside[Math.round((i * (inside.length - 1)) / (most - 1))]);
}

function resetDefaults() {
  const d = state.config.defaults;
  $("sampler").value = d.sampler;
  for (const [id, field] of FIELDS) $(id).value = d[field];
  applyStepMinimum();
}

// The fewest steps the chosen sampler takes (the server's sampler registry, e.g. 2 for "unclip").
const minSteps = () => (state.config.sampler_min_steps || {})[$("sampler").value] || 1;

function applyStepMinimum() {
  for (const [id] of FIELDS) if (id.endsWith("steps")) $(id).min = minSteps();
}

// The form's number of images and the seed and settings that differ from the model's defaults.
function readSettings() {
  const count = parseInt($("num-images").value, 10);
  if (!(count >= 1)) throw new Error("Images: enter a whole number of at least 1.");
  const body = {};
  const seed = $("seed").value.trim();
  if (seed !== "") {
    if (!/^\d+$/.test(seed)) throw new Error("Seed: enter a whole number of at least 0, or leave it empty.");
    body.seed = seed.replace(/^0+(?=\d)/, ""); // digits, sent exactly (toJSON); the server checks the range
  }
  const d = state.config.defaults;
  if ($("sampler").value !== d.sampler) body.sampler = $("sampler").value;
  for (const [id, field, parse] of FIELDS) {
    const value = parse($(id).value, 10);
    if (Number.isNaN(value)) throw new Error(`${$(id).labels[0].textContent}: enter a number.`);
    if (id.endsWith("steps") && value < minSteps()) {
      throw new Error(`${$(id).labels[0].textContent}: the ${$("sampler").value} sampler needs at least ${minSteps()}.`);
    }
    if (value !== d[field]) body[field] = value;
  }
  return [count, body];
}

function readForm() {
  const prompt = $("prompt").value;
  if (!prompt.trim()) throw new Error("Enter a prompt first.");
  const [count, settings] = readSettings();
  const body = { prompt, num_images_per_prompt: count, ...settings };
  if ($("negative").value.trim()) body.negative_prompt = $("negative").value;
  return body;
}

// For mix and inpaint requests: the form's number of images, seed and those settings that `fields` names.
function formSettings(fields) {
  const [count, settings] = readSettings();
  const body = { num_images: count };
  for (const [k, v] of Object.entries(settings)) if (k === "seed" || fields.includes(k)) body[k] = v;
  return body;
}

// ---------------------------------------------------------------- CLI command

const quote = (s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : `'${String(s).replace(/'/g, `'\\''`)}'`);
const fileOf = (id) => `unclip-${id}.png`;

function cliCommand(p) {
  const d = state.config.defaults;
  const args = ["unclip"];
  const opt = (flag, value, fallback) => { if (value !== fallback && value !== null && value !== undefined) args.push(flag, quote(String(value))); };
  if (p.kind === "generate") {
    args.push("generate", quote(p.prompt), "-n", String(p.num_images_per_prompt));
    opt("--sampler", p.sampler, d.sampler);
    opt("--prior-steps", p.prior_steps, d.prior_steps);
    opt("--decoder-steps", p.decoder_steps, d.decoder_steps);
    opt("--upsampler-steps", p.upsampler_steps, d.upsampler_steps);
    opt("--prior-guidance", p.prior_guidance_scale, d.prior_guidance_scale);
    opt("--decoder-guidance", p.decoder_guidance_scale, d.decoder_guidance_scale);
    opt("--best-of", p.best_of, d.best_of);
    opt("--eta", p.eta, d.eta);
    opt("--negative", p.negative_prompt, null);
  } else if (p.kind === "mix" || p.kind === "inpaint") {
    if (p.kind === "mix") {
      const items = p.items.map((item) => (typeof item === "string" ? quote(item) : item.image_id ? fileOf(item.image_id) : "image.png"));
      args.push("mix", ...items, "-n", String(p.num_images));
      if (p.weights) args.push("--weights", quote(p.weights.join(" ")));
    } else {
      const mask = p.mask_id ? fileOf(p.mask_id) : "mask.png";
      args.push("inpaint", fileOf(p.image_id), mask, quote(p.prompt), "-n", String(p.num_images));
      args.push("--candidates", String(p.context_candidates));
      if (p.jump_n_sample !== 1) args.push("--jump-length", String(p.jump_length), "--jump-n-sample", String(p.jump_n_sample));
      opt("--prior-guidance", p.prior_guidance_scale, d.prior_guidance_scale);
    }
    opt("--prior-steps", p.prior_steps, d.prior_steps);
    opt("--decoder-steps", p.decoder_steps, d.decoder_steps);
    opt("--upsampler-steps", p.upsampler_steps, d.upsampler_steps);
    opt("--decoder-guidance", p.decoder_guidance_scale, d.decoder_guidance_scale);
  } else {
    if (p.kind === "variations") {
      args.push("vary", fileOf(p.image_id), "-n", String(p.num_images));
      opt("--eta", p.eta, 1);
    } else if (p.kind === "interpolate") {
      args.push("interpolate", fileOf(p.image_a_id), fileOf(p.image_b_id), "--frames", String(p.num_frames));
      opt("--noise", p.noise, "fixed");
    } else if (p.kind === "text-diff") {
      args.push("edit", fileOf(p.image_id), "--to", quote(p.to_text));
      if (p.from_text) args.push("--from", quote(p.from_text));
      for (const t of p.thetas) args.push("--theta", String(t));
    }
    opt("--decoder-steps", p.decoder_steps, d.inversion_steps);
    opt("--decoder-guidance", p.decoder_guidance_scale, d.decoder_guidance_scale);
  }
  args.push("--seed", String(p.seed));
  if (p.model && p.model !== "shapes") args.push("--model", quote(p.model));
  args.push("-o", "out");
  return args.join(" ");
}

function showCli(params, index) {
  $("cli").value = cliCommand(params);
  const files = params.kind === "generate" ? ""
    : params.kind === "inpaint" && !params.mask_id ? " Download the image (its PNG link) and the mask (under Inpaint) first, under the names shown."
      : " Download the input images first (the PNG links) under the names shown.";
  $("cli-note").textContent = (index === undefined ? "" : `This image is out/${String(index).padStart(4, "0")}.png.`) + files;
}

async function copyCli() {
  const text = $("cli").value;
  if (!text) { announce("Nothing to copy yet: generate something first."); return; }
  try { await navigator.clipboard.writeText(text); announce("Command copied to the clipboard."); }
  catch (e) { $("cli").select(); announce("Copying was refused: the command is selected, press Ctrl+C."); }
}

// ---------------------------------------------------------------- jobs

const STAGES = { prior: "Prior", decoder: "Decoder", ddim_inversion: "Inverting the image" };
const stageName = (s) => STAGES[s] || s.replace(/^upsampler_(\d+)$/, "Upsampler $1");

// Submit a job and follow its events; a refused request's message goes to the paragraph `errorId`.
async function runJob(path, body, label, onDone, errorId = "form-error") {
  let job;
  try { job = await post(path, body); } catch (err) { announce(`${label}: ${err.message}`); showError(err.message, errorId); return null; }
  showError("", errorId);
  remember(path, body, label);
  state.active.push(job.id);
  showCli(job.params);
  const text = el("span", { class: "job-text", text: "queued" });
  const bar = el("progress", { max: 1, value: 0, "aria-label": `Progress of ${label}` });
  const cancel = el("button", { type: "button", class: "secondary", text: "Cancel", "aria-label": `Cancel ${label}`,
    onclick: () => call(`/jobs/${job.id}/cancel`, { method: "POST" }).catch((e) => announce(e.message)) });
  const item = el("li", { class: "job", "data-job": job.id, "data-created": job.created }, el("strong", { text: label }), " ", text, bar, cancel);
  // Newest first, in the server's order: two requests in flight may answer in either order.
  const older = [...$("jobs").children].find((li) => Number(li.dataset.created) < job.created);
  $("jobs").insertBefore(item, older || null);
  announce(`${label}: queued.`);
  const finish = (message, keep) => {
    text.textContent = message; cancel.remove(); announce(`${label}: ${message}`);
    state.active = state.active.filter((id) => id !== job.id);
    if (!keep) setTimeout(() => item.remove(), 1500);
  };
  const source = new EventSource(`${API}/jobs/${job.id}/events`);
  const on = (name, fn) => source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  on("queued", (d) => { text.textContent = `waiting, position ${d.position} in the queue`; announce(`${label}: waiting, position ${d.position}.`); });
  on("started", () => { text.textContent = "started"; announce(`${label}: started.`); });
  on("progress", (d) => { text.textContent = `${stageName(d.stage)}: step ${d.step} of ${d.total}`; bar.max = d.total; bar.value = d.step; });
  on("done", (d) => { source.close(); bar.value = bar.max; finish(`done, ${d.images.length} image(s).`); onDone(d); });
  on("error", (d) => { source.close(); finish(`failed: ${d.message}`, true); });
  on("cancelled", () => { source.close(); finish("cancelled."); });
  return job;
}

function showError(message, id = "form-error") { $(id).textContent = message; }

// ---------------------------------------------------------------- gallery

function describe(image) {
  const p = image.params;
  if (p.kind === "generate") return p.prompt;
  if (p.kind === "variations") return "Variation";
  if (p.kind === "mix") return "Mix";
  if (p.kind === "inpaint") return `Inpainted: ${p.prompt}`;
  if (p.kind === "upload") return `Your image${p.filename ? " " + p.filename : ""}`;
  return p.kind;
}

function seedText(image) {
  const p = image.params;
  if (p.kind === "upload") return "uploaded";
  const n = p.num_images_per_prompt || p.num_images || 1;
  return `seed ${p.seed} · ${image.index + 1} of ${n}`;
}

function thumb(image, cls) {
  return el("img", { src: image.url, alt: `${describe(image)}, ${seedText(image)}`, width: image.width, height: image.height, class: cls || "" });
}

function addToGallery(images) {
  const gallery = $("gallery");
  $("gallery-empty").hidden = true;
  for (const image of [...images].reverse()) {
    state.images.set(image.id, image);
    const name = `${describe(image)} (${seedText(image)})`;
    const button = (text, fn) => el("button", { type: "button", class: "secondary", text, "aria-label": `${text}: ${name}`, onclick: () => fn(image) });
    const card = el("li", { class: "card", "data-image": image.id },
      el("figure", {}, thumb(image), el("figcaption", {}, el("span", { class: "caption", text: describe(image) }), el("span", { class: "seed", text: seedText(image) }))),
      el("div", { class: "actions" },
        el("a", { href: image.download_url, download: fileOf(image.id), text: "Download PNG", "aria-label": `Download PNG: ${name}` }),
        button("Vary this image", vary), button("Use as A", (i) => choose("a", i)), button("Use as B", (i) => choose("b", i)),
        button("Text diff", chooseDiff), ...CARD_ACTIONS.map(([text, fn]) => button(text, fn)),
        image.params.kind === "upload" ? null : button("Copy as CLI command", (i) => { showCli(i.params, i.index); copyCli(); })));
    gallery.prepend(card);
  }
}

function vary(image) {
  const label = `Variations of ${describe(image)}`;
  runJob("/images/variations", { image: { id: image.id }, num_images: parseInt($("num-images").value, 10) || 4 }, label,
    (job) => addToGallery(job.images));
}

function fillSlot(slot, image, title) {
  slot.replaceChildren(thumb(image, "small"), el("figcaption", { text: `${title}: ${describe(image)}, ${seedText(image)}` }));
}

function choose(which, image) {
  state[which] = image;
  fillSlot($(`interp-${which}`), image, which.toUpperCase());
  $("interp-run").disabled = !(state.a && state.b);
  announce(`${which.toUpperCase()} chosen for the interpolation.`);
}

function interpolate() {
  const body = { image_a: { id: state.a.id }, image_b: { id: state.b.id }, num_frames: parseInt($("frames").value, 10) || 5 };
  runJob("/images/interpolate", body, "Interpolation", (job) => {
    $("interp-strip").replaceChildren(...job.images.map((image) => el("li", {},
      el("figure", {}, thumb(image, "small"), el("figcaption", { text: `θ = ${image.params.theta.toFixed(2)}` })),
      el("a", { href: image.download_url, download: fileOf(image.id), text: "PNG", "aria-label": `Download frame ${image.index + 1} as PNG` }))));
  });
}

function chooseDiff(image) {
  state.diffSource = image;
  fillSlot($("diff-source"), image, "Image");
  $("diff-from").value = image.params.prompt || "";
  $("diff-run").disabled = false;
  $("diff-to").focus();
}

function textDiff() {
  const to = $("diff-to").value;
  if (!to.trim()) { announce("Text diff: enter the “To” caption first."); $("diff-to").focus(); return; }
  const thetas = diffThetas();
  const body = { image: { id: state.diffSource.id }, to_text: to, thetas };
  if ($("diff-from").value.trim()) body.from_text = $("diff-from").value;
  runJob("/images/text-diff", body, `Text diff to “${to}”`, (job) => {
    state.diffFrames = job.images;
    const slider = $("theta");
    slider.disabled = false;
    slider.value = thetas[thetas.length - 1];
    showDiffFrame();
  });
}

function showDiffFrame() {
  const slider = $("theta");
  const theta = Number(slider.value);
  $("theta-value").textContent = `θ = ${theta.toFixed(1)}`;
  slider.setAttribute("aria-valuetext", `θ = ${theta.toFixed(1)}`);
  if (!state.diffFrames.length) return;
  let best = state.diffFrames[0];
  for (const f of state.diffFrames) if (Math.abs(f.params.theta - theta) < Math.abs(best.params.theta - theta)) best = f;
  const img = $("diff-image");
  img.src = best.url;
  img.alt = `Text diff toward “${best.params.to_text}” at θ = ${best.params.theta.toFixed(1)}`;
  img.dataset.theta = String(best.params.theta);
  $("diff-caption").textContent = `θ = ${best.params.theta.toFixed(1)} · seed ${best.params.seed}`;
  $("diff-download").href = best.download_url;
  $("diff-download").setAttribute("download", fileOf(best.id));
  $("diff-view").hidden = false;
}

// POST one image file to /uploads and add it to the gallery; returns the stored image record.
async function uploadImage(file) {
  const data = new FormData();
  data.append("file", file);
  const image = await call("/uploads", { method: "POST", body: data });
  addToGallery([image]);
  return image;
}

async function upload(input) {
  const file = input.files[0];
  if (!file) return;
  try {
    await uploadImage(file);
    announce(`Added ${file.name}.`);
  } catch (err) { announce(`Upload: ${err.message}`); }
  input.value = "";
}

// ---------------------------------------------------------------- history

const loadHistory = () => { try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch (e) { return []; } };

function remember(path, body, label) {
  const entries = [{ path, body, label, time: Date.now() }, ...loadHistory()].slice(0, HISTORY_MAX);
  const small = (k, v) => (k === "data" && typeof v === "string" && v.length > 256 ? "(image data, not kept)" : v);
  try { localStorage.setItem(HISTORY_KEY, JSON.stringify(entries, small)); } catch (e) { /* private mode, full */ }
  renderHistory();
}

function restore(entry) {
  const b = entry.body;
  $("prompt").value = b.prompt;
  $("negative").value = b.negative_prompt || "";
  $("num-images").value = b.num_images_per_prompt;
  $("seed").value = b.seed === undefined ? "" : b.seed;
  resetDefaults();
  if (b.sampler) $("sampler").value = b.sampler;
  applyStepMinimum();
  for (const [id, field] of FIELDS) if (b[field] !== undefined) $(id).value = b[field];
  $("prompt").focus();
  announce("Settings restored into the form.");
}

function renderHistory() {
  const entries = loadHistory();
  $("history-empty").hidden = entries.length > 0;
  $("history").replaceChildren(...entries.map((e) => {
    const when = new Date(e.time).toLocaleTimeString();
    const text = e.body.prompt ? `${e.label}: “${e.body.prompt}”${e.body.seed !== undefined ? `, seed ${e.body.seed}` : ""}` : e.label;
    const again = e.path === "/images/generate"
      ? el("button", { type: "button", class: "secondary", text: "Use again", "aria-label": `Use again: ${text}`, onclick: () => restore(e) })
      : null;
    return el("li", {}, el("span", { text: `${when} · ${text}` }), " ", again);
  }));
}

// ---------------------------------------------------------------- wiring

function generate(event) {
  event.preventDefault();
  let body;
  try { body = readForm(); } catch (err) { showError(err.message); $("prompt").focus(); return; }
  runJob("/images/generate", body, "Generate", (job) => addToGallery(job.images));
}

document.addEventListener("DOMContentLoaded", async () => {
  $("gen-form").addEventListener("submit", generate);
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("gen-form").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => {
    const latest = state.active[state.active.length - 1];
    if (e.key === "Escape" && latest) call(`/jobs/${latest}/cancel`, { method: "POST" }).catch(() => {});
  });
  $("reset-defaults").addEventListener("click", resetDefaults);
  $("interp-run").addEventListener("click", interpolate);
  $("diff-run").addEventListener("click", textDiff);
  $("theta").addEventListener("input", showDiffFrame);
  $("copy-cli").addEventListener("click", copyCli);
  $("upload").addEventListener("change", (e) => upload(e.target));
  $("clear-history").addEventListener("click", () => { localStorage.removeItem(HISTORY_KEY); renderHistory(); });
  renderHistory();
  try { await loadConfig(); document.body.dataset.ready = "1"; }
  catch (err) { $("model-line").textContent = `Cannot reach the server: ${err.message}`; }
});
