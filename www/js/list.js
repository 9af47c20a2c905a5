// The live task list: newest first, filtered by status and service, paged
// with "more" (before=ID, so 10,000 tasks never load at once), kept up to
// date by the store-wide changes stream.

import {clear, el, humanSeconds, humanSize, localTime, patch, show} from './dom.js';
import {durationOf, inputNamesOf, isLive, progressOf, secondsLeft, stateOf, stepsOf}
  from './records.js';

const PAGE_SIZE = 50;
// Rows kept beyond those the pages brought (the first and each "more"): a
// page open all day drops its oldest rows past this (they are one "more" away).
export const ROWS_PAST_PAGES = 500;
const STATUSES = ['busy', 'complete', 'failed'];

/** The list section: its filters, its rows by task id, the stream that feeds it. */
export class TaskList {
  constructor(api, {onChange}) {
    this.api = api;
    this.onChange = onChange || (() => {});
    this.rows = new Map();
    this.records = new Map();
    this.hasMore = false;
    this.next = '';
    this.services = [];
    this.loads = 0;
    this.loading = null;  // the stream's messages while a first page is on its way
    this.pagedRows = 0;   // rows the pages brought: the cap is this plus ROWS_PAST_PAGES
    this.stream = null;
    this.build();
  }

  build() {
    this.status = el('select', {id: 'filter-status', onchange: () => this.reload()},
      el('option', {value: ''}, 'any status'),
      STATUSES.map((status) => el('option', {value: status}, status)));
    this.service = el('select', {id: 'filter-service', onchange: () => this.reload()},
      el('option', {value: ''}, 'any service'));
    // (no aria-live: progress redraws rows every second, a screen reader would never stop)
    this.list = el('ol', {class: 'tasks', id: 'tasks'});
    this.empty = el('div', {class: 'empty', id: 'empty', hidden: true});
    this.moreButton = el('button', {type: 'button', id: 'more', hidden: true, onclick: () => this.more()},
      'more');
    this.message = el('p', {class: 'message error', id: 'list-message', role: 'alert'});
    this.live = el('p', {class: 'message', id: 'list-live', role: 'status'});
    this.section = el('section', {id: 'list', 'aria-labelledby': 'list-title'},
      el('div', {class: 'section-head'},
        el('h2', {id: 'list-title'}, 'Tasks'),
        el('div', {class: 'filters'},
          el('label', {}, 'status ', this.status),
          el('label', {}, 'service ', this.service))),
      this.message, this.live, this.empty, this.list, this.moreButton);
  }

  /** Offer these services in the service filter (from meta), keeping the choice. */
  setServices(names) {
    if (names.join() === this.services.join()) return;  // unchanged: an open select stays as it is
    this.services = names;
    const chosen = this.service.value;
    clear(this.service).append(el('option', {value: ''}, 'any service'));
    for (const name of [...names, 'pipe']) this.service.append(el('option', {value: name}, name));
    this.service.value = [...names, 'pipe', ''].includes(chosen) ? chosen : '';
  }

  filters() {
    const fields = {service: 'tasks', limit: String(PAGE_SIZE)};
    if (this.status.value) fields.status = this.status.value;
    if (this.service.value) fields.of = this.service.value;
    return fields;
  }

  /** load(), its failure shown (a filter changed, the stream said reset). */
  reload() {
    return this.load().catch((error) => {
      if (error.status !== 401) this.say(`cannot load the list: ${error.message}`);
    });
  }

  /** The first page for the filters; then follow the changes from its stamp on.
   *  The stream's messages that come while the page is on its way are kept
   *  and applied again on it (the page may have been read before them). */
  async load() {
    const asked = ++this.loads;
    const buffered = [];
    this.loading = buffered;
    let answer;
    try {
      answer = await this.api.get(this.filters());
    } finally {
      if (asked === this.loads) this.loading = null;
    }
    if (asked !== this.loads) return;  // the filters changed again meanwhile: the later answer wins
    this.say('');
    this.rows.clear();
    this.records.clear();
    clear(this.list);
    this.pagedRows = 0;
    this.addPage(answer);
    for (const message of buffered) this.changed(message, false);
    this.follow(answer.stamp);
  }

