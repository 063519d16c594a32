// pacsflow worklist page: loads the worklist, follows the live stream (SSE) and shows one study
// at a time. Plain ES2020, no dependencies. Every value from the API reaches the DOM through
// textContent or an attribute, never through innerHTML.
'use strict';

const API = 'api/v1'; // relative to the page, served at / beside /api/v1 (and /ui/ for its assets)
const LEVELS = ['STAT', 'URGENT', 'ROUTINE']; // worklist order, most urgent first
const PAGE = 200; // entries per list request
const MAX_PAGES = 25; // a list longer than PAGE*MAX_PAGES is shown truncated
const READER_KEY = 'pacsflow.reader';
const DRAFT_PLACEHOLDER = 'No draft report yet.';

// Test hooks: pacsflowReady once the first list is rendered; pacsflowSeen[uid] = Date.now()
// when a study's row is first rendered with its AI triage (pending === false).
window.pacsflowReady = false;
window.pacsflowSeen = {};

const state = {
  entries: new Map(), // study_instance_uid → Entry (the highest revision seen)
  rows: new Map(), // study_instance_uid → {tr, entry, age} for rows in the table
  flash: new Set(), // uids changed since the last render, to flash
  levels: new Set(LEVELS), // level chips pressed
  terms: [], // search terms, lower case
  showDone: false,
  quietLoad: false, // the next list load only reveals what a filter hid: no flashing
  loaded: false, // the first list has been rendered
  selected: null, // uid in the study view
  shown: null, // the Entry object the study view shows
  series: null, // {uid, series, truncated} from GET /studies/{uid}
  busy: false, // a status PUT is in flight
};

const $ = (id) => document.getElementById(id);

// ---- formatting -------------------------------------------------------------------------------

// formatPN renders a DICOM person name (family^given^middle^prefix^suffix, maybe followed by
// =ideographic=phonetic groups) as "FAMILY, Given Middle".
function formatPN(pn) {
  if (!pn) return '';
  const [family = '', given = '', middle = '', prefix = '', suffix = ''] =
    pn.split('=')[0].split('^').map((s) => s.trim());
  const first = [prefix, given, middle].filter(Boolean).join(' ');
  let out = family && first ? `${family}, ${first}` : family || first;
  if (suffix) out += `, ${suffix}`;
  return out;
}

// DICOM DA (YYYYMMDD) → YYYY-MM-DD; TM (HHMMSS.frac) → HH:MM. Anything else is shown as sent.
const formatDA = (da) => (/^\d{8}$/.test(da || '') ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da || '');
function formatTM(tm) {
  const t = (tm || '').replace(/:/g, '');
  return /^\d{4}/.test(t) ? `${t.slice(0, 2)}:${t.slice(2, 4)}` : tm || '';
}

const pad2 = (n) => String(n).padStart(2, '0');

