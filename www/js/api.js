// The page's one way to the server.  The token (when the server has one)
// lives in sessionStorage and goes as "Authorization: Bearer" on every
// request — never in a URL, which would end up in logs and history.  So
// downloads, previews and event streams are fetch()es too, not links or
// EventSource (which cannot send a header).

const TOKEN_KEY = 'rrcloud.token';
// How long a stream waits before it reconnects after it broke (ms): the
// server's retry: when it sent one, doubled up to the cap while the server
// stays away (or answers and closes at once), with a jitter, so many pages
// never come back in step.  Back to the first delay once a message came, or
// once a connection stayed open STEADY_MS (a CGI's stream ends every
// cgiStreamSeconds, quiet or not: that is no failure to back off from).
const RECONNECT_FIRST_MS = 500;
const RECONNECT_MAX_MS = 30000;
const STEADY_MS = 5000;
// The server sends a comment every 15 s (rrc/web/sse.py HEARTBEAT_SECONDS):
// this long without a byte, the connection is dead (a laptop that slept, a
// NAT that forgot it) and the stream reconnects.
const SILENCE_MS = 45000;
// A tab hidden this long may have lost its connection quietly: back in
// view, its streams reconnect at once.
const HIDDEN_LONG_MS = 30000;
// Every request of the page stays on its own origin: no CORS request, no
// cookie or token to anywhere else.
const SAME_ORIGIN = {mode: 'same-origin', credentials: 'same-origin'};

