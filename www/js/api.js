// The page's one way to the server.  The token (when the server has one)
// lives in sessionStorage and goes as "Authorization: Bearer" on every
// request — never in a URL, which would end up in logs and history.  So
// downloads, previews and event streams are fetch()es too, not links or
// EventSource (which cannot send a header).

const TOKEN_KEY = 'rrcloud.token';
// How long a stream waits before it reconnects after it broke (ms); it
// doubles up to the cap while the server stays away.
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 15000;

/** A request the server refused or failed: its HTTP status and one-line reason. */
export class ApiError extends Error {
  constructor(status, reason) {
    super(reason || `HTTP ${status}`);
    this.status = status;
  }
}

/** The server: its API's path, the token, and whoever waits to hear that one is needed. */
export class Api {
  constructor(path = location.pathname) {
    this.path = path.endsWith('.cgi') ? path : '/';
    this.tokenListeners = new Set();
  }

  get token() {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  }

  setToken(token) {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  /** Call fn() whenever the server answers 401 (the token is missing or wrong). */
  onTokenNeeded(fn) {
    this.tokenListeners.add(fn);
  }

  headers(extra = {}) {
    const token = this.token;
    return token ? {...extra, Authorization: `Bearer ${token}`} : extra;
  }

  /** fetch() with the token; a 401 tells the listeners, any error throws an ApiError. */
  async fetch(url, options = {}) {
    const answer = await fetch(url, {...options, headers: this.headers(options.headers)});
    if (answer.status === 401) {
      for (const fn of this.tokenListeners) fn();
    }
    if (!answer.ok) throw new ApiError(answer.status, await reasonOf(answer));
    return answer;
  }

  /** The API's URL for these query fields (format=json added). */
  url(fields) {
    const query = new URLSearchParams({...fields, format: 'json'});
    return `${this.path}?${query}`;
  }

  /** GET ?service=...&format=json: the JSON answer. */
  async get(fields) {
    return (await this.fetch(this.url(fields))).json();
  }

  /** POST a form (FormData or a plain object) with format=json: the JSON answer. */
  async post(fields) {
    const form = fields instanceof FormData ? fields : formOf(fields);
    form.set('format', 'json');
    return (await this.fetch(this.path, {method: 'POST', body: form})).json();
  }

  /** A task control (kill, suspend, resume, pause, cancel, stop): the record after it. */
  control(verb, taskId) {
    return this.post({service: verb, id: taskId});
  }

  /** A file of the server (a record's out, tasks/log/ID) as a Blob, with the token. */
  async fetchBlob(url) {
    return (await this.fetch(fileUrl(url))).blob();
  }

  /** A result to save: {blob, name}, the name the server gives it
   *  (Content-Disposition: the model's name with the result's extension). */
  async fetchDownload(url) {
    const answer = await this.fetch(fileUrl(url));
    return {blob: await answer.blob(), name: dispositionName(answer.headers.get('Content-Disposition') || '')};
  }

  /** A file of the server as text, with the token. */
  async fetchText(url) {
    return (await this.fetch(fileUrl(url))).text();
  }

  /** Follow a Server-Sent Events stream (GET with these fields) with the
   *  token: handlers.message({event, data, id}) for each message;
   *  reconnects with Last-Event-ID until closed or handlers.ended(answer)
   *  says it is over.  Returns {close()}. */
  stream(fields, handlers) {
    return new EventStream(this, fields, handlers);
  }
}

/** The one-line reason of a refusal: the JSON "error", else the text's first line. */
async function reasonOf(answer) {
  const text = await answer.text();
  try {
    const parsed = JSON.parse(text);
    if (parsed && typeof parsed.error === 'string') return parsed.error;
  } catch (notJson) {
    // a text answer: its first line says why
  }
  return text.split('\n')[0].replace(/^error: /, '') || `HTTP ${answer.status}`;
}

/** The file name a Content-Disposition header gives: filename* (UTF-8) first, else filename; '' for none. */
export function dispositionName(header) {
  const utf8 = /filename\*=UTF-8''([^;]+)/i.exec(header);
  if (utf8) {
    try {
      return decodeURIComponent(utf8[1].trim());
    } catch (badEncoding) {
      // fall back to the plain name
    }
  }
  const plain = /filename="([^"]*)"/i.exec(header);
  return plain ? plain[1] : '';
}

function formOf(fields) {
  const form = new FormData();
  for (const [name, value] of Object.entries(fields)) form.set(name, value);
  return form;
}

/** A path of the server ("tasks/out/X", "/tasks/log/ID") as an absolute path on this origin. */
export function fileUrl(path) {
  return path.startsWith('/') ? path : `/${path}`;
}

/** One followed stream: fetch + a ReadableStream read line by line (the
 *  SSE format: "field: value" lines, a blank line ends a message). */
class EventStream {
  constructor(api, fields, handlers) {
    this.api = api;
    this.fields = fields;
    this.handlers = handlers;
    this.lastEventId = handlers.lastEventId || '';
    this.controller = null;
    this.closed = false;
    this.delay = RECONNECT_FIRST_MS;
    this.run();
  }

  close() {
    this.closed = true;
    if (this.controller) this.controller.abort();
  }

  async run() {
    while (!this.closed) {
      const over = await this.once().catch((error) => this.failed(error));
      if (over || this.closed) break;
      await sleep(this.delay);
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
    }
    this.closed = true;  // over for good: whoever follows it may start a new one
  }

  /** One connection; true when the stream is over for good (no reconnect). */
  async once() {
    this.controller = new AbortController();
    const headers = this.lastEventId ? {'Last-Event-ID': this.lastEventId} : {};
    const url = `${this.api.path}?${new URLSearchParams(this.fields)}`;
    const answer = await this.api.fetch(url, {headers, signal: this.controller.signal});
    if (answer.status === 204) return true;  // a task whose end we saw already
    this.delay = RECONNECT_FIRST_MS;
    if (this.handlers.opened) this.handlers.opened();
    await this.read(answer.body.getReader());
    return this.handlers.ended ? this.handlers.ended() : false;
  }

  failed(error) {
    if (this.closed || error.name === 'AbortError') return true;
    if (this.handlers.error) this.handlers.error(error);
    // 401 waits for a token (the prompt reloads); 4xx other than 429 will not heal by itself
    return error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429;
  }

  async read(reader) {
    const decoder = new TextDecoder();
    let buffer = '';
    let message = newMessage();
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, {stream: true});
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();  // a line not yet ended
      for (const line of lines) message = this.line(line, message);
    }
  }

  /** Take one line into the message being read; a blank line dispatches it. */
  line(line, message) {
    if (line === '') {
      if (message.data.length) this.dispatch(message);
      return newMessage();
    }
    if (line.startsWith(':')) return message;  // a heartbeat comment
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'data') message.data.push(value);
    else if (field === 'event') message.event = value;
    else if (field === 'id') message.id = value;
    return message;
  }

  dispatch(message) {
    if (message.id) this.lastEventId = message.id;
    let data;
    try {
      data = JSON.parse(message.data.join('\n'));
    } catch (notJson) {
      return;  // every message of rrcloud's streams is JSON; anything else is not ours
    }
    this.handlers.message({event: message.event || 'message', data, id: message.id});
  }
}

function newMessage() {
  return {event: '', data: [], id: ''};
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