// formatAge: "42 s", "3 min", "1 h 05 min", "2 d 03 h".
function formatAge(ms) {
  const s = Math.max(0, Math.floor(ms / 1000)); // clamp: the server's clock may be ahead of ours
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${pad2(m % 60)} min`;
  return `${Math.floor(h / 24)} d ${pad2(h % 24)} h`;
}

// formatTime: local "YYYY-MM-DD HH:MM:SS", unambiguous whatever the browser's locale.
function formatTime(s) {
  const d = s ? new Date(s) : null;
  if (!d || Number.isNaN(d.getTime())) return s || '';
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}
const formatProb = (p) => (typeof p === 'number' ? p.toFixed(2) : '');
const statusText = (s) => (s === 'in_review' ? 'in review' : s || 'new');
const normLevel = (l) => String(l || '').trim().toUpperCase();

// ---- ordering and merging ---------------------------------------------------------------------

// timeKey parses an RFC 3339 time into [epoch ms of the whole second, nanoseconds], keeping the
// nanosecond precision Go writes, so that ties break as on the server. Absent is Go's zero time.
function timeKey(s) {
  s = s || '0001-01-01T00:00:00Z';
  const frac = /\.(\d+)/.exec(s);
  const ms = Date.parse(frac ? s.replace(frac[0], '') : s);
  return [Number.isNaN(ms) ? 0 : ms, frac ? Number((frac[1] + '00000000').slice(0, 9)) : 0];
}

const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
const cmpTime = (a, b) => cmp(a[0], b[0]) || cmp(a[1], b[1]);

function levelRank(level) {
  const i = LEVELS.indexOf(normLevel(level));
  return i < 0 ? LEVELS.length : i; // unknown levels after ROUTINE
}

// compareEntries is the server's worklist order: level, score (highest first), arrival (oldest
// first), then the Study Instance UID.
function compareEntries(a, b) {
  return (
    cmp(levelRank(a.level), levelRank(b.level)) ||
    cmp(b.score || 0, a.score || 0) ||
    cmpTime(a._first, b._first) ||
    cmp(a.study_instance_uid, b.study_instance_uid)
  );
}

// merge keeps e if it is newer than what we hold (higher revision; updated_at breaks ties when
// revisions are absent) and marks its row to flash. Returns true when e was taken.
function merge(e, flash = state.loaded) {
  if (!e || typeof e.study_instance_uid !== 'string' || !e.study_instance_uid) return false;
  const old = state.entries.get(e.study_instance_uid);
  const updated = timeKey(e.updated_at);
  if (old) {
    const d = cmp(e.revision || 0, old.revision || 0) || cmpTime(updated, old._updated);
    if (d <= 0) return false;
  }
  e._first = timeKey(e.first_received_at);
  e._updated = updated;
  e._hay = haystack(e);
  state.entries.set(e.study_instance_uid, e);
  if (flash) state.flash.add(e.study_instance_uid);
  return true;
}

// haystack is the lower-case text the search box matches against.
function haystack(e) {
  const p = e.patient || {};
  const st = e.study || {};
  return [p.name, formatPN(p.name), p.id, st.accession_number, st.study_id, st.description, (e.modalities || []).join(' ')]
    .filter(Boolean).join('\n').toLowerCase();
}

function isVisible(e) {
  if (!state.showDone && e.status === 'done') return false;
  const level = normLevel(e.level);
  if (LEVELS.includes(level) && !state.levels.has(level)) return false;
  return state.terms.every((t) => e._hay.includes(t));
}

// ---- worklist table ---------------------------------------------------------------------------

function cell(tr, cls) {
  const td = document.createElement('td');
  td.className = cls;
  tr.appendChild(td);
  return td;
}

// setText sets a cell's text, with a dash for a missing value.
function setText(node, value) {
  node.textContent = value || '—';
  node.classList.toggle('nil', !value);
}

function levelBadge(e) {
  const span = document.createElement('span');
  const level = normLevel(e.level) || 'ROUTINE';
  span.className = `badge ${level.toLowerCase()}` + (e.pending ? ' pending' : '');
  span.textContent = e.pending ? `${level} · pending AI` : level;
  span.title = e.pending
    ? `No AI result yet: level from the requested priority (${(e.study || {}).requested_procedure_priority || 'none'})`
    : `AI triage score ${formatProb(e.score)}`;
  return span;
}

function createRow(uid) {
  const tr = document.createElement('tr');
  tr.dataset.study = uid;
  tr.tabIndex = 0;
  return { tr, entry: null, age: null };
}

// fillRow rebuilds a row's cells from its entry.
function fillRow(row, e) {
  const { tr } = row;
  const level = normLevel(e.level);
  for (const l of LEVELS) tr.classList.toggle(l.toLowerCase(), level === l);
  tr.classList.toggle('pending', !!e.pending);
  tr.classList.toggle('done', e.status === 'done');
  tr.replaceChildren();
  const p = e.patient || {};
  const st = e.study || {};

  cell(tr, 'c-level').appendChild(levelBadge(e));
  row.age = cell(tr, 'c-age');
  row.age.title = `Received ${formatTime(e.first_received_at)}`;
  const name = cell(tr, 'c-name');
  setText(name, formatPN(p.name));
  name.title = name.textContent; // the full text where the column cuts it
  const pid = cell(tr, 'c-pid');
  setText(pid, p.id);
  pid.title = p.id || '';
  setText(cell(tr, 'c-acc'), st.accession_number);
  setText(cell(tr, 'c-mod'), (e.modalities || []).join('/'));
  const desc = cell(tr, 'c-desc');
  setText(desc, st.description);
  desc.title = st.description || '';

  const ai = cell(tr, 'c-ai');
  const summary = e.ai && e.ai.summary;
  if (summary) {
    ai.textContent = summary;
    ai.title = summary;
    ai.classList.toggle('negative', summary === 'no finding above threshold');
  } else {
    ai.textContent = e.pending ? 'awaiting AI' : '—';
    ai.classList.add('nil');
  }

  const status = cell(tr, 'c-status');
  const pill = document.createElement('span');
  pill.className = `status ${e.status || 'new'}`;
  pill.textContent = statusText(e.status);
  status.appendChild(pill);
  if (e.status_by && e.status !== 'new') {
    const by = document.createElement('span');
    by.className = 'by';
    by.textContent = e.status_by;
    status.appendChild(by);
  }
  row.entry = e;
  tickAge(row, Date.now());
}

function tickAge(row, now) {
  const text = formatAge(now - row.entry._first[0]);
  if (row.age.textContent !== text) row.age.textContent = text;
}

// flashRow fades a changed row from yellow back to its own background. A Web Animation, not a
// CSS class: restarting a class's animation forces a layout of the whole table.
const reducedMotion = window.matchMedia('(prefers-reduced-motion: reduce)');
function flashRow(tr) {
  for (const a of tr.getAnimations()) a.cancel();
  tr.animate([{ backgroundColor: '#fff0a6' }, {}], { duration: reducedMotion.matches ? 10 : 1600, easing: 'ease-out' });
}

let renderQueued = false;
// scheduleRender coalesces the changes that arrive before the next frame (a study's findings,
// draft and triage come together) into one render.
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// render brings the table, the counts and the study view up to date. Rows are kept and moved,
// not rebuilt, so that only changed rows are touched.
function render() {
  const all = [...state.entries.values()].sort(compareEntries);
  const visible = all.filter(isVisible);
  const keep = new Set(visible.map((e) => e.study_instance_uid));
  const tbody = $('worklist');

  for (const [uid, row] of state.rows) {
    if (!keep.has(uid)) {
      row.tr.remove();
      state.rows.delete(uid);
    }
  }
  let next = tbody.firstChild;
  for (const e of visible) {
    const uid = e.study_instance_uid;
    let row = state.rows.get(uid);
    if (!row) state.rows.set(uid, (row = createRow(uid)));
    if (row.entry !== e) fillRow(row, e);
    const selected = uid === state.selected;
    if (row.tr.classList.contains('selected') !== selected) {
      row.tr.classList.toggle('selected', selected);
      row.tr.setAttribute('aria-selected', String(selected));
    }
    if (row.tr === next) next = next.nextSibling;
    else tbody.insertBefore(row.tr, next);
    if (state.flash.has(uid)) flashRow(row.tr);
    if (!e.pending && !(uid in window.pacsflowSeen)) window.pacsflowSeen[uid] = Date.now();
  }
  state.flash.clear();

  const counts = { STAT: 0, URGENT: 0, ROUTINE: 0 };
  let open = 0;
  let inReview = 0;
  for (const e of all) {
    if (e.status === 'done') continue;
    open++;
    if (e.status === 'in_review') inReview++;
    const level = normLevel(e.level);
    if (level in counts) counts[level]++;
  }
  for (const l of LEVELS) $(`count-${l.toLowerCase()}`).textContent = counts[l];
  $('empty').hidden = visible.length > 0 || !state.loaded;
  $('summary').textContent = `${visible.length} shown · ${open} open · ${inReview} in review`;

  renderDetail();
}

// ---- study view -------------------------------------------------------------------------------

function openStudy(uid) {
  if (state.selected !== uid) {
    state.selected = uid;
    state.shown = null;
    state.series = null;
    $('status-error').hidden = true;
    const hash = `#study=${encodeURIComponent(uid)}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }
  $('detail').hidden = false;
  document.querySelector('.layout').classList.add('with-detail');
  render();
  loadStudy(uid);
}

