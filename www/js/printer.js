// A print's printer card: the hotend's and the bed's temperatures (now,
// target, and a chart of the last ten minutes), the layer, the height,
// the time printed and left, the bytes sent.
//
// update() takes what the page has of a print, in any of its shapes:
//   - a progress event's data: {done, total, percent, eta, elapsed,
//     printer: {hotend, hotendTarget, bed, bedTarget, bytes, layer, z, paused}}
//     (rrc/events.py ProgressEvents.data; the printer's keys are
//     rrc/printers.py PRINTER_STATE_FIELDS);
//   - the `printer` object alone (maybe with elapsed / eta beside it);
//   - a busy print's record as `info` shows it: the same values as text,
//     named hotend, hotendTarget, bed, bedTarget, bytesSent, layer, z,
//     elapsedSeconds, etaSeconds (rrc/events.py PRINTER_INFO_FIELDS).
// Every value is shown with textContent; the chart is drawn on a canvas.

const WINDOW_SECONDS = 600;        // the chart's span: the last ten minutes
const MAX_SAMPLES = 2000;          // a fast reporter is thinned, never unbounded
const CHART_HEIGHT = 170;          // CSS pixels
const SERIES = [
  {key: 'hotend', target: 'hotendTarget', label: 'hotend', colour: '#d0342c'},
  {key: 'bed', target: 'bedTarget', label: 'bed', colour: '#2767c4'},
];
const FIELDS = [
  ['hotend', 'Hotend'], ['bed', 'Bed'], ['layer', 'Layer'], ['height', 'Height'],
  ['elapsed', 'Elapsed'], ['left', 'Time left'], ['bytes', 'Sent'],
];

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

function number(value) {
  const parsed = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  return typeof parsed === 'number' && Number.isFinite(parsed) ? parsed : undefined;
}

/** The state update() was given, in one shape (numbers or undefined). */
export function normalise(state) {
  const given = state && typeof state === 'object' ? state : {};
  const printer = given.printer && typeof given.printer === 'object' ? given.printer : given;
  const pick = (...keys) => keys.map(key => number(printer[key] ?? given[key])).find(v => v !== undefined);
  const progress = typeof given.progress === 'string' ? /^(\d+)\/(\d+)$/.exec(given.progress) : null;
  return {
    hotend: pick('hotend'), hotendTarget: pick('hotendTarget'),
    bed: pick('bed'), bedTarget: pick('bedTarget'),
    layer: pick('layer'), z: pick('z'),
    bytes: pick('bytes', 'bytesSent'),
    // a paused print's record says so as suspended: yes (its events as paused: 1)
    paused: Boolean(pick('paused')) || given.suspended === 'yes',
    elapsed: pick('elapsed', 'elapsedSeconds'), left: pick('eta', 'left', 'etaSeconds'),
    done: number(given.done) ?? (progress ? Number(progress[1]) : undefined),
    total: number(given.total) ?? (progress ? Number(progress[2]) : undefined),
  };
}

/** "1 h 05 min", "4 min 20 s", "35 s". */
export function duration(seconds) {
  const whole = Math.max(0, Math.round(seconds));
  const hours = Math.floor(whole / 3600), minutes = Math.floor(whole / 60) % 60, rest = whole % 60;
  if (hours) return `${hours} h ${String(minutes).padStart(2, '0')} min`;
  if (minutes) return `${minutes} min ${String(rest).padStart(2, '0')} s`;
  return `${rest} s`;
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1048576) return `${(bytes / 1024).toFixed(1)} kB`;
  return `${(bytes / 1048576).toFixed(1)} MB`;
}

function temperature(now, target) {
  if (now === undefined) return '–';
  const shown = `${now.toFixed(1)} °C`;
  return target ? `${shown} → ${target.toFixed(0)} °C` : `${shown} (off)`;
}

/** The text of each field for a state (– for one the state does not have). */
function texts(s) {
  const lines = s.done !== undefined && s.total ? ` (line ${s.done} of ${s.total})` : '';
  return {
    hotend: temperature(s.hotend, s.hotendTarget),
    bed: temperature(s.bed, s.bedTarget),
    layer: s.layer !== undefined ? String(s.layer) : '–',
    height: s.z !== undefined ? `${s.z.toFixed(2)} mm` : '–',
    elapsed: s.elapsed !== undefined ? duration(s.elapsed) : '–',
    left: s.left !== undefined ? duration(s.left) : '–',
    bytes: s.bytes !== undefined ? size(s.bytes) + lines : '–',
  };
}

/**
 * A printer card in `container`: {update(state), dispose()}.  update()
 * shows a state and adds its temperatures to the chart; its time is the
 * print's elapsed seconds when the state has them (so the events a task
 * view replays on opening chart at their own times), else the clock.
 */