  /** The next page: tasks older than the oldest shown (its answer dropped
   *  when the filters changed meanwhile). */
  async more() {
    const asked = this.loads;
    this.moreButton.disabled = true;
    this.moreButton.setAttribute('aria-busy', 'true');
    this.moreButton.textContent = 'loading…';
    try {
      const answer = await this.api.get({...this.filters(), before: this.next || this.oldestId()});
      if (asked !== this.loads) return;
      this.say('');
      this.addPage(answer);
    } catch (error) {
      if (asked === this.loads && error.status !== 401) this.say(`cannot load more tasks: ${error.message}`);
    } finally {
      this.moreButton.disabled = false;
      this.moreButton.removeAttribute('aria-busy');
      this.moreButton.textContent = 'more';
    }
  }

  addPage(answer) {
    for (const record of answer.tasks || []) this.put(record);
    this.pagedRows = this.list.childElementCount;
    this.hasMore = Boolean(answer.more);
    this.next = typeof answer.next === 'string' ? answer.next : '';  // where the next page starts
    show(this.moreButton, this.hasMore);
    this.showEmpty();
    this.section.dataset.loaded = 'yes';  // for whoever waits for the first page (the tests)
  }

  /** Follow the store's changes (once: the stream is store-wide, the filters apply here). */
  follow(stamp) {
    if (this.stream && !this.stream.closed) return;
    this.stream = this.api.stream({service: 'changes'}, {
      lastEventId: stamp || '',
      message: (message) => this.changed(message),
      opened: () => { this.live.textContent = ''; },
      // api.stream says whether it tries again: after a 401 it stopped (the token is needed).
      error: (error, how = {}) => {
        this.live.textContent = how.reconnecting === false
          ? error.message : `live updates paused: ${error.message}; reconnecting`;
      },
    });
  }

  /** A message of the changes stream (``tell``: pass it on to onChange). */
  changed(message, tell = true) {
    const {event, data} = message;
    if (this.loading && event !== 'reset') this.loading.push(message);
    const previous = data && typeof data.id === 'string' && this.records.has(data.id)
      ? stateOf(this.records.get(data.id)) : undefined;
    if (event === 'task' && data && typeof data.id === 'string') this.upsert(data);
    else if (event === 'removed' && data && typeof data.id === 'string') this.remove(data.id);
    // Too much changed while this page was away (the server sends no backlog
    // past its bound): the first page again, its stream kept.
    else if (event === 'reset') this.reload();
    else return;  // hello: nothing to do
    if (tell) this.onChange(event, data, previous);
  }

  /** A new or changed record from the stream or a submission: shown where it belongs. */
  upsert(record) {
    if (record.job) return;  // a step: its job's record carries it
    if (!this.matches(record)) {
      this.remove(record.id);
      return;
    }
    const later = this.hasMore && record.id < (this.next || this.oldestId());
    if (!this.records.has(record.id) && later) return;  // on a page not loaded yet
    this.put(record);
    this.trim();
    this.showEmpty();
  }

  /** Past the cap, the oldest rows go; "more" brings them back. */
  trim() {
    let dropped = false;
    while (this.list.childElementCount > this.pagedRows + ROWS_PAST_PAGES) {
      const oldest = this.list.lastElementChild;
      this.rows.delete(oldest.dataset.id);
      this.records.delete(oldest.dataset.id);
      oldest.remove();
      dropped = true;
    }
    if (!dropped) return;
    this.hasMore = true;
    this.next = this.oldestId();
    show(this.moreButton, true);
  }

  matches(record) {
    const status = this.status.value;
    const service = this.service.value;
    return (!status || record.status === status) && (!service || record.service === service);
  }

  /** The oldest shown task's id: the rows are in id order, so the last row's. */
  oldestId() {
    return this.list.lastElementChild ? this.list.lastElementChild.dataset.id : '';
  }

  /** Draw a record's row, in id order (newest first). */
  put(record) {
    const row = taskRow(record);
    const old = this.rows.get(record.id);
    this.records.set(record.id, record);
    if (old) {
      patch(old, row);  // in place: a link the keyboard is on keeps its focus
      return;
    }
    this.rows.set(record.id, row);
    this.insert(row, record.id);
  }