function closeStudy() {
  state.selected = null;
  state.shown = null;
  $('detail').hidden = true;
  document.querySelector('.layout').classList.remove('with-detail');
  history.replaceState(null, '', location.pathname + location.search);
  render();
}

async function loadStudy(uid) {
  $('detail-error').hidden = true;
  try {
    const data = await getJSON(`${API}/studies/${encodeURIComponent(uid)}`);
    if (merge(data.entry)) scheduleRender();
    if (state.selected !== uid) return;
    state.series = { uid, series: data.series || [], truncated: !!data.instances_truncated };
    renderSeries(uid);
  } catch (err) {
    if (state.selected !== uid) return;
    $('detail-error').textContent = `Could not load the study: ${err.message}`;
    $('detail-error').hidden = false;
  }
}

// hashStudy is the study a link names: page#study=UID (the webhooks' links) or page#UID.
function hashStudy() {
  const h = location.hash.slice(1).replace(/^study=/, '');
  try {
    return decodeURIComponent(h.replace(/\+/g, ' ')).trim(); // Go's QueryEscape writes + for space
  } catch (_) {
    return '';
  }
}

function addField(dl, label, value, cls) {
  if (!value) return;
  const dt = document.createElement('dt');
  dt.textContent = label;
  const dd = document.createElement('dd');
  dd.textContent = value;
  if (cls) dd.className = cls;
  dl.append(dt, dd);
}

