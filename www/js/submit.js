// Submit: files dropped on the page or picked, a service or a pipe of
// services, their options, Start.  Several files are a model and what it
// includes: the model (the one the user marks, by default the first with a
// model's extension) goes first (fileIn0), the rest after (fileIn1..N).

import {clear, el, show} from './dom.js';

// A model's extension -> the service that takes it (the first one offered wins).
const SERVICE_OF_EXT = {
  scad: ['openscad'], csg: ['openscad'], jscad: ['openjscad'], pov: ['povray'],
  stl: ['slic3r'], obj: ['slic3r'], amf: ['slic3r'], '3mf': ['slic3r'],
  gcode: ['printrun', 'printcore'], gco: ['printrun', 'printcore'], g: ['printrun', 'printcore'],
};
const PRINT_SERVICES = ['printrun', 'printcore'];
// The pipe a new builder starts with: render, then slice (a print step is added by hand).
const DEFAULT_PIPE = ['openscad', 'slic3r'];

export class SubmitForm {
  constructor(api, {onSubmitted, onDropped}) {
    this.api = api;
    this.onSubmitted = onSubmitted;
    this.onDropped = onDropped || (() => {});
    this.files = [];
    this.model = null;  // the file the tool runs (fileIn0)
    this.dragDepth = 0;
    this.services = [];
    this.printers = [];
    this.build();
  }

  build() {
    // Hidden from sight and from Tab: the "choose files" button opens it.
    this.input = el('input', {type: 'file', id: 'file-input', multiple: true, class: 'visually-hidden',
      tabindex: '-1', 'aria-hidden': 'true',
      onchange: () => this.addFiles([...this.input.files])});
    this.fileList = el('ul', {class: 'files', id: 'files'});
    this.fileNote = el('p', {class: 'file-note', id: 'files-note', hidden: true},
      'The file marked model is the one the tool runs; the others are what it includes.');
    this.mode = el('select', {id: 'submit-mode', onchange: () => this.showMode()},
      el('option', {value: 'service'}, 'one service'), el('option', {value: 'pipe'}, 'a pipe of services'));
    this.service = el('select', {id: 'submit-service', name: 'service'});
    this.args = el('input', {type: 'text', id: 'submit-args', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'e.g. -D size=20, or a printer\'s name'});
    this.outExt = el('input', {type: 'text', id: 'submit-outext', size: '5', autocomplete: 'off',
      placeholder: 'stl'});
    this.single = el('div', {class: 'single', id: 'single'},
      el('label', {}, 'service ', this.service),
      el('label', {}, 'options ', this.args),
      el('label', {}, 'output type ', this.outExt));
    this.steps = el('ol', {class: 'pipe-steps', id: 'pipe-steps'});
    this.pipe = el('div', {class: 'pipe', id: 'pipe', hidden: true}, this.steps,
      el('button', {type: 'button', id: 'add-step', onclick: () => this.addStep('')}, 'add a step'));
    this.startButton = el('button', {type: 'submit', id: 'start', class: 'primary'}, 'Start');
    this.message = el('p', {class: 'message', id: 'submit-message', role: 'status'});
    this.form = el('form', {id: 'submit-form', onsubmit: (event) => this.submit(event)},
      el('div', {class: 'dropzone', id: 'dropzone'},
        el('p', {}, 'Drop a model (and the files it includes) anywhere on the page, or '),
        el('button', {type: 'button', id: 'choose-files', onclick: () => this.input.click()}, 'choose files'),
        this.input, this.fileList, this.fileNote),
      el('label', {}, 'run ', this.mode), this.single, this.pipe,
      el('div', {class: 'actions'}, this.startButton), this.message);
    this.section = el('section', {id: 'submit', 'aria-labelledby': 'submit-title'},
      el('h2', {id: 'submit-title'}, 'Submit'), this.form);
    for (const service of DEFAULT_PIPE) this.addStep(service);
  }

