// The token prompt: a form in the page (not prompt()), shown when the
// server answers 401.  The token is kept in sessionStorage (this tab,
// until it closes) and sent only as a header (api.js).

import {el, show} from './dom.js';

export class TokenPrompt {
  constructor(api, {onToken}) {
    this.api = api;
    this.onToken = onToken;
    this.input = el('input', {type: 'password', id: 'token-input', name: 'token', required: true,
      autocomplete: 'off', spellcheck: 'false'});
    this.message = el('p', {class: 'message error', id: 'token-message', role: 'alert'});
    this.section = el('section', {id: 'token', class: 'token', hidden: true, 'aria-labelledby': 'token-title'},
      el('h2', {id: 'token-title'}, 'This server needs its token'),
      el('p', {}, 'Ask whoever runs it for the token (token in its rrcloudrc). '
        + 'It stays in this tab only and is sent as a header, never in a URL.'),
      el('form', {id: 'token-form', onsubmit: (event) => this.submit(event)},
        // (no user name and autocomplete off: the token is not a password to be saved)
        el('label', {for: 'token-input'}, 'token '), this.input, ' ',
        el('button', {type: 'submit', class: 'primary', id: 'token-submit'}, 'Open')),
      this.message);
  }

  /** Ask for the token; a token given before was refused when one was stored. */
  ask() {
    if (!this.section.hidden) return;
    this.message.textContent = this.api.token ? 'That token was refused.' : '';
    this.api.setToken('');
    show(this.section, true);
    this.input.focus();
  }

  submit(event) {
    event.preventDefault();
    const token = this.input.value.trim();
    if (!token) return;
    this.api.setToken(token);
    this.input.value = '';
    show(this.section, false);
    this.onToken();
  }
}
