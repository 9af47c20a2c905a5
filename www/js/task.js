// One task at #task=ID: its record, its log following live (the task's own
// event stream), its controls, the download of its result, previews.

import {clear, el, localTime, show} from './dom.js';
import {inputNamesOf, isJob, isLive, isPrint, stateOf, stepsOf} from './records.js';
import {progressLine, stepsLine} from './list.js';

// The controls a state allows: [verb, label], for a print and for any other task.
const CONTROLS = {
  task: {running: [['suspend', 'Suspend'], ['kill', 'Kill']],
         suspended: [['resume', 'Resume'], ['kill', 'Kill']],
         queued: [['kill', 'Kill']], waiting: [['kill', 'Kill']]},
  print: {running: [['pause', 'Pause'], ['cancel', 'Cancel'], ['kill', 'Kill']],
          suspended: [['resume', 'Resume'], ['cancel', 'Cancel'], ['kill', 'Kill']],
          queued: [['kill', 'Kill']], waiting: [['kill', 'Kill']]},
};
// Unix seconds in a record: shown with the local time they mean.
const TIME_FIELDS = ['ctime', 'stime', 'etime'];
// The results preview.js shows: the module (and three.js) loads only for these.
const PREVIEWED = /\.(stl|off|gcode|gco|g|png|jpe?g)$/i;
// A log longer than this many lines keeps only its newest (a page open all day stays light).
const LOG_LINES_KEPT = 5000;
// An ended task's log shows its last this many characters (a log may be
// maxLogSize, 10 MB: one <pre> of it would hold the page); the whole is a download.
const LOG_TAIL_CHARS = 256 * 1024;
// After a control, the button that takes the focus when the pressed one is gone.
const NEXT_CONTROL = {suspend: 'resume', resume: 'suspend', pause: 'resume'};

export class TaskView {
  constructor(api, {onRecord}) {
    this.api = api;
    this.onRecord = onRecord || (() => {});
    this.id = '';
    this.record = null;
    this.stream = null;
    this.pendingLines = [];   // log lines not drawn yet: drawn once per animation frame
    this.logFrame = 0;
    this.disposers = [];
    this.printer = null;
    this.section = el('section', {id: 'task', 'aria-labelledby': 'task-title', hidden: true});
  }

  /** Show task ``id`` (a new view: whatever the last one followed is let go). */
  async open(id) {
    this.close();
    this.id = id;
    this.build();
    show(this.section, true);
    let record;
    try {
      record = await this.api.get({service: 'info', id});
    } catch (error) {
      if (id === this.id) this.say(`Cannot show task ${id}: ${error.message}`, true);
      return;
    }
    if (id !== this.id) return;  // another view opened meanwhile: this answer is not for it
    this.showRecord(record);
    this.followLog();
    this.showExtras();
  }

  /** Leave: stop following, dispose previews, hide. */
  close() {
    if (this.stream) this.stream.close();
    this.stream = null;
    if (this.logFrame) cancelAnimationFrame(this.logFrame);
    this.logFrame = 0;
    this.pendingLines = [];
    for (const dispose of this.disposers.splice(0)) {
      try { dispose(); } catch (error) { console.warn('a preview did not close', error); }
    }
    this.printer = null;
    this.previewShown = false;
    this.id = '';
    show(this.section, false);
    clear(this.section);
  }

