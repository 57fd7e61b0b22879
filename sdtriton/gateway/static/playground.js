// The gateway's playground: a job per Generate (POST v1/jobs), its server-sent events read from a fetch() body
// (EventSource cannot send the Authorization header), Cancel as DELETE, and the recent jobs with thumbnails.
// Plain JS, no build step, nothing from the network but this gateway.
"use strict";

const KEY_STORAGE = "sdtriton.apiKey";
const RECENT_JOBS = 12;
const FINAL = new Set(["succeeded", "failed", "cancelled"]);
// Sizes offered around a model's default, as fractions of each side (rounded to the model's size step).
const SIZE_SCALES = [0.5, 0.75, 1];
const ASPECTS = [[4, 3], [3, 4]];

const $ = (id) => document.getElementById(id);
let models = [];
let current = null; // {id, abort: AbortController} of the job this page follows
const thumbnails = new Map(); // job id -> object URL

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function apiUrl(path) {
  // Relative to the page, so a gateway served under a path prefix works too; absolute paths pass through.
  return new URL(path, document.baseURI).toString();
}

async function api(path, options = {}) {
  const response = await fetch(apiUrl(path), { ...options, headers: headers(options.headers) });
  if (!response.ok) {
    throw await ApiError.of(response);
  }
  return response;
}

class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }

  static async of(response) {
    let message = `${response.status} ${response.statusText}`;
    let param = null;
    try {
      const body = await response.json();
      if (body && body.error) {
        message = `${response.status}: ${body.error.message}`;
        param = body.error.param || null;
      }
    } catch (_) {
      // not JSON: keep the status line
    }
    const retry = response.headers.get("Retry-After");
    if (retry) {
      message += ` (retry in ${retry} s)`;
    }
    return new ApiError(response.status, message, param);
  }
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setProgress(step, total) {
  const bar = $("progress");
  bar.max = Math.max(1, total);
  bar.value = Math.min(step, bar.max);
  $("progress-text").textContent = total ? `${step} / ${total}` : "";
}

function setBusy(busy) {
  $("generate").disabled = busy;
  $("cancel").disabled = !busy;
}

// Models, and the sizes and schedulers each takes.

async function loadModels() {
  try {
    const answer = await (await api("v1/models")).json();
    models = answer.data;
    showError("");
  } catch (error) {
    showError(`Could not list the models: ${error.message}`);
    models = [];
    if (error.status === 401) {
      $("key-panel").open = true; // the gateway wants a key: show where it goes
    }
  }
  const select = $("model");
  select.replaceChildren(...models.map((model) => new Option(model.id, model.id)));
  fillModelChoices();
}

function selectedModel() {
  return models.find((model) => model.id === $("model").value) || null;
}

function sizesOf(model) {
  if (!model || !model.default_size || !model.size_step) {
    return [];
  }
  const [width, height] = model.default_size.split("x").map(Number);
  const step = model.size_step;
  const round = (side) => Math.max(step, Math.round(side / step) * step);
  const sizes = SIZE_SCALES.map((scale) => `${round(width * scale)}x${round(height * scale)}`);
  const area = width * height;
  for (const [across, down] of ASPECTS) {
    const unit = Math.sqrt(area / (across * down));
    sizes.push(`${round(unit * across)}x${round(unit * down)}`);
  }
  return [...new Set(sizes)];
}

function fillModelChoices() {
  const model = selectedModel();
  const size = $("size");
  const defaultSize = model && model.default_size ? ` (${model.default_size})` : "";
  size.replaceChildren(new Option(`default${defaultSize}`, ""));
  for (const choice of sizesOf(model)) {
    size.add(new Option(choice, choice));
  }
  const scheduler = $("scheduler");
  scheduler.replaceChildren(new Option("default", ""));
  for (const name of (model && model.schedulers) || []) {
    scheduler.add(new Option(name, name));
  }
  const steps = $("steps");
  steps.placeholder = model && model.default_num_inference_steps ? String(model.default_num_inference_steps) : "";
  if (model && model.max_num_inference_steps) {
    steps.max = String(model.max_num_inference_steps);
  } else {
    steps.removeAttribute("max");
  }
}

