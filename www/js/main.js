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

/** Every part of the page, built once; they talk through this object. */
class Page {
  constructor(root) {
    this.api = new Api();
    this.title = document.getElementById('title');
    this.token = new TokenPrompt(this.api, {onToken: () => this.start()});
    this.list = new TaskList(this.api, {onChange: (event, record) => this.changed(record)});
    this.panel = new ServerPanel(this.api, {onMeta: (meta) => this.meta(meta)});
    this.submitForm = new SubmitForm(this.api, {onSubmitted: (record) => this.submitted(record)});
    this.history = new HistoryView(this.api);
    this.task = new TaskView(this.api, {onRecord: (record) => this.list.upsert(record)});
    this.overview = el('div', {class: 'overview', id: 'overview'},
      el('div', {class: 'side'}, this.panel.section, this.submitForm.section),
      el('div', {class: 'main'}, this.list.section, this.history.section));
    this.error = el('p', {class: 'message error', id: 'page-error', role: 'alert', hidden: true});
    root.append(this.token.section, this.error, this.task.section, this.overview);
    this.api.onTokenNeeded(() => this.needToken());
    this.submitForm.acceptDrops(document.body);
    window.addEventListener('hashchange', () => this.route());
  }

  /** Load everything; a 401 on the way shows the token prompt instead. */
  async start() {
    show(this.error, false);
    try {
      await this.panel.refresh();
      await this.list.load();
      this.route();
      this.history.load().catch((error) => console.warn('history', error));
      this.panel.start();
    } catch (error) {
      if (error.status !== 401) this.fail(error);
    }
  }

  needToken() {
    show(this.overview, false);
    this.task.close();
    this.token.ask();
  }

  fail(error) {
    this.error.textContent = `The server did not answer: ${error.message}`;
    show(this.error, true);
  }

  /** What meta says fills the title and the service choices. */
  meta(meta) {
    const name = String(meta.serverName || '');
    this.title.textContent = name ? `rrcloud @ ${name}` : 'rrcloud';
    document.title = this.title.textContent;
    const services = String(meta.services || '').split(',').filter(Boolean);
    this.list.setServices(services);
    this.submitForm.setServices(services);
    this.api.get({service: 'printers'})
      .then((printers) => this.submitForm.setPrinters(Array.isArray(printers) ? printers.map((p) => p.name) : []))
      .catch(() => {});
  }

  /** A task changed: the server's counts move; an ended one adds to the history. */
  changed(record) {
    this.panel.soon();
    if (record && record.status && record.status !== 'busy') this.history.soon();
  }

  /** A new task shows at once (the stream will bring its changes). */
  submitted(record) {
    this.list.upsert(record);
    this.panel.soon();
  }

  /** #task=ID shows that task; anything else the overview. */
  route() {
    const match = /^#task=([0-9-]+)$/.exec(location.hash);
    if (match) {
      show(this.overview, false);
      if (this.task.id !== match[1]) this.task.open(match[1]);
      window.scrollTo(0, 0);
      return;
    }
    this.task.close();
    show(this.overview, true);
  }
}

new Page(document.getElementById('app')).start();