function renderDetail() {
  const uid = state.selected;
  if (!uid) return;
  const e = state.entries.get(uid);
  $('detail-removed').hidden = !!e || !state.loaded;
  if (!e || e === state.shown) return;
  const prev = state.shown;
  state.shown = e;
  const p = e.patient || {};
  const st = e.study || {};
  const ai = e.ai || null;

  $('detail-title').textContent = formatPN(p.name) || 'Unnamed patient';

  const dl = $('detail-fields');
  dl.replaceChildren();
  addField(dl, 'Patient ID', p.id);
  addField(dl, 'Birth date', formatDA(p.birth_date));
  addField(dl, 'Sex', p.sex);
  addField(dl, 'Accession', st.accession_number);
  addField(dl, 'Study ID', st.study_id);
  addField(dl, 'Study date', [formatDA(st.date), formatTM(st.time)].filter(Boolean).join(' '));
  addField(dl, 'Description', st.description);
  addField(dl, 'Referring', formatPN(st.referring_physician_name));
  addField(dl, 'Requested priority', st.requested_procedure_priority);
  addField(dl, 'Modalities', (e.modalities || []).join(', '));
  addField(dl, 'Called AE', (e.called_aes || []).join(', '));
  addField(dl, 'First received', formatTime(e.first_received_at));
  if (e.last_received_at !== e.first_received_at) addField(dl, 'Last received', formatTime(e.last_received_at));
  addField(dl, 'Study UID', e.study_instance_uid, 'uid');

  // Status and its buttons: the current status's button is disabled.
  const status = $('detail-status');
  status.className = `status ${e.status || 'new'}`;
  status.textContent = statusText(e.status);
  $('detail-status-by').textContent = [e.status_by && `by ${e.status_by}`, formatTime(e.status_at)].filter(Boolean).join(', ');
  updateButtons();

  // Preview: re-requested only when the study or its revision changes (the URL busts the cache).
  if (!prev || prev.study_instance_uid !== uid || prev.revision !== e.revision) {
    const img = $('preview');
    // Another study's image must not linger while this one loads; the load handler shows it.
    if (!prev || prev.study_instance_uid !== uid) img.hidden = true;
    if (ai) {
      img.src = `${API}/studies/${encodeURIComponent(uid)}/preview?rev=${encodeURIComponent(e.revision || 0)}`;
    } else {
      img.removeAttribute('src');
      img.hidden = true;
      $('preview-missing').textContent = 'No key image yet: the model has not seen this study.';
      $('preview-missing').hidden = false;
    }
  }

  renderTriage(e);
  renderFindings(ai);

  const report = ai && ai.report;
  $('draft-text').textContent = report || DRAFT_PLACEHOLDER;
  $('draft').classList.toggle('no-report', !report);

  if (ai && ai.model) {
    const m = ai.model;
    $('model').textContent = [m.name, m.version].filter(Boolean).join(' ') +
      (m.contract_version ? ` · contract ${m.contract_version}` : '');
    setText($('intended-use'), m.intended_use);
    $('intended-use').hidden = false;
  } else {
    $('model').textContent = 'No model result yet.';
    $('intended-use').hidden = true;
  }

  $('series-counts').textContent = `${e.num_series || 0} series · ${e.num_instances || 0} instances`;
  renderSeries(uid);
}