// A job: submit, follow its events, show its image.

// The chosen start image as base64 PNG (the jobs body's image), or undefined.
function startImage() {
  const file = $("image").files[0];
  if (!file) {
    return Promise.resolve(undefined);
  }
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result); // a data: URL, which the gateway takes as it is
    reader.onerror = () => reject(new Error(`image: cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function requestBody() {
  const body = { prompt: $("prompt").value };
  const image = await startImage();
  const text = (id) => $(id).value.trim();
  const number = (id) => (text(id) === "" ? undefined : Number(text(id)));
  const fields = {
    model: text("model") || undefined,
    negative_prompt: text("negative-prompt") || undefined,
    // With a start image the images have its size.
    size: image ? undefined : text("size") || undefined,
    image,
    strength: image ? number("strength") : undefined,
    num_inference_steps: number("steps"),
    guidance_scale: number("guidance"),
    seed: number("seed"),
    scheduler: text("scheduler") || undefined,
  };
  for (const [name, value] of Object.entries(fields)) {
    if (value !== undefined) {
      body[name] = value;
    }
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  if (current) {
    return;
  }
  showError("");
  setProgress(0, 0);
  $("preview").hidden = true;
  $("preview-caption").hidden = true;
  setBusy(true);
  setStatus("Submitting…");
  let job;
  try {
    const response = await api("v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(await requestBody()),
    });
    job = await response.json();
  } catch (error) {
    showError(error.message);
    setStatus("Not submitted.");
    setBusy(false);
    return;
  }
  current = { id: job.id, abort: new AbortController() };
  showJob(job);
  refreshJobs();
  try {
    const final = await follow(job.id, current.abort.signal);
    await finish(final);
  } catch (error) {
    if (error.name !== "AbortError") {
      showError(error.message);
    }
  } finally {
    current = null;
    setBusy(false);
    refreshJobs();
  }
}

function showJob(job) {
  $("output").dataset.jobId = job.id;
  $("output").dataset.jobStatus = job.status;
  if (job.status === "queued") {
    const place = job.queue_position ? ` (${job.queue_position} ahead)` : "";
    setStatus(`Job ${job.id}: queued${place}`);
  } else {
    setStatus(`Job ${job.id}: ${job.status}`);
  }
}

// The job's final state: from its event stream, or (when the stream ends without one) asked again.
async function follow(jobId, signal) {
  for (;;) {
    const final = await readEvents(jobId, signal);
    if (final) {
      return final;
    }
    const job = await (await api(`v1/jobs/${encodeURIComponent(jobId)}`, { signal })).json();
    if (FINAL.has(job.status)) {
      return job;
    }
  }
}

async function readEvents(jobId, signal) {
  const response = await api(`v1/jobs/${encodeURIComponent(jobId)}/events`, {
    headers: { Accept: "text/event-stream" },
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      return null;
    }
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const message = parseEvent(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (!message) {
        continue;
      }
      const final = onEvent(message.event, message.data);
      if (final) {
        reader.cancel().catch(() => {});
        return final;
      }
    }
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) {
      continue; // a comment (keep-alive)
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") {
      event = value;
    } else if (field === "data") {
      data.push(value);
    }
  }
  if (!data.length) {
    return null;
  }
  return { event, data: JSON.parse(data.join("\n")) };
}

// Returns the final job on the last event, else null.
function onEvent(event, data) {
  if (event === "status") {
    showJob(data);
    if (data.total_steps) {
      setProgress(data.step || 0, data.total_steps);
    }
  } else if (event === "progress") {
    setStatus(`Job ${$("output").dataset.jobId}: running`);
    $("output").dataset.jobStatus = "running";
    setProgress(data.step, data.total_steps);
    if (data.preview) {
      const preview = $("preview");
      preview.src = data.preview;
      preview.hidden = false;
      $("preview-caption").hidden = false;
      preview.dataset.previews = String(Number(preview.dataset.previews || 0) + 1);
    }
  } else if (event === "done") {
    return data;
  }
  return null;
}

async function finish(job) {
  showJob(job);
  if (job.status === "succeeded") {
    setProgress(job.total_steps || 1, job.total_steps || 1);
    const [first] = job.data;
    const blob = await (await api(first.url)).blob();
    const result = $("result");
    if (result.src) {
      URL.revokeObjectURL(result.src);
    }
    result.src = URL.createObjectURL(blob);
    result.dataset.jobId = job.id;
    result.dataset.seed = String(first.seed);
    result.hidden = false;
    $("result-caption").textContent = `seed ${first.seed}`;
    setStatus(`Job ${job.id}: succeeded`);
  } else if (job.status === "failed") {
    const error = job.error || {};
    showError(`Job failed: ${error.message || "no reason given"}`);
    setStatus(`Job ${job.id}: failed`);
  } else {
    setStatus(`Job ${job.id}: cancelled`);
  }
}

async function cancel() {
  if (!current) {
    return;
  }
  $("cancel").disabled = true;
  try {
    const job = await (await api(`v1/jobs/${encodeURIComponent(current.id)}`, { method: "DELETE" })).json();
    showJob(job); // the event stream ends with the final state
  } catch (error) {
    showError(error.message);
    $("cancel").disabled = false;
  }
}

// Recent jobs, newest first, with a thumbnail of each finished one.

async function refreshJobs() {
  let jobs;
  try {
    jobs = (await (await api(`v1/jobs?limit=${RECENT_JOBS}`)).json()).data;
  } catch (error) {
    $("jobs").replaceChildren(jobItem(null, `Could not list the jobs: ${error.message}`));
    return;
  }
  $("jobs").replaceChildren(...jobs.map((job) => jobItem(job)));
  for (const job of jobs) {
    if (job.status === "succeeded" && job.data && job.data.length) {
      thumbnail(job).catch(() => {});
    }
  }
}

function jobItem(job, text) {
  const item = document.createElement("li");
  if (!job) {
    item.textContent = text;
    return item;
  }
  item.id = `job-${job.id}`;
  item.dataset.status = job.status;
  const image = document.createElement("img");
  image.alt = `Thumbnail of job ${job.id}`;
  image.hidden = true;
  const label = document.createElement("span");
  const created = job.created ? new Date(job.created * 1000).toLocaleTimeString() : "";
  label.textContent = [job.status, job.model, created].filter(Boolean).join(" · ");
  label.title = job.id;
  item.append(image, label);
  if (thumbnails.has(job.id)) {
    image.src = thumbnails.get(job.id);
    image.hidden = false;
  }
  return item;
}

async function thumbnail(job) {
  if (!thumbnails.has(job.id)) {
    const blob = await (await api(job.data[0].url)).blob();
    thumbnails.set(job.id, URL.createObjectURL(blob));
  }
  const image = document.querySelector(`#job-${CSS.escape(job.id)} img`);
  if (image) {
    image.src = thumbnails.get(job.id);
    image.hidden = false;
  }
}

// Wiring.

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) {
    localStorage.setItem(KEY_STORAGE, key);
  } else {
    localStorage.removeItem(KEY_STORAGE);
  }
  loadModels();
  refreshJobs();
}

function forgetKey() {
  localStorage.removeItem(KEY_STORAGE);
  $("api-key").value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = apiKey();
  $("generate-form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("model").addEventListener("change", fillModelChoices);
  $("save-key").addEventListener("click", saveKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  loadModels().then(() => {
    document.body.dataset.ready = "true";
  });
  refreshJobs();
});
