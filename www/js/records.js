// What the page reads from a task's record (the server's "key: value"
// fields as JSON strings): its state, progress, steps.  No DOM here.

// Busy records carry a flag for the state beside running (rrc/states.py).
const BUSY_FLAGS = ['queued', 'waiting', 'suspended'];
// The services whose tasks print (a record may also name its printer).
const PRINT_SERVICES = ['printrun', 'printcore'];

/** The word a user reads: queued, waiting, suspended, running, complete, failed. */
export function stateOf(record) {
  if (record.status !== 'busy') return record.status || 'unknown';
  for (const flag of BUSY_FLAGS) {
    if (record[flag] === 'yes') return flag;
  }
  return 'running';
}

/** True while a task has not ended. */
export function isLive(record) {
  return record.status === 'busy';
}

/** True for a print: its service prints, or its record names a printer. */
export function isPrint(record) {
  return PRINT_SERVICES.includes(record.service) || Boolean(record.printer);
}

/** True for a pipeline job (its record lists its steps). */
export function isJob(record) {
  return typeof record.steps === 'string' && record.steps !== '';
}

/** {fraction (0..1 or null), stage (text or '')} of a record's progress field
 *  ("DONE/TOTAL" or a stage's name). */
export function progressOf(record) {
  const text = String(record.progress || '');
  const parts = /^(\d+)\/(\d+)$/.exec(text);
  if (parts && Number(parts[2]) > 0) {
    return {fraction: Math.min(1, Number(parts[1]) / Number(parts[2])), stage: ''};
  }
  return {fraction: null, stage: text};
}

/** Seconds left, when the record (or its live progress) says. */
export function secondsLeft(record) {
  for (const key of ['eta', 'etaSeconds']) {
    if (record[key] !== undefined && record[key] !== '' && Number.isFinite(Number(record[key]))) {
      return Number(record[key]);
    }
  }
  return null;
}

/** A job's steps: [{number, id, service, state}] from its "stepN: ID SERVICE STATE" fields. */
export function stepsOf(record) {
  if (!isJob(record)) return [];
  return record.steps.split(',').map((id, index) => {
    const number = index + 1;
    const words = String(record[`step${number}`] || '').split(' ');
    return {number, id, service: words[1] || '', state: words.slice(2).join(' ') || ''};
  });
}

/** Seconds a task ran (or has run so far), from its times. */
export function durationOf(record, now = Date.now() / 1000) {
  const start = Number(record.stime || record.ctime);
  if (!start) return null;
  const end = Number(record.etime) || (isLive(record) ? now : start);
  return Math.max(0, end - start);
}

/** What a user calls the task: the names the client sent its inputs with
 *  (or the stored inputs' names); a job, its pipe ("openscad | slic3r"). */
export function inputNamesOf(record) {
  if (record.inputNames) return record.inputNames.split('/').filter(Boolean).join(', ');
  if (isJob(record) && record.cmd) return record.cmd;
  return String(record.in || '').split(',').map((path) => path.split('/').pop()).filter(Boolean).join(', ');
}
