// The Mix panel: captions and images (results or uploads), a weight each -> POST /api/v1/images/mix.
"use strict";

const MIX_FIELDS = ["prior_steps", "decoder_steps", "upsampler_steps", "decoder_guidance_scale"];
const mix = { items: [], next: 0 }; // items: {uid, text} or {uid, image}, each with a weight

function addMixItem(item) {
  const most = state.config ? state.config.limits.max_mix_items : 16;
  if (mix.items.length >= most) { showError(`A mix takes at most ${most} items.`, "mix-error"); return null; }
  const entry = { uid: mix.next++, weight: 1, ...item };
  mix.items.push(entry);
  renderMix();
  return entry;
}

function addMixCaption() {
  const entry = addMixItem({ text: "" });
  if (entry) $(`mix-text-${entry.uid}`).focus();
}

function addImageToMix(image) {
  if (addMixItem({ image })) announce(`${describe(image)} added to the mix.`);
}

function removeMixItem(entry) {
  mix.items = mix.items.filter((e) => e !== entry);
  renderMix();
  $("mix-add-text").focus();
}

function renderMix() {
  $("mix-empty").hidden = mix.items.length > 0;
  $("mix-run").disabled = mix.items.length === 0;
  $("mix-items").replaceChildren(...mix.items.map((entry, i) => {
    const n = i + 1;
    const what = entry.image
      ? el("div", {}, thumb(entry.image), el("span", { text: ` Image ${n}: ${describe(entry.image)}` }))
      : el("div", {}, el("label", { for: `mix-text-${entry.uid}`, text: `Caption ${n}` }),
        el("input", { id: `mix-text-${entry.uid}`, type: "text", maxlength: 1000, value: entry.text,
          oninput: (e) => { entry.text = e.target.value; } }));
    const weight = el("div", { class: "weight" }, el("label", { for: `mix-weight-${entry.uid}`, text: `Weight ${n}` }),
      el("input", { id: `mix-weight-${entry.uid}`, type: "number", step: "0.1", value: entry.weight,
        oninput: (e) => { entry.weight = e.target.value; } }));
    const remove = el("button", { type: "button", class: "secondary", text: "Remove", "aria-label": `Remove item ${n} from the mix`,
      onclick: () => removeMixItem(entry) });
    return el("li", { class: "mix-item" }, what, weight, remove);
  }));
}

function readMix() {
  if (!mix.items.length) throw new Error("Add a caption or an image first.");
  const items = mix.items.map((entry, i) => {
    if (entry.image) return { image: { id: entry.image.id } };
    if (!entry.text.trim()) throw new Error(`Caption ${i + 1}: enter a caption, or remove it.`);
    return { text: entry.text };
  });
  const weights = mix.items.map((entry, i) => {
    const w = parseFloat(entry.weight);
    if (!Number.isFinite(w)) throw new Error(`Weight ${i + 1}: enter a number.`);
    return w;
  });
  return { items, weights, ...formSettings(MIX_FIELDS) };
}

function runMix() {
  let body;
  try { body = readMix(); } catch (err) { showError(err.message, "mix-error"); return; }
  runJob("/images/mix", body, "Mix", (job) => addToGallery(job.images), "mix-error");
}

CARD_ACTIONS.push(["Add to mix", addImageToMix]);

document.addEventListener("DOMContentLoaded", () => {
  $("mix-add-text").addEventListener("click", addMixCaption);
  $("mix-run").addEventListener("click", runMix);
  renderMix();
});
