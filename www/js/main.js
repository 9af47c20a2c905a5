// The page: builds its parts, asks for the token when the server wants
// one, then shows the server, the live task list, submit and history, or
// one task at #task=ID.

import {Api} from './api.js';
import {el, show} from './dom.js';
import {HistoryView} from './history.js';
import {TaskList} from './list.js';
import {ServerPanel} from './server.js';
import {SubmitForm} from './submit.js';
import {TaskView} from './task.js';
import {TokenPrompt} from './token.js';
import {stateOf} from './records.js';

// A first load that failed is tried again after this, twice as long each time up to the last.
const FIRST_RETRY_MS = 1000;
const LAST_RETRY_MS = 30000;
// How many tasks' state words are remembered (to tell a state's change from a progress step).
const SEEN_KEPT = 2000;

/** Every part of the page, built once; they talk through this object. */
class Page {
  constructor(root) {
    this.api = new Api();
    this.title = document.getElementById('title');
    this.token = new TokenPrompt(this.api, {onToken: () => this.start()});
    this.list = new TaskList(this.api, {onChange: (event, record, previous) => this.changed(event, record, previous)});
    this.panel = new ServerPanel(this.api, {onMeta: (meta, printers) => this.meta(meta, printers)});
    this.submitForm = new SubmitForm(this.api, {onSubmitted: (record) => this.submitted(record),
      onDropped: () => this.dropped()});
    this.history = new HistoryView(this.api);
    this.task = new TaskView(this.api, {onRecord: (record) => this.list.upsert(record)});
    this.overview = el('div', {class: 'overview', id: 'overview'},
      el('div', {class: 'side'}, this.panel.section, this.submitForm.section),
      el('div', {class: 'main'}, this.list.section, this.history.section));
    this.error = el('p', {class: 'message error', id: 'page-error', role: 'alert', hidden: true});
    root.append(this.token.section, this.error, this.task.section, this.overview);
    this.api.onTokenNeeded(() => this.needToken());
    // Anywhere in the window (below a short page too): a file dropped is never opened by the browser.
    this.submitForm.acceptDrops(window);
    // The state word each task had when last seen (bounded: the newest SEEN_KEPT).
    this.seen = new Map();
    this.retryMs = FIRST_RETRY_MS;
    this.retryTimer = null;
    window.addEventListener('hashchange', () => this.route(true));
    document.addEventListener('visibilitychange', () => this.visibility());
    // The skip link moves the focus, not the route (#app would close a task's view).
    const skip = document.querySelector('a.skip');
    if (skip) {
      skip.addEventListener('click', (event) => {
        event.preventDefault();
        root.focus();
      });
    }
  }

  /** Load everything at once; a 401 on the way shows the token prompt
   *  instead; a failure is shown and tried again, later each time. */
  async start() {
    clearTimeout(this.retryTimer);
    try {
      await Promise.all([this.panel.refresh(), this.list.load()]);
    } catch (error) {
      if (error.status !== 401) this.retry(error);
      return;
    }
    show(this.error, false);
    this.retryMs = FIRST_RETRY_MS;
    this.route(false);
    this.history.load().catch((error) => this.history.say(`cannot load the history: ${error.message}`));
    this.panel.start();
  }

  retry(error) {
    const seconds = Math.round(this.retryMs / 1000);
    this.fail(error, ` Trying again in ${seconds} s.`);
    this.retryTimer = setTimeout(() => this.start(), this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, LAST_RETRY_MS);
  }

  needToken() {
    show(this.overview, false);
    this.task.close();
    this.token.ask();
  }

  fail(error, then = '') {
    this.error.textContent = `The server did not answer: ${error.message}.${then}`;
    show(this.error, true);
  }

  /** A hidden tab asks the server nothing on its own; shown again, it catches up. */
  visibility() {
    this.panel.pause(document.hidden);
    this.history.pause(document.hidden);
  }

  /** What meta says fills the title and the service choices; the printers the print steps. */
  meta(meta, printers) {
    const name = String(meta.serverName || '');
    this.title.textContent = name ? `rrcloud @ ${name}` : 'rrcloud';
    document.title = this.title.textContent;
    const services = String(meta.services || '').split(',').filter(Boolean);
    this.list.setServices(services);
    this.submitForm.setServices(services);
    this.submitForm.setPrinters(Array.isArray(printers) ? printers.map((p) => String(p.name || '')) : []);
  }

  /** A task appeared, went or changed its state word: the server's counts
   *  move (not on every progress step); an ended one adds to the history. */
  changed(event, record, previous) {
    if (!record || typeof record.id !== 'string') return;
    const before = previous !== undefined ? previous : this.seen.get(record.id);
    const now = event === 'removed' ? undefined : stateOf(record);
    this.seen.delete(record.id);
    if (now !== undefined) this.seen.set(record.id, now);
    while (this.seen.size > SEEN_KEPT) this.seen.delete(this.seen.keys().next().value);
    if (before === now && event !== 'removed') return;
    this.panel.soon();
    if (now !== undefined && record.status !== 'busy') this.history.soon();
  }

  /** A new task shows at once (the stream will bring its changes). */
  submitted(record) {
    this.list.upsert(record);
    if (typeof record.id === 'string') this.seen.set(record.id, stateOf(record));
    this.panel.soon();
  }

  /** Files dropped anywhere: the Submit form shows them. */
  dropped() {
    if (location.hash === '#submit') this.route(true);
    else location.hash = '#submit';
  }

  /** #task=ID shows that task; anything else the overview (#submit and
   *  #history scrolled to).  ``moved``: the user went there, so the focus
   *  goes to the new view's heading (never on the first load's route). */
  route(moved) {
    if (!this.token.section.hidden) return;  // the token first: the page opens once it is given
    const match = /^#task=([0-9-]+)$/.exec(location.hash);
    if (match) {
      show(this.overview, false);
      if (this.task.id !== match[1]) this.task.open(match[1]);
      window.scrollTo(0, 0);
      if (moved) focusHeading(this.task.section);
      return;
    }
    const left = this.task.id;
    this.task.close();
    show(this.overview, true);
    if (!moved) return;
    const section = {'#submit': this.submitForm.section, '#history': this.history.section}[location.hash];
    if (section) {
      section.scrollIntoView();
      focusHeading(section);
      return;
    }
    // Back to the list: to the row of the task just left, else the list's heading.
    const link = left ? this.list.list.querySelector(`li.task[data-id="${left}"] a.task-name`) : null;
    if (link) link.focus();
    else focusHeading(this.list.section);
  }
}

/** Focus a view's heading (focusable by script only), so the keyboard goes on from there. */
function focusHeading(section) {
  const heading = section.querySelector('h2');
  if (!heading) return;
  heading.setAttribute('tabindex', '-1');
  heading.focus();
}

new Page(document.getElementById('app')).start();
