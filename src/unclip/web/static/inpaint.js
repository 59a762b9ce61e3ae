// The Inpaint panel: an image, a mask painted over it with the mouse (or pen, or touch), a prompt
// -> POST /api/v1/images/inpaint with the mask as a black-and-white PNG of the image's pixel size (white = repaint).
"use strict";

const INPAINT_FIELDS = ["prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance_scale", "decoder_guidance_scale"];
const PAINT = "#e0007a"; // shown at the canvas's CSS opacity; only the painted pixels' alpha makes the mask
const inpaint = { image: null, painting: false, last: null, painted: false, maskUrl: null };

function chooseInpaint(image) {
  inpaint.image = image;
  const canvas = $("mask-canvas");
  canvas.width = image.width; // the mask is drawn at the image's own pixel size
  canvas.height = image.height;
  const img = $("inpaint-image");
  img.src = image.url;
  img.alt = `To inpaint: ${describe(image)}`;
  $("inpaint-stage").hidden = false;
  $("brush-size").max = Math.max(image.width, image.height);
  clearMask();
  $("inpaint-run").disabled = false;
  announce(`${describe(image)} is ready to inpaint: paint over the part to repaint.`);
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  inpaint.painted = false;
}

// The pointer's position in image pixels.
function canvasPoint(event) {
  const canvas = $("mask-canvas");
  const box = canvas.getBoundingClientRect();
  return [(event.clientX - box.left) * (canvas.width / box.width), (event.clientY - box.top) * (canvas.height / box.height)];
}

function paintTo(point) {
  const ctx = $("mask-canvas").getContext("2d");
  const size = Math.max(1, parseFloat($("brush-size").value) || 1);
  ctx.strokeStyle = ctx.fillStyle = PAINT;
  ctx.lineWidth = size;
  ctx.lineCap = ctx.lineJoin = "round";
  const [x0, y0] = inpaint.last || point;
  ctx.beginPath();
  ctx.arc(point[0], point[1], size / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x0, y0);
  ctx.lineTo(point[0], point[1]);
  ctx.stroke();
  inpaint.last = point;
  inpaint.painted = true;
}

function startStroke(event) {
  if (!inpaint.image || event.button !== 0) return;
  event.preventDefault();
  $("mask-canvas").setPointerCapture(event.pointerId);
  inpaint.painting = true;
  inpaint.last = null;
  paintTo(canvasPoint(event));
}

function moveStroke(event) { if (inpaint.painting) paintTo(canvasPoint(event)); }
function endStroke() { inpaint.painting = false; inpaint.last = null; }

// The mask as a PNG data URL: white where at least half of a pixel is painted, black elsewhere (null: nothing painted).
function maskDataUrl() {
  const source = $("mask-canvas");
  const { width, height } = source;
  const paint = source.getContext("2d").getImageData(0, 0, width, height).data;
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const ctx = out.getContext("2d");
  const mask = ctx.createImageData(width, height);
  let any = false;
  for (let i = 0; i < paint.length; i += 4) {
    const v = paint[i + 3] >= 128 ? 255 : 0;
    any = any || v > 0;
    mask.data[i] = mask.data[i + 1] = mask.data[i + 2] = v;
    mask.data[i + 3] = 255;
  }
  ctx.putImageData(mask, 0, 0);
  return any ? out.toDataURL("image/png") : null;
}

function offerMask(dataUrl) {
  const link = $("mask-download");
  if (inpaint.maskUrl) URL.revokeObjectURL(inpaint.maskUrl);
  const bytes = Uint8Array.from(atob(dataUrl.split(",")[1]), (c) => c.charCodeAt(0));
  inpaint.maskUrl = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  link.href = inpaint.maskUrl;
  link.hidden = false;
}

function runInpaint() {
  const fail = (message) => showError(message, "inpaint-error");
  if (!inpaint.image) { fail("Load an image first."); return; }
  const prompt = $("inpaint-prompt").value;
  if (!prompt.trim()) { fail("Say what to paint there first."); $("inpaint-prompt").focus(); return; }
  const mask = maskDataUrl();
  if (!mask) { fail("Paint over the part to repaint first."); return; }
  let settings;
  try { settings = formSettings(INPAINT_FIELDS); } catch (err) { fail(err.message); return; }
  offerMask(mask);
  const body = { image: { id: inpaint.image.id }, mask: { data: mask }, prompt, ...settings };
  runJob("/images/inpaint", body, `Inpaint “${prompt}”`, (job) => {
    addToGallery(job.images);
    $("inpaint-strip").replaceChildren(...job.images.map((image) => el("li", {},
      el("figure", {}, thumb(image, "small"), el("figcaption", { text: `${image.index + 1} of ${job.images.length}` })))));
  }, "inpaint-error");
}

async function loadInpaintFile(input) {
  const file = input.files[0];
  if (!file) return;
  try {
    chooseInpaint(await uploadImage(file));
    showError("", "inpaint-error");
  } catch (err) { showError(`Loading the image: ${err.message}`, "inpaint-error"); }
  input.value = "";
}

CARD_ACTIONS.push(["Inpaint", chooseInpaint]);

document.addEventListener("DOMContentLoaded", () => {
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", startStroke);
  canvas.addEventListener("pointermove", moveStroke);
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);
  $("mask-clear").addEventListener("click", () => { clearMask(); announce("The mask is cleared."); });
  $("inpaint-run").addEventListener("click", runInpaint);
  $("inpaint-file").addEventListener("change", (e) => loadInpaintFile(e.target));
});