/** A request the server refused or failed: its HTTP status and one-line reason. */
export class ApiError extends Error {
  constructor(status, reason, retryAfter = null) {
    super(reason || `HTTP ${status}`);
    this.status = status;
    this.retryAfter = retryAfter;  // seconds, from a 503's or 429's Retry-After
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
    const answer = await fetch(url, {...options, ...SAME_ORIGIN, headers: this.headers(options.headers)});
    if (answer.status === 401) {
      for (const fn of this.tokenListeners) fn();
    }
    if (!answer.ok) {
      const after = Number(answer.headers.get('Retry-After'));
      throw new ApiError(answer.status, await reasonOf(answer), Number.isFinite(after) && after >= 0 ? after : null);
    }
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
   *  reconnects with Last-Event-ID until closed or handlers.ended()
   *  says it is over, and when it stayed silent handlers.silenceMs (45 s
   *  by default: the server's heartbeats stopped coming).  A connection
   *  that stayed open handlers.steadyMs (5 s) and ended is no failure:
   *  the next one comes after the first delay again.
   *  handlers.error(error, {reconnecting}) hears of each failure
   *  (reconnecting false: the stream stopped, e.g. a token is needed).
   *  Returns {close(), closed}. */
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

// The files of the server a page may fetch: a result or a log, one name
// below tasks/out/ or tasks/log/ (nothing that a URL parser could read as
// another host: no "//", no backslash, no query).
const FILE_PATH = /^\/?tasks\/(out|log)\/[^/?#\\]+$/;

/** A path of the server ("tasks/out/X", "/tasks/log/ID") as an absolute
 *  path on this origin; anything else throws (the token never leaves). */
export function fileUrl(path) {
  const text = String(path);
  if (!FILE_PATH.test(text)) throw new ApiError(0, `not a file of this server: ${text.slice(0, 80)}`);
  return text.startsWith('/') ? text : `/${text}`;
}

/** The SSE format read from text chunks as they come: "field: value"
 *  lines (ended by CRLF, LF or CR, a CRLF maybe split between two chunks),
 *  a blank line dispatches the message.  onMessage({event, data, id}) gets
 *  each message with data (data: its lines joined); ``lastEventId`` is the
 *  last id: seen (a message without data sets it too); onRetry(ms) for a
 *  retry: field. */
export class SseParser {
  constructor({onMessage, onRetry, lastEventId = ''}) {
    this.onMessage = onMessage;
    this.onRetry = onRetry || (() => {});
    this.lastEventId = lastEventId;
    this.buffer = '';
    this.skipLineFeed = false;  // the last chunk ended in CR: a LF first in the next is that CRLF's
    this.message = newMessage();
  }

  feed(text) {
    if (!text) return;
    if (this.skipLineFeed && text[0] === '\n') text = text.slice(1);
    this.skipLineFeed = text.endsWith('\r');
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();  // a line not yet ended
    for (const line of lines) this.line(line);
  }

  /** Take one line into the message being read; a blank line dispatches it. */
  line(line) {
    if (line === '') {
      const message = this.message;
      this.message = newMessage();
      // An id counts once its message is whole: a connection cut before the
      // blank line comes back with the id before it, and gets that message again.
      if (message.id !== null) this.lastEventId = message.id;
      if (message.data.length) {
        this.onMessage({event: message.event || 'message', data: message.data.join('\n'), id: this.lastEventId});
      }
      return;
    }
    if (line.startsWith(':')) return;  // a heartbeat comment
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'data') this.message.data.push(value);
    else if (field === 'event') this.message.event = value;
    else if (field === 'id') {
      if (!value.includes('\0')) this.message.id = value;
    } else if (field === 'retry' && /^\d+$/.test(value)) this.onRetry(Number(value));
  }
}

/** One followed stream: fetch + a ReadableStream read by an SseParser. */
class EventStream {
  constructor(api, fields, handlers) {
    this.api = api;
    this.fields = fields;
    this.handlers = handlers;
    this.lastEventId = handlers.lastEventId || '';
    this.controller = null;
    this.closed = false;
    this.firstDelay = RECONNECT_FIRST_MS;  // the server's retry: once it said
    this.delay = this.firstDelay;
    this.wake = null;          // ends the wait before a reconnect
    this.silence = 0;          // the timer of a connection that went quiet
    this.stale = false;        // this connection was dropped on purpose: reconnect
    this.hiddenSince = document.hidden ? Date.now() : null;  // opened in a background tab
    this.wait = null;          // how long the server asked to wait (Retry-After), ms
    this.onOnline = () => this.reconnectNow();
    this.onVisibility = () => this.visibilityChanged();
    window.addEventListener('online', this.onOnline);
    document.addEventListener('visibilitychange', this.onVisibility);
    this.run();
  }

  close() {
    this.closed = true;
    this.stop();
    if (this.controller) this.controller.abort();
    if (this.wake) this.wake();
  }

  /** Over for good: no listener left behind. */
  stop() {
    clearTimeout(this.silence);
    window.removeEventListener('online', this.onOnline);
    document.removeEventListener('visibilitychange', this.onVisibility);
  }

  /** Drop the connection (or the wait) and connect again at once. */
  reconnectNow() {
    if (this.closed) return;
    this.delay = this.firstDelay;
    if (this.wake) this.wake();
    else if (this.controller) {
      this.stale = true;
      this.controller.abort();
      this.wait = 0;  // (after once() has failed: failed() sets no wait for an abort)
    }
  }

  visibilityChanged() {
    if (document.visibilityState === 'hidden') {
      this.hiddenSince = Date.now();
      return;
    }
    const hidden = this.hiddenSince === null ? 0 : Date.now() - this.hiddenSince;
    this.hiddenSince = null;
    if (hidden >= HIDDEN_LONG_MS) this.reconnectNow();
  }

  async run() {
    while (!this.closed) {
      this.wait = null;
      const over = await this.once().catch((error) => this.failed(error));
      if (over || this.closed) break;
      // the server's Retry-After at least; else the delay, give or take a quarter
      const wait = this.wait !== null ? this.wait * (1 + Math.random() / 4) : this.delay * (0.75 + Math.random() / 2);
      this.delay = Math.min(this.delay * 2, RECONNECT_MAX_MS);
      await this.sleep(wait);
    }
    this.closed = true;  // over for good: whoever follows it may start a new one
    this.stop();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done() {
        clearTimeout(timer);
        self.wake = null;
        resolve();
      }
      this.wake = done;
    });
  }

  /** One connection; true when the stream is over for good (no reconnect). */
  async once() {
    this.controller = new AbortController();
    this.stale = false;
    const headers = this.lastEventId ? {'Last-Event-ID': this.lastEventId} : {};
    const url = `${this.api.path}?${new URLSearchParams(this.fields)}`;
    const answer = await this.api.fetch(url, {headers, signal: this.controller.signal});
    if (answer.status === 204) return true;  // a task whose end we saw already
    if (this.handlers.opened) this.handlers.opened();
    const opened = Date.now();
    await this.read(answer.body.getReader());
    const steady = this.handlers.steadyMs || STEADY_MS;
    if (Date.now() - opened >= steady) this.delay = this.firstDelay;  // it worked, and ended: come back soon
    return this.handlers.ended ? this.handlers.ended() : false;
  }

  failed(error) {
    if (this.closed) return true;
    if (error.name === 'AbortError') return !this.stale;  // dropped for silence: again
    if (error instanceof ApiError && error.status === 401) {
      // No reconnect: the page asks for the token, and starts again with it.
      const stopped = new ApiError(401, 'live updates stopped: this server needs a token');
      stopped.final = true;
      if (this.handlers.error) this.handlers.error(stopped, {reconnecting: false});
      return true;
    }
    const final = error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429;
    if (error instanceof ApiError && error.retryAfter !== null) {
      this.wait = Math.min(Math.max(error.retryAfter * 1000, this.delay), RECONNECT_MAX_MS * 4);
    }
    if (this.handlers.error) this.handlers.error(error, {reconnecting: !final});
    return final;  // any other 4xx will not heal by itself
  }

  /** Read the connection until it ends, or stays silent SILENCE_MS (then abort it). */
  async read(reader) {
    const decoder = new TextDecoder();
    const parser = new SseParser({
      lastEventId: this.lastEventId,
      onMessage: (message) => this.dispatch(message),
      onRetry: (ms) => { this.firstDelay = Math.min(Math.max(ms, 100), RECONNECT_MAX_MS); },
    });
    const quiet = () => {
      this.stale = true;
      if (this.controller) this.controller.abort();
    };
    try {
      for (;;) {
        clearTimeout(this.silence);
        this.silence = setTimeout(quiet, this.handlers.silenceMs || SILENCE_MS);
        const {value, done} = await reader.read();
        if (done) return;
        parser.feed(decoder.decode(value, {stream: true}));
        this.lastEventId = parser.lastEventId;
      }
    } finally {
      clearTimeout(this.silence);
      this.lastEventId = parser.lastEventId;
    }
  }

  dispatch(message) {
    this.lastEventId = message.id;
    this.delay = this.firstDelay;  // a message came: the server works, the next break waits little
    let data;
    try {
      data = JSON.parse(message.data);
    } catch (notJson) {
      return;  // every message of rrcloud's streams is JSON; anything else is not ours
    }
    this.handlers.message({event: message.event, data, id: message.id});
  }
}

function newMessage() {
  return {event: '', data: [], id: null};  // id: the id: line's value, null without one
}
