// History: what the tasks that ended did, per service and per printer
// (service=history), as tables and a bar chart drawn on a canvas (no library).

import {clear, el, humanSeconds, humanSize} from './dom.js';

const PERIODS = [['', 'all time'], ['1', 'last day'], ['7', 'last 7 days'], ['30', 'last 30 days']];
const BAR_HEIGHT = 22;
const LABEL_WIDTH = 110;
const AFTER_END_MS = 3000;

export class HistoryView {
  constructor(api) {
    this.api = api;
    this.pending = null;
    this.hidden = document.hidden;  // a tab opened in the background reads nothing until shown
    this.stale = false;
    this.shown = [];  // the services drawn: drawn again when the width changes
    this.width = 0;
    this.since = el('select', {id: 'history-since', onchange: () => this.update()},
      PERIODS.map(([value, label]) => el('option', {value}, label)));
    this.canvas = el('canvas', {id: 'history-chart', role: 'img', height: '0',
      'aria-label': 'tasks per service: succeeded and failed'});
    this.message = el('p', {class: 'message error', id: 'history-message', role: 'alert'});
    this.services = el('div', {class: 'table-wrap', id: 'history-services'});
    this.printers = el('div', {class: 'table-wrap', id: 'history-printers'});
    this.section = el('section', {id: 'history', 'aria-labelledby': 'history-title'},
      el('div', {class: 'section-head'}, el('h2', {id: 'history-title'}, 'History'),
        el('label', {}, 'period ', this.since)),
      this.message, this.canvas, this.services, this.printers);
    window.addEventListener('resize', () => this.resized());
  }

  /** A task ended: read the history again soon (at most every few seconds; once shown again when hidden). */
  soon() {
    if (this.hidden) {
      this.stale = true;
      return;
    }
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.update();
    }, AFTER_END_MS);
  }

  /** The tab was hidden or shown again (then what ended meanwhile is read). */
  pause(hidden) {
    this.hidden = hidden;
    if (!hidden && this.stale) {
      this.stale = false;
      this.soon();
    }
  }

  /** load(), its failure shown. */
  update() {
    return this.load().catch((error) => {
      if (error.status !== 401) this.say(`cannot load the history: ${error.message}`);
    });
  }

  say(text) {
    this.message.textContent = text;
  }

  /** The window's width changed: the chart drawn again at the new width (once a frame). */
  resized() {
    if (this.resizing) return;
    this.resizing = true;
    requestAnimationFrame(() => {
      this.resizing = false;
      if (this.shown.length && contentWidth(this.canvas.parentElement) !== this.width) this.draw(this.shown);
    });
  }

  async load() {
    const fields = {service: 'history'};
    if (this.since.value) fields.since = this.since.value;
    const report = await this.api.get(fields);
    this.say('');
    const services = Object.entries(report.services || {});
    const printers = Object.entries(report.printers || {});
    this.showServices(services);
    this.showPrinters(printers);
    this.draw(services);
  }

  showServices(services) {
    clear(this.services);
    if (!services.length) {
      this.services.append(el('p', {}, 'No task has ended in this period.'));
      return;
    }
    this.services.append(table(['service', 'tasks', 'ok', 'failed', 'median run', 'total run', 'in', 'out'],
      services.map(([name, sums]) => [name, sums.tasks, sums.successes, sums.failures,
        humanSeconds(sums.medianRunSeconds), humanSeconds(sums.totalRunSeconds),
        humanSize(sums.bytesIn), humanSize(sums.bytesOut)])));
  }

  showPrinters(printers) {
    clear(this.printers);
    if (!printers.length) return;
    this.printers.append(table(['printer', 'prints', 'completed', 'cancelled', 'failed', 'printing', 'filament'],
      printers.map(([name, sums]) => [name, sums.prints, sums.completed, sums.cancelled, sums.failed,
        humanSeconds(sums.printSeconds), filamentText(sums.filament)])));
  }

  /** Horizontal bars, one per service: successes (green) then failures (red). */
  draw(services) {
    this.shown = services;
    this.canvas.hidden = services.length === 0;
    const scale = window.devicePixelRatio || 1;
    this.width = contentWidth(this.canvas.parentElement);
    const width = Math.max(200, this.width);
    const height = services.length * BAR_HEIGHT + 8;
    this.canvas.style.width = `${width}px`;
    this.canvas.style.height = `${height}px`;
    this.canvas.width = Math.round(width * scale);
    this.canvas.height = Math.round(height * scale);
    const context = this.canvas.getContext('2d');
    if (!context) return;
    context.scale(scale, scale);
    const most = Math.max(1, ...services.map(([, sums]) => Number(sums.tasks) || 0));
    const room = width - LABEL_WIDTH - 40;
    context.font = '13px system-ui, sans-serif';
    context.textBaseline = 'middle';
    services.forEach(([name, sums], row) => {
      const y = 4 + row * BAR_HEIGHT;
      const ok = (Number(sums.successes) || 0) / most * room;
      const failed = (Number(sums.failures) || 0) / most * room;
      context.fillStyle = '#1d1d1d';
      context.fillText(name.slice(0, 14), 0, y + BAR_HEIGHT / 2);
      context.fillStyle = '#2e7d32';
      context.fillRect(LABEL_WIDTH, y + 3, ok, BAR_HEIGHT - 6);
      context.fillStyle = '#c62828';
      context.fillRect(LABEL_WIDTH + ok, y + 3, failed, BAR_HEIGHT - 6);
      context.fillStyle = '#1d1d1d';
      context.fillText(String(sums.tasks), LABEL_WIDTH + ok + failed + 4, y + BAR_HEIGHT / 2);
    });
  }
}

/** The width inside a box's padding (what the canvas may take); 300 without one. */
function contentWidth(box) {
  if (!box) return 300;
  const style = getComputedStyle(box);
  return Math.floor(box.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight));
}

function table(heads, rows) {
  return el('table', {class: 'totals'},
    el('thead', {}, el('tr', {}, heads.map((head) => el('th', {scope: 'col'}, head)))),
    el('tbody', {}, rows.map((cells) => el('tr', {}, cells.map((cell) => el('td', {}, String(cell ?? '')))))));
}

function filamentText(filament) {
  if (!filament || typeof filament !== 'object') return '';
  return Object.entries(filament).map(([key, value]) => `${key} ${value}`).join(', ');
}