export function printerCard(container) {
  const card = element('section', {class: 'printer-card', 'data-printer-card': ''});
  const title = element('h3', {}, 'Printer');
  const status = element('span', {class: 'printer-paused', 'data-field': 'paused'}, '');
  title.append(' ', status);
  const list = element('dl', {class: 'printer-values'});
  const values = {};
  for (const [key, label] of FIELDS) {
    const value = element('dd', {'data-field': key}, '–');
    list.append(element('dt', {}, label), value);
    values[key] = value;
  }
  const canvas = element('canvas', {'data-printer-chart': '', role: 'img',
                                    'aria-label': 'hotend and bed temperatures, the last 10 minutes'});
  Object.assign(canvas.style, {display: 'block', width: '100%', height: `${CHART_HEIGHT}px`});
  card.append(title, list, canvas);
  container.append(card);

  let samples = [];                 // {t, hotend, hotendTarget, bed, bedTarget}
  let lastTime = null, lastClock = null;

  function timeOf(state) {
    const clock = performance.now() / 1000;
    let t;
    if (state.elapsed !== undefined) {
      t = state.elapsed;
    } else {
      t = lastTime === null ? 0 : lastTime + (clock - lastClock);
    }
    lastClock = clock;
    return t;
  }

  function update(given) {
    const state = normalise(given);
    const shown = texts(state);
    for (const [key] of FIELDS) values[key].textContent = shown[key];
    status.textContent = state.paused ? '(paused)' : '';
    const t = timeOf(state);
    if (lastTime !== null && t < lastTime) samples = [];  // a new print: its own chart
    lastTime = t;
    if (SERIES.some(series => state[series.key] !== undefined)) {
      samples.push({t, hotend: state.hotend, hotendTarget: state.hotendTarget,
                    bed: state.bed, bedTarget: state.bedTarget});
      samples = samples.filter(sample => sample.t >= t - WINDOW_SECONDS);
      if (samples.length > MAX_SAMPLES) samples = samples.filter((_, i) => i % 2 === 0 || i === samples.length - 1);
    }
    const label = SERIES.map(series => `${series.label} ${shown[series.key]}`).join(', ');
    canvas.setAttribute('aria-label', `temperatures, the last 10 minutes: ${label}`);
    draw();
  }

  function draw() {
    drawChart(canvas, samples, lastTime ?? 0);
  }

  const observer = new ResizeObserver(draw);
  observer.observe(canvas);
  draw();

  return {
    update,
    dispose() {
      observer.disconnect();
      card.remove();
    },
  };
}

/** A step of 10, 20, 25, 50 or 100 °C for about four lines up to `top`. */
function degreeStep(top) {
  return [10, 20, 25, 50, 100].find(step => top / step <= 5) || 100;
}

function drawChart(canvas, samples, now) {
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (!width || !height) return;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = '11px sans-serif';
  const styles = getComputedStyle(canvas);
  const ink = styles.color || '#333';

  const left = 40, right = width - 8, top = 26, bottom = height - 22;
  let highest = 50;
  for (const sample of samples) {
    for (const series of SERIES) {
      highest = Math.max(highest, sample[series.key] ?? 0, sample[series.target] ?? 0);
    }
  }
  const step = degreeStep(highest);
  const ceiling = Math.ceil((highest + 1) / step) * step;
  const x = t => left + (right - left) * (1 - (now - t) / WINDOW_SECONDS);
  const y = degrees => bottom - (bottom - top) * degrees / ceiling;

  // Axes: °C up the left, minutes ago along the bottom.
  g.strokeStyle = 'rgba(127, 127, 127, 0.35)';
  g.fillStyle = ink;
  g.lineWidth = 1;
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  for (let degrees = 0; degrees <= ceiling; degrees += step) {
    g.beginPath();
    g.moveTo(left, y(degrees));
    g.lineTo(right, y(degrees));
    g.stroke();
    g.fillText(String(degrees), left - 4, y(degrees));
  }
  g.textAlign = 'left';
  g.fillText('°C', 4, 9);
  g.textBaseline = 'top';
  for (let minutes = 10; minutes >= 0; minutes -= 2) {
    // The ends are aligned inward, so no label runs off the canvas.
    g.textAlign = minutes === 10 ? 'left' : minutes === 0 ? 'right' : 'center';
    const at = minutes === 10 ? left : minutes === 0 ? right : x(now - minutes * 60);
    g.fillText(minutes === 10 ? '−10 min' : minutes ? `−${minutes}` : 'now', at, bottom + 5);
  }

  // Each heater: its temperature solid, its target dashed, in its colour.
  for (const series of SERIES) {
    g.strokeStyle = series.colour;
    for (const [key, dash, widthPx] of [[series.key, [], 2], [series.target, [6, 4], 1.25]]) {
      g.setLineDash(dash);
      g.lineWidth = widthPx;
      g.beginPath();
      let drawing = false;
      for (const sample of samples) {
        const value = sample[key];
        if (value === undefined) { drawing = false; continue; }
        if (drawing) g.lineTo(x(sample.t), y(value)); else g.moveTo(x(sample.t), y(value));
        drawing = true;
      }
      // A single sample is a dot's worth of line: still seen.
      if (samples.length === 1 && samples[0][key] !== undefined) g.lineTo(x(samples[0].t) - 3, y(samples[0][key]));
      g.stroke();
    }
  }
  g.setLineDash([]);

  // The legend, top right.
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  let at = right;
  for (const series of [...SERIES].reverse()) {
    g.fillStyle = ink;
    g.fillText(series.label, at, 9);
    at -= g.measureText(series.label).width + 4;
    g.fillStyle = series.colour;
    g.fillRect(at - 14, 8, 14, 3);
    at -= 24;
  }
  g.fillStyle = ink;
  g.fillText('dashed: target', at, 9);
}