function renderTriage(e) {
  const box = $('triage');
  box.replaceChildren(levelBadge(e));
  const ai = e.ai;
  const line = document.createElement('p');
  if (!e.pending && ai) {
    const score = document.createElement('span');
    score.className = 'score';
    score.textContent = `score ${formatProb(ai.score ?? e.score)}`;
    box.appendChild(score);
    line.textContent = ai.reason || '';
    if (ai.triaged_at) {
      const at = document.createElement('span');
      at.className = 'muted';
      at.textContent = ` (triaged ${formatTime(ai.triaged_at)})`;
      line.appendChild(at);
    }
  } else {
    line.className = 'muted';
    line.textContent = 'No AI triage yet: the level comes from the DICOM requested priority.';
  }
  box.appendChild(line);
}

function renderFindings(ai) {
  const tbody = $('findings');
  tbody.replaceChildren();
  const findings = [...((ai && ai.findings) || [])].sort((a, b) => cmp(b.probability, a.probability));
  if (!findings.length) {
    const td = cell(tbody.insertRow(), 'nil');
    td.colSpan = 3;
    td.textContent = 'No findings yet.';
    return;
  }
  for (const f of findings) {
    const tr = tbody.insertRow();
    tr.classList.toggle('present', !!f.present);
    setText(cell(tr, 'label'), f.label);
    const prob = cell(tr, 'prob');
    const bar = document.createElement('span');
    bar.className = 'bar';
    // A width from a number we clamp ourselves, not from text: safe as a style.
    bar.style.width = `${Math.round(Math.min(1, Math.max(0, f.probability || 0)) * 100)}%`;
    const num = document.createElement('span');
    num.textContent = formatProb(f.probability);
    prob.append(bar, num);
    cell(tr, 'present-cell').textContent = f.present ? 'yes' : 'no';
  }
}

function renderSeries(uid) {
  const tbody = $('series');
  tbody.replaceChildren();
  const s = state.series;
  if (!s || s.uid !== uid) return;
  for (const se of s.series) {
    const tr = tbody.insertRow();
    setText(cell(tr, 'num'), se.series_number != null ? String(se.series_number) : '');
    setText(cell(tr, ''), se.modality);
    setText(cell(tr, ''), se.description);
    cell(tr, 'num').textContent = String((se.instances || []).length) + (s.truncated ? '+' : '');
  }
  if (s.truncated) {
    const td = cell(tbody.insertRow(), 'muted');
    td.colSpan = 4;
    td.textContent = 'Instance lists truncated by the server.';
  }
}