  build() {
    this.title = el('h2', {id: 'task-title'}, this.id);
    this.badge = el('span', {class: 'badge', id: 'task-state'});
    this.controls = el('div', {class: 'controls', id: 'task-controls'});
    this.progress = el('div', {class: 'task-progress', id: 'task-progress'});
    this.steps = el('div', {id: 'task-steps'});
    this.message = el('p', {class: 'message', id: 'task-message', role: 'status', tabindex: '-1'});
    this.table = el('table', {class: 'record', id: 'task-record'});
    this.log = el('pre', {class: 'log', id: 'task-log', tabindex: '0', 'aria-label': 'log'});
    this.previews = el('div', {class: 'previews', id: 'task-preview'});
    this.printerBox = el('div', {id: 'task-printer'});
    clear(this.section).append(
      el('p', {}, el('a', {href: '#', id: 'back'}, '← all tasks')),
      el('div', {class: 'section-head'}, this.title, this.badge),
      this.controls, this.progress, this.steps, this.message, this.printerBox, this.previews,
      el('h3', {}, 'Log'), this.log,
      el('h3', {}, 'Record'), el('div', {class: 'table-wrap'}, this.table));
  }

  /** Draw what a record says: title, state, controls, progress, steps, its fields. */
  showRecord(record) {
    this.record = record;
    const state = stateOf(record);
    this.title.textContent = inputNamesOf(record) || record.id;
    this.badge.textContent = state;
    this.badge.className = `badge state-${state}`;
    this.section.dataset.state = state;
    this.showControls(record, state);
    clear(this.progress).append(isLive(record) ? progressLine(record) : '');
    clear(this.steps).append(stepsLine(record) || '', record.job ? jobLink(record) : '');
    this.showFields(record);
    if (this.printer && isPrint(record)) this.printer.update(record);
    this.onRecord(record);
  }

  showControls(record, state) {
    const table = CONTROLS[isPrint(record) ? 'print' : 'task'];
    const downloadable = record.status === 'complete' && Boolean(record.out);
    const shown = JSON.stringify([table[state] || [], downloadable]);
    if (shown === this.controls.dataset.shown) return;  // the same buttons: a focused one keeps its focus
    this.controls.dataset.shown = shown;
    const hadFocus = this.controls.contains(document.activeElement);
    clear(this.controls);
    for (const [verb, label] of table[state] || []) {
      this.controls.append(el('button', {type: 'button', 'data-control': verb,
        onclick: (event) => this.control(verb, event.target)}, label));
    }
    if (downloadable) {
      this.controls.append(el('button', {type: 'button', id: 'download', onclick: () => this.download()},
        'Download result'));
    }
    if (hadFocus) this.focusAfterControl(this.lastControl);  // the focused button went: not to <body>
  }

  /** The focus after a control whose button is gone: the control that undoes
   *  it (Resume after Suspend), else the first one, else the view's message. */
  focusAfterControl(verb) {
    const next = this.controls.querySelector(`button[data-control="${NEXT_CONTROL[verb] || ''}"]`)
      || this.controls.querySelector('button[data-control]');
    (next || this.message).focus();
  }

  showFields(record) {
    clear(this.table);
    const body = el('tbody');
    for (const key of Object.keys(record).sort()) {
      const when = TIME_FIELDS.includes(key) ? localTime(record[key]) : '';
      body.append(el('tr', {}, el('th', {scope: 'row'}, key),
        el('td', {}, String(record[key]), when ? ` (${when})` : '')));
    }
    this.table.append(body);
  }

  /** POST the control; the record it answers is shown at once. */
  async control(verb, button) {
    const id = this.id;
    const focused = document.activeElement === button;
    this.lastControl = verb;
    button.disabled = true;  // one press, one request
    try {
      const record = await this.api.control(verb, id);
      if (id !== this.id) return;
      this.say(`${verb}: done`);
      if (record.id === this.id) this.showRecord(record);
      this.refresh();
    } catch (error) {
      if (id === this.id) this.say(`${verb} refused: ${error.message}`, true);
    } finally {
      button.disabled = false;
      // a keyboard user goes on from where they were: the same button, or the next control
      if (focused && id === this.id) {
        if (button.isConnected) button.focus();
        else if (!this.controls.contains(document.activeElement)) this.focusAfterControl(verb);
      }
    }
  }

  /** Read the record again (after a status or step event). */
  async refresh() {
    const id = this.id;
    const record = await this.api.get({service: 'info', id}).catch(() => null);
    if (record && id === this.id) this.showRecord(record);
  }