  /** Files dragged onto ``target`` (the window: anywhere, below the page's
   *  end too) land here; the browser never opens them instead.  Entered and
   *  left are counted (each child entered fires both), so the highlight holds. */
  acceptDrops(target) {
    const carriesFiles = (event) => Boolean(event.dataTransfer && [...event.dataTransfer.types].includes('Files'));
    target.addEventListener('dragenter', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      this.dragDepth += 1;
      this.form.classList.add('dragging');
    });
    target.addEventListener('dragover', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      event.dataTransfer.dropEffect = 'copy';
    });
    target.addEventListener('dragleave', (event) => {
      if (!carriesFiles(event)) return;
      this.dragDepth = Math.max(0, this.dragDepth - 1);
      if (this.dragDepth === 0) this.form.classList.remove('dragging');
    });
    target.addEventListener('drop', (event) => {
      if (!carriesFiles(event)) return;
      event.preventDefault();
      this.dragDepth = 0;
      this.form.classList.remove('dragging');
      const files = [...event.dataTransfer.files];
      if (!files.length) return;
      this.addFiles(files);
      this.onDropped(files);
    });
  }

  /** The services meta offers (the page's selects list only those). */
  setServices(names) {
    if (names.join() === this.services.join()) return;  // unchanged: a choice being made stays
    this.services = names;
    fillSelect(this.service, names, this.service.value || (names.includes('openscad') ? 'openscad' : names[0]));
    for (const select of this.steps.querySelectorAll('select.step-service')) {
      fillSelect(select, names, select.value || select.dataset.wanted);
      this.showPrinterChoice(select.closest('li'));
    }
  }

  /** The named printers (a print step offers them). */
  setPrinters(names) {
    if (names.join() === this.printers.join()) return;
    this.printers = names;
    for (const step of this.steps.children) this.showPrinterChoice(step);
  }

  addFiles(files) {
    this.files.push(...files);
    if (!this.files.includes(this.model)) this.model = this.files.find(isModel) || this.files[0] || null;
    this.guessService(this.model);
    this.showFiles();
    this.input.value = '';
  }

  removeFile(index) {
    const [gone] = this.files.splice(index, 1);
    if (gone === this.model) {
      this.model = this.files.find(isModel) || this.files[0] || null;
      this.guessService(this.model);
    }
    this.showFiles();
  }

  /** The user marked ``file`` as the model: it goes first. */
  chooseModel(file) {
    this.model = file;
    this.guessService(file);
    this.showFiles();
  }

  /** The files in the order they are sent: the model first (fileIn0). */
  ordered() {
    return this.model ? [this.model, ...this.files.filter((file) => file !== this.model)] : [...this.files];
  }

  showFiles() {
    const focused = this.fileList.contains(document.activeElement) ? document.activeElement.value : null;
    clear(this.fileList);
    this.files.forEach((file, index) => {
      const radio = el('input', {type: 'radio', name: 'model', value: String(index), class: 'file-model',
        checked: file === this.model, onchange: () => this.chooseModel(file)});
      this.fileList.append(el('li', {},
        el('label', {class: 'file-role'}, radio, 'model'), ' ',
        el('span', {class: 'file-name'}, file.name), ' ',
        el('button', {type: 'button', class: 'small', 'aria-label': `remove ${file.name}`,
          onclick: () => this.removeFile(index)}, 'remove')));
      if (focused === String(index)) radio.focus();
    });
    show(this.fileNote, this.files.length > 1);
  }

  /** Pick the service the first file's extension asks for, if the server has it. */
  guessService(file) {
    if (!file) return;
    const wanted = (SERVICE_OF_EXT[extensionOf(file.name)] || []).find((name) => this.services.includes(name));
    if (wanted) this.service.value = wanted;
  }

  showMode() {
    const pipe = this.mode.value === 'pipe';
    show(this.single, !pipe);
    show(this.pipe, pipe);
  }

  addStep(service) {
    const select = el('select', {class: 'step-service', 'data-wanted': service,
      'aria-label': 'service of this step', onchange: () => this.showPrinterChoice(step)});
    fillSelect(select, this.services, service);
    const printer = el('select', {class: 'step-printer', 'aria-label': 'printer', hidden: true});
    const args = el('input', {type: 'text', class: 'step-args', autocomplete: 'off', spellcheck: 'false',
      'aria-label': 'options of this step', placeholder: 'options'});
    const step = el('li', {class: 'pipe-step'}, select, printer, args,
      el('button', {type: 'button', class: 'small step-remove', onclick: () => {
        step.remove();
        this.nameSteps();
      }}, 'remove'));
    this.steps.append(step);
    this.showPrinterChoice(step);
    this.nameSteps();
    return step;
  }

  /** Each step's controls named by its number ("remove step 2"), again after a removal. */
  nameSteps() {
    [...this.steps.children].forEach((step, index) => {
      const number = index + 1;
      step.querySelector('.step-service').setAttribute('aria-label', `service of step ${number}`);
      step.querySelector('.step-printer').setAttribute('aria-label', `printer of step ${number}`);
      step.querySelector('.step-args').setAttribute('aria-label', `options of step ${number}`);
      step.querySelector('.step-remove').setAttribute('aria-label', `remove step ${number}`);
    });
  }

  /** A print step names its printer (printers/NAME.conf): a select of them. */
  showPrinterChoice(step) {
    const service = step.querySelector('.step-service');
    const printer = step.querySelector('.step-printer');
    const prints = PRINT_SERVICES.includes(service.value || service.dataset.wanted);
    fillSelect(printer, this.printers, printer.value);
    show(printer, prints && this.printers.length > 0);
  }

  /** The form as the API takes it: a task of one service, or a pipe's steps. */
  formData() {
    const form = new FormData();
    if (this.mode.value === 'pipe') return this.pipeForm(form);
    form.set('service', this.service.value);
    this.ordered().forEach((file, index) => form.set(`fileIn${index}`, file, file.name));
    words(this.args.value).forEach((word, index) => form.set(`arg${index}`, word));
    if (this.outExt.value.trim()) form.set('outExt', this.outExt.value.trim());
    return form;
  }

  pipeForm(form) {
    form.set('service', 'pipe');
    [...this.steps.children].forEach((step, index) => {
      const prefix = `step${index + 1}`;
      form.set(prefix, step.querySelector('.step-service').value);
      const printer = step.querySelector('.step-printer');
      const stepArgs = [...(printer.hidden || !printer.value ? [] : [printer.value]),
        ...words(step.querySelector('.step-args').value)];
      stepArgs.forEach((word, number) => form.set(`${prefix}.arg${number}`, word));
      if (index === 0) this.ordered().forEach((file, number) => form.set(`${prefix}.fileIn${number}`, file, file.name));
    });
    return form;
  }

  async submit(event) {
    event.preventDefault();
    if (!this.files.length) {
      this.say('Choose or drop a file first.', true);
      return;
    }
    this.startButton.disabled = true;
    try {
      const record = await this.api.post(this.formData());
      this.say(`Started ${record.id}.`);
      this.files = [];
      this.model = null;
      this.showFiles();
      this.onSubmitted(record);
    } catch (error) {
      this.say(`Not started: ${error.message}`, true);
    } finally {
      this.startButton.disabled = false;
    }
  }

  say(text, isError = false) {
    this.message.textContent = text;
    this.message.classList.toggle('error', isError);
  }
}

function fillSelect(select, names, chosen) {
  clear(select);
  for (const name of names) select.append(el('option', {value: name}, name));
  if (names.includes(chosen)) select.value = chosen;
}

function extensionOf(name) {
  const dot = name.lastIndexOf('.');
  return dot < 0 ? '' : name.slice(dot + 1).toLowerCase();
}

/** A file a service renders or prints (not a library it includes). */
function isModel(file) {
  return extensionOf(file.name) in SERVICE_OF_EXT ? 1 : 0;
}

/** Options as typed: words split on blanks (the server checks each). */
function words(text) {
  return text.trim() ? text.trim().split(/\s+/) : [];
}
