// The server panel: what the server is (meta), how busy, its farm's
// workers and its printers.  Read again now and then, and soon after a
// task changed (throttled: a busy farm changes many times a second).

import {clear, el, humanSeconds, localTime, show} from './dom.js';

const REFRESH_MS = 10000;
const AFTER_CHANGE_MS = 1000;

export class ServerPanel {
  constructor(api, {onMeta}) {
    this.api = api;
    this.onMeta = onMeta || (() => {});
    this.pending = null;
    this.timer = null;
    this.started = false;
    this.hidden = document.hidden;  // a tab opened in the background reads nothing until shown
    this.facts = el('dl', {class: 'facts', id: 'server-facts'});
    this.workers = el('div', {id: 'workers', hidden: true});
    this.printers = el('div', {id: 'printers', hidden: true});
    this.message = el('p', {class: 'message error', id: 'server-message', role: 'alert'});
    this.section = el('section', {id: 'server', 'aria-labelledby': 'server-title'},
      el('h2', {id: 'server-title'}, 'Server'), this.message, this.facts, this.workers, this.printers);
  }

  /** Read meta and printers every REFRESH_MS (while the tab is shown). */
  start() {
    this.started = true;
    if (this.timer || this.hidden) return;  // started again after a token was given: one timer is enough
    this.timer = setInterval(() => this.update(), REFRESH_MS);
  }

  /** The tab was hidden (no timer runs) or shown again (read now, the timer again). */
  pause(hidden) {
    this.hidden = hidden;
    if (hidden) {
      clearInterval(this.timer);
      this.timer = null;
      return;
    }
    if (!this.started) return;
    this.update();  // whatever happened meanwhile
    this.start();
  }

  /** A task changed: read again soon (at most once a second; once shown again when hidden). */
  soon() {
    if (this.hidden) return;  // shown again, the panel is read at once (pause)
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = null;
      this.update();
    }, AFTER_CHANGE_MS);
  }

  /** refresh(), its failure shown in the panel. */
  update() {
    return this.refresh().catch((error) => {
      if (error.status !== 401) this.message.textContent = `cannot read the server: ${error.message}`;
    });
  }

  async refresh() {
    const [meta, printers] = await Promise.all([
      this.api.get({service: 'meta'}),
      this.api.get({service: 'printers'}).catch(() => []),
    ]);
    this.message.textContent = '';
    const named = Array.isArray(printers) ? printers : [];
    this.showMeta(meta);
    this.showWorkers(meta.farmWorkers || '');
    this.showPrinters(named);
    this.onMeta(meta, named);
  }

  showMeta(meta) {
    const rows = [
      ['name', meta.serverName],
      ['version', meta.version],
      ['services', String(meta.services || '').split(',').join(', ')],
      ['load', meta.cpuLoad],
      ['tasks', `${meta.busy || 0} busy · ${meta.queued || 0} queued · ${meta.maxTasks || '?'} at once`],
      ['uptime', meta.uptime],
    ];
    clear(this.facts);
    for (const [name, value] of rows) {
      this.facts.append(el('dt', {}, name), el('dd', {'data-fact': name}, value || ''));
    }
  }

  /** A farm's workers: "NAME STATE SVC+SVC HEARTBEAT,..." (meta's farmWorkers). */
  showWorkers(text) {
    const workers = text.split(',').map((item) => item.trim()).filter(Boolean);
    clear(this.workers);
    show(this.workers, workers.length > 0);
    if (!workers.length) return;
    this.workers.append(el('h3', {}, 'Workers'), el('ul', {class: 'workers'}, workers.map((item) => {
      const [name, state, services, ...heartbeat] = item.split(' ');
      return el('li', {class: `worker state-${state}`},
        el('strong', {}, name || ''), ' ', el('span', {class: 'badge'}, state || ''), ' ',
        (services || '').split('+').join(', '),
        heartbeat.length ? heartbeatNote(heartbeat.join(' ')) : '');
    })));
  }

  /** The named printers: state, current task (linked), temperatures. */
  showPrinters(printers) {
    clear(this.printers);
    show(this.printers, printers.length > 0);
    if (!printers.length) return;
    this.printers.append(el('h3', {}, 'Printers'), el('ul', {class: 'printers'}, printers.map(printerItem)));
  }
}

/** ' · last heartbeat 4.2 s ago', from meta's Unix seconds (the time itself in its title). */
function heartbeatNote(text) {
  const beat = Number(text);
  if (!Number.isFinite(beat)) return '';
  const ago = humanSeconds(Math.max(0, Date.now() / 1000 - beat));
  return el('span', {class: 'heartbeat', 'data-heartbeat': text, title: localTime(beat)},
    ` · last heartbeat ${ago} ago`);
}

function printerItem(printer) {
  const temps = [['hotend', printer.hotend, printer.hotendTarget], ['bed', printer.bed, printer.bedTarget]]
    .filter(([, actual]) => actual !== undefined && actual !== '')
    .map(([name, actual, target]) => `${name} ${actual}°${target ? ` / ${target}°` : ''}`);
  return el('li', {class: 'printer', 'data-printer': printer.name || ''},
    el('strong', {}, printer.name || ''), ' ',
    el('span', {class: `badge state-${printer.state || ''}`}, printer.state || ''),
    printer.task ? el('a', {href: `#task=${encodeURIComponent(printer.task)}`, class: 'printer-task'}, ' task') : null,
    temps.length ? el('span', {class: 'temps'}, ` ${temps.join(' · ')}`) : null,
    printer.port ? el('span', {class: 'port'}, ` ${printer.port}`) : null);
}