  /** The log: a live task's from its event stream (log lines as they come),
   *  an ended one's from its log file. */
  followLog() {
    const id = this.id;
    if (this.stream) this.stream.close();  // one stream per view, ever
    this.stream = null;
    if (isJob(this.record)) this.showStepsLogs(this.record);
    if (!isLive(this.record)) {
      if (!isJob(this.record)) this.showEndedLog(id);
      return;
    }
    const stream = this.api.stream({service: 'events', id}, {
      // a message of a stream this view let go of is not for it
      message: (message) => { if (stream === this.stream && id === this.id) this.event(message); },
      ended: () => !isLive(this.record),
    });
    this.stream = stream;
  }

  /** A job has no log of its own: its steps' logs are theirs (links to their views). */
  showStepsLogs(record) {
    const links = stepsOf(record).map((step) => [
      step.number > 1 ? ', ' : '',
      el('a', {href: `#task=${encodeURIComponent(step.id)}`}, `step ${step.number}${step.service ? ` (${step.service})` : ''}`)]);
    clear(this.log).append(el('span', {class: 'log-note'}, 'A job\'s log is its steps\': ', links.flat(), '\n'));
  }

  /** An ended task's log: its tail, with the whole as a download when it is longer. */
  async showEndedLog(id) {
    let text;
    try {
      text = await this.api.fetchText(`/tasks/log/${encodeURIComponent(id)}`);
    } catch (error) {
      if (id === this.id) this.log.textContent = `(no log: ${error.message})`;
      return;
    }
    if (id !== this.id) return;
    if (text.length <= LOG_TAIL_CHARS) {
      this.log.textContent = text;
      return;
    }
    let tail = text.slice(-LOG_TAIL_CHARS);
    tail = tail.slice(tail.indexOf('\n') + 1);  // from a whole line on
    const cut = text.length - tail.length;
    text = null;  // the whole is not kept: the download fetches it again
    clear(this.log).append(
      el('span', {class: 'log-note'}, `(the first ${Math.ceil(cut / 1024)} KB of this log are not shown: `,
        el('a', {href: '#', id: 'log-download', onclick: (event) => { event.preventDefault(); this.downloadLog(id); }},
          'download the whole log'), ')\n'),
      tail);
    this.log.scrollTop = this.log.scrollHeight;
  }

  /** The whole log, saved with the token (fetch, then a blob: URL). */
  async downloadLog(id) {
    try {
      const {blob} = await this.api.fetchDownload(`/tasks/log/${encodeURIComponent(id)}`);
      saveBlob(blob, `${id}.log`);
    } catch (error) {
      this.say(`Download failed: ${error.message}`, true);
    }
  }

  event({event, data}) {
    const body = data && typeof data.data === 'object' && data.data !== null ? data.data : {};
    if (event === 'log') this.logLine(String(body.text ?? ''), 'line');
    else if (event === 'note') this.logLine(`rrcloud: ${String(body.text ?? '')}`, 'note');
    else if (event === 'progress') this.progressed(body);
    else if (event === 'status' || event === 'step') this.statusChanged(body);
  }

  /** A line for the log: drawn with the others of its animation frame (a
   *  view that opens on a long running task gets its whole log at once). */
  logLine(text, kind) {
    this.pendingLines.push([text, kind]);
    if (this.pendingLines.length > 2 * LOG_LINES_KEPT) this.pendingLines.splice(0, this.pendingLines.length - LOG_LINES_KEPT);
    if (!this.logFrame) this.logFrame = requestAnimationFrame(() => this.drawLines());
  }