function updateButtons() {
  const e = state.shown;
  for (const id of ['btn-review', 'btn-done', 'btn-reopen']) {
    const b = $(id);
    b.disabled = state.busy || !e || (e.status || 'new') === b.dataset.status;
  }
}

async function setStatus(status) {
  const uid = state.selected;
  const err = $('status-error');
  err.hidden = true;
  // An empty name is sent as is: with user accounts the server takes the signed-in user's name,
  // without them it refuses, and the error below says so.
  const by = $('reader').value.trim();
  state.busy = true;
  updateButtons();
  try {
    const res = await fetch(`${API}/studies/${encodeURIComponent(uid)}/status`, {
      method: 'PUT',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      body: JSON.stringify({ status, by }),
    });
    if (!res.ok) throw new Error(await errorText(res));
    if (merge(await res.json())) render();
  } catch (e) {
    if (state.selected === uid) {
      err.textContent = `Could not set the status: ${e.message}`;
      err.hidden = false;
      if (!by) $('reader').focus();
    }
  } finally {
    state.busy = false;
    updateButtons();
  }
}

// ---- API --------------------------------------------------------------------------------------

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${res.status} ${res.statusText}`.trim();
}

async function getJSON(url) {
  const res = await fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  if (!res.ok) throw new Error(await errorText(res));
  return res.json();
}

// fetchList loads the whole list (page by page) and reconciles it with what we hold.
async function fetchList() {
  const quiet = state.quietLoad;
  state.quietLoad = false;
  const got = [];
  let total = 0;
  let asOf = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const params = new URLSearchParams({ limit: String(PAGE), offset: String(got.length) });
    if (!state.showDone) params.set('status', 'new,in_review');
    const r = await getJSON(`${API}/worklist?${params}`);
    const entries = r.entries || [];
    total = r.total || 0;
    if (asOf === null) asOf = r.as_of;
    got.push(...entries);
    if (!entries.length || got.length >= total) break;
  }
  const seen = new Set();
  for (const e of got) {
    merge(e, state.loaded && !quiet);
    seen.add(e.study_instance_uid);
  }
  // An entry we hold that a complete list lacks was removed, unless it changed after the list's
  // snapshot (an SSE event newer than the list). Done entries are left out of the list on
  // purpose while hidden: forget them, except the one the study view shows.
  if (got.length >= total) {
    const snapshot = timeKey(asOf);
    for (const [uid, e] of state.entries) {
      if (seen.has(uid)) continue;
      const filtered = !state.showDone && e.status === 'done';
      if (filtered ? uid !== state.selected : cmpTime(e._updated, snapshot) <= 0) state.entries.delete(uid);
    }
  }
  $('load-error').hidden = true;
  const first = !state.loaded;
  state.loaded = true;
  render();
  if (first) {
    window.pacsflowReady = true;
    const uid = hashStudy();
    if (uid) openStudy(uid);
  }
}

let loading = null;
let loadAgain = false;
// loadList runs fetchList, at most one at a time; a call during a load asks for one more after
// it, so that a reconnect never misses what changed while the earlier load was in flight.
function loadList() {
  if (loading) {
    loadAgain = true;
    return;
  }
  loading = (async () => {
    try {
      do {
        loadAgain = false;
        await fetchList();
      } while (loadAgain);
    } catch (err) {
      $('load-error').textContent = `Could not load the worklist: ${err.message}. Retrying…`;
      $('load-error').hidden = false;
      setTimeout(loadList, 2000); // e.g. 503 while the service loads the worklist
    } finally {
      loading = null;
    }
  })();
}

// ---- live stream ------------------------------------------------------------------------------

function setConn(s) {
  const c = $('conn');
  c.dataset.state = s;
  c.className = `conn ${s}`;
  c.textContent = s;
}

function parse(data) {
  try {
    return JSON.parse(data);
  } catch (_) {
    return null;
  }
}

let retryMs = 1000;
function connect() {
  const es = new EventSource(`${API}/stream`);
  es.onopen = () => {
    setConn('connected');
    retryMs = 1000;
    loadList(); // whatever changed while we were away
  };
  es.onerror = () => {
    setConn('reconnecting');
    // The browser retries by itself unless the server answered with an error (CLOSED).
    if (es.readyState === EventSource.CLOSED) {
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    }
  };
  es.addEventListener('entry', (ev) => {
    if (merge(parse(ev.data))) scheduleRender();
  });
  es.addEventListener('removed', (ev) => {
    const d = parse(ev.data);
    if (d && state.entries.delete(d.study_instance_uid)) scheduleRender();
  });
}

// ---- wiring -----------------------------------------------------------------------------------

function init() {
  const tbody = $('worklist');
  tbody.addEventListener('click', (ev) => {
    const tr = ev.target.closest('tr[data-study]');
    if (tr) openStudy(tr.dataset.study);
  });
  tbody.addEventListener('keydown', (ev) => {
    const tr = ev.target.closest('tr[data-study]');
    if (!tr) return;
    if (ev.key === 'Enter' || ev.key === ' ') {
      ev.preventDefault();
      openStudy(tr.dataset.study);
    } else if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
      ev.preventDefault();
      const to = ev.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
      if (to) to.focus();
    }
  });

  $('search').addEventListener('input', (ev) => {
    state.terms = ev.target.value.toLowerCase().split(/\s+/).filter(Boolean);
    render();
  });
  for (const chip of document.querySelectorAll('.chip[data-level]')) {
    chip.addEventListener('click', () => {
      const on = chip.getAttribute('aria-pressed') !== 'true';
      chip.setAttribute('aria-pressed', String(on));
      if (on) state.levels.add(chip.dataset.level);
      else state.levels.delete(chip.dataset.level);
      render();
    });
  }
  $('show-done').addEventListener('change', (ev) => {
    state.showDone = ev.target.checked;
    render();
    if (state.showDone) {
      state.quietLoad = true;
      loadList(); // done entries are only fetched when shown
    }
  });

  const reader = $('reader');
  try {
    reader.value = localStorage.getItem(READER_KEY) || '';
  } catch (_) { /* storage disabled */ }
  reader.addEventListener('input', () => {
    try {
      localStorage.setItem(READER_KEY, reader.value.trim());
    } catch (_) { /* storage disabled */ }
  });

  for (const id of ['btn-review', 'btn-done', 'btn-reopen']) {
    $(id).addEventListener('click', (ev) => setStatus(ev.currentTarget.dataset.status));
  }
  $('detail-close').addEventListener('click', closeStudy);
  document.addEventListener('keydown', (ev) => {
    // Escape in a text field clears the field instead.
    if (ev.key === 'Escape' && state.selected && !(ev.target instanceof HTMLInputElement)) closeStudy();
  });

  // A link to a study (page#uid) opens it, also when only the fragment changes.
  window.addEventListener('hashchange', () => {
    const uid = hashStudy();
    if (uid && state.loaded) openStudy(uid);
  });

  const img = $('preview');
  img.addEventListener('load', () => {
    img.hidden = false;
    $('preview-missing').hidden = true;
    img.classList.toggle('upscaled', img.naturalWidth < img.clientWidth);
  });
  img.addEventListener('error', () => {
    if (!img.getAttribute('src')) return;
    img.hidden = true;
    $('preview-missing').textContent = 'No key image.';
    $('preview-missing').hidden = false;
  });

  // Waiting times tick every second.
  setInterval(() => {
    const now = Date.now();
    for (const row of state.rows.values()) tickAge(row, now);
  }, 1000);

  loadList();
  connect();
}

init();