  /** Put a new row in its place: a page's rows go after the last (older),
   *  a new task before the first (newer), so both cost one comparison. */
  insert(row, id) {
    const last = this.list.lastElementChild;
    if (!last || last.dataset.id > id) {
      this.list.append(row);
      return;
    }
    for (const other of this.list.children) {
      if (other.dataset.id < id) {
        this.list.insertBefore(row, other);
        return;
      }
    }
    this.list.append(row);
  }

  remove(id) {
    const row = this.rows.get(id);
    if (row) row.remove();
    this.rows.delete(id);
    this.records.delete(id);
    this.showEmpty();
  }

  showEmpty() {
    const nothing = this.records.size === 0;
    const filtered = Boolean(this.status.value || this.service.value);
    clear(this.empty);
    if (nothing) {
      this.empty.append(filtered ? el('p', {}, 'No task matches these filters.') : firstTaskHelp(Boolean(this.api.token)));
    }
    show(this.empty, nothing);
  }

  /** An error for the user ('' clears it). */
  say(text) {
    this.message.textContent = text;
  }
}

/** What an empty store shows: how to start the first task, here and from a terminal. */
function firstTaskHelp(withToken) {
  const server = `${location.origin}/`;
  // The token itself is never shown: whoever has it types it.
  const token = withToken ? '-H "Authorization: Bearer $RRCLOUD_TOKEN" ' : '';
  return el('div', {class: 'first-task', id: 'first-task'},
    el('h3', {}, 'No tasks yet'),
    el('p', {}, 'Drop a model (an OpenSCAD .scad, an .stl, a .gcode) on this page, or choose it with ',
      el('a', {href: '#submit'}, 'Submit'), ', pick a service and press Start.'),
    el('p', {}, 'Or from a terminal:'),
    el('pre', {}, el('code', {}, `curl ${token}-F service=openscad -F fileIn0=@cube.scad -F format=json ${server}`)),
    el('p', {}, 'or, with this server in your rrcloudrc (server = ', el('code', {}, server),
      '), the wrapper that behaves like the tool:'),
    el('pre', {}, el('code', {}, 'openscad.cloud cube.scad -ocube.stl')));
}

/** One task's row: state, name, service, times, sizes, progress, steps, error. */
export function taskRow(record) {
  const state = stateOf(record);
  return el('li', {class: `task state-${state}`, 'data-id': record.id, 'data-state': state},
    el('div', {class: 'task-head'},
      el('span', {class: `badge state-${state}`}, state),
      el('a', {class: 'task-name', href: `#task=${encodeURIComponent(record.id)}`},
        inputNamesOf(record) || record.id),
      el('span', {class: 'service'}, record.service || '')),
    el('div', {class: 'task-facts'},
      el('span', {class: 'task-id'}, record.id),
      fact('client', record.client),
      fact('started', localTime(record.stime || record.ctime)),
      fact('took', humanSeconds(durationOf(record))),
      fact('in', humanSize(record.sizeIn)),
      fact('out', humanSize(record.sizeOut))),
    isLive(record) ? progressLine(record) : null,
    stepsLine(record),
    record.error ? el('p', {class: 'error'}, record.error) : null);
}

function fact(name, value) {
  return value ? el('span', {class: 'fact'}, el('span', {class: 'fact-name'}, `${name} `), value) : null;
}

/** A progress bar (indeterminate while only a stage is known) and the time left. */
export function progressLine(record) {
  const {fraction, stage} = progressOf(record);
  const left = secondsLeft(record);
  const bar = fraction === null ? el('progress', {'aria-label': 'progress'})
    : el('progress', {max: '1', value: fraction.toFixed(3), 'aria-label': 'progress'});
  return el('div', {class: 'progress-line'}, bar,
    el('span', {class: 'progress-text'},
      fraction === null ? stage : `${Math.round(fraction * 100)} %`,
      left === null ? '' : ` · ${humanSeconds(left)} left`));
}

/** A job's steps, each its service and state, linked to its own view. */
export function stepsLine(record) {
  const steps = stepsOf(record);
  if (!steps.length) return null;
  return el('ol', {class: 'steps'}, steps.map((step) =>
    el('li', {class: `step state-${step.state}`, 'data-step': step.number},
      el('a', {href: `#task=${encodeURIComponent(step.id)}`}, step.service || `step ${step.number}`), ' ',
      el('span', {class: 'step-state'}, step.state))));
}