  /** Append the waiting lines in one go, measured once; keep the newest LOG_LINES_KEPT. */
  drawLines() {
    this.logFrame = 0;
    const lines = this.pendingLines.splice(0).slice(-LOG_LINES_KEPT);
    if (!lines.length || !this.log) return;
    const log = this.log;
    const nearEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 80;
    const fragment = document.createDocumentFragment();
    for (const [text, kind] of lines) fragment.append(el('span', {class: `log-${kind}`}, `${text}\n`));
    log.append(fragment);
    const extra = log.childNodes.length - LOG_LINES_KEPT;
    if (extra > 0) {  // the oldest lines, removed at once
      const range = document.createRange();
      range.setStartBefore(log.firstChild);
      range.setEndAfter(log.childNodes[extra - 1]);
      range.deleteContents();
    }
    if (nearEnd) log.scrollTop = log.scrollHeight;  // follow, unless the user scrolled up
  }

  progressed(body) {
    const progress = Number.isInteger(body.done) && Number.isInteger(body.total)
      ? `${body.done}/${body.total}` : String(body.stage || '');
    const shown = {...this.record, progress};
    if (typeof body.eta === 'number') shown.eta = String(body.eta);
    this.record = shown;
    if (isLive(shown)) clear(this.progress).append(progressLine(shown));
    // The whole data: the card reads the printer's state and the print's done/total, elapsed, eta.
    if (this.printer && body.printer && typeof body.printer === 'object') this.printer.update(body);
  }

  statusChanged(body) {
    if (typeof body.status === 'string' && this.record) this.record = {...this.record, status: body.status};
    this.refresh().then(() => this.showExtras());
  }

  /** Download the result with the token (fetch, then a blob: URL the browser saves). */
  async download() {
    try {
      const {blob, name} = await this.api.fetchDownload(this.record.out);
      saveBlob(blob, name || downloadName(this.record));
    } catch (error) {
      this.say(`Download failed: ${error.message}`, true);
    }
  }

  /** Previews of a complete result, a print's printer card: each once per view. */
  showExtras() {
    if (!this.record) return;
    if (isPrint(this.record) && !this.printer) this.loadPrinterCard();
    if (this.record.status === 'complete' && PREVIEWED.test(this.record.out || '') && !this.previewShown) {
      this.loadPreview();
    }
  }

  // The preview modules are optional: the page works without them (a failed
  // import is noted in the console as a warning, never an error).
  async loadPreview() {
    this.previewShown = true;
    const id = this.id;
    try {
      const {showPreview} = await import('./preview.js');
      const dispose = await showPreview(this.previews, this.record, this.api);
      if (id !== this.id) { if (typeof dispose === 'function') dispose(); return; }
      if (typeof dispose === 'function') this.disposers.push(dispose);
    } catch (error) {
      console.warn('no preview', error);
    }
  }

  async loadPrinterCard() {
    this.printer = {update() {}};  // a placeholder while the module loads: loaded once
    const id = this.id;
    try {
      const {printerCard} = await import('./printer.js');
      if (id !== this.id) return;
      const card = printerCard(this.printerBox);
      card.update(this.record);  // a busy print's record holds its printer's last state
      this.printer = card;
      this.disposers.push(() => card.dispose());
    } catch (error) {
      console.warn('no printer card', error);
    }
  }

  say(text, isError = false) {
    if (!this.message) return;
    this.message.textContent = text;
    this.message.classList.toggle('error', isError);
  }
}

/** Save a blob as a file named ``name`` (a blob: URL, freed soon after). */
function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = el('a', {href: url, download: name});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** A step's way back to its job. */
function jobLink(record) {
  return el('p', {class: 'job-link'}, `step ${record.step || '?'} of `,
    el('a', {href: `#task=${encodeURIComponent(record.job)}`}, `job ${record.job}`));
}

/** The result's name: the model's name with the result's extension ("cube.stl"). */
function downloadName(record) {
  const out = String(record.out).split('/').pop();
  const dot = out.lastIndexOf('.');
  const stem = String(inputNamesOf(record)).split(',')[0].trim().replace(/\.[^.]*$/, '');
  return stem && dot > 0 ? `${stem}${out.slice(dot)}` : out;
}
