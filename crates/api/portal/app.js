// The tenant portal: a client of the API, never a second authority. It trades its link's
// token (in the address's fragment) for a session once, keeps the session in sessionStorage
// and sends it as a bearer token to /v1; it sets and reads no cookie. Everything shown comes
// from the API and may be hostile (descriptions, payloads, receivers' answers): the page
// builds the DOM with createElement and textContent only, never from HTML strings, so the
// Content-Security-Policy can require Trusted Types and nothing sent can run.
'use strict';

(() => {
  const STORE = 'gancho.portal.session';
  const main = document.getElementById('main');
  let session = loadSession();
  // Each navigation gets a number; a view that finishes after the next one started is dropped.
  let generation = 0;
  let timers = [];

  // ---- helpers ------------------------------------------------------------------------

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(STORE));
      if (s && s.session && new Date(s.expires_at) > new Date()) return s;
    } catch (_) { /* nothing stored */ }
    return null;
  }

  /** el('tag', {attr: value, onclick: fn}, child, ...): strings become text, never HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else if (key === 'value') node.value = value;
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const enc = encodeURIComponent;
  const canManage = () => session && session.scope === 'manage';

  function when(iso) {
    if (!iso) return el('span', { class: 'muted' }, '–');
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el('span', {}, iso);
    return el('time', { datetime: iso, title: d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') }, d.toLocaleString());
  }

  function say(message) {
    const status = document.getElementById('status');
    status.textContent = message;
    status.hidden = false;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { status.hidden = true; }, 4000);
  }

  class ApiError extends Error {
    constructor(status, message, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${session.session}` };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    const url = new URL(`../v1/tenants/${enc(session.tenant)}${path}`, location.href);
    const response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
    });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (response.status === 401) {
      sessionStorage.removeItem(STORE);
      session = null;
      ended();
      throw new ApiError(401, 'The session has ended.', 'ended');
    }
    if (!response.ok) {
      const err = data && data.error ? data.error : {};
      throw new ApiError(response.status, err.message || `The server answered ${response.status}.`, err.code);
    }
    return data;
  }

  function errorBox(err) {
    return el('div', { class: 'error', role: 'alert' }, err instanceof ApiError ? err.message : `Something failed: ${err.message}`);
  }

  function render(gen, ...nodes) {
    if (gen !== generation) return;
    main.replaceChildren(...nodes.flat(Infinity).filter((n) => n));
  }

  function every(ms, fn) {
    timers.push(setInterval(fn, ms));
  }

  function field(label, input, hint) {
    const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
    input.id = id;
    return el('div', {}, el('label', { for: id }, label, hint ? el('span', { class: 'hint' }, ` ${hint}`) : null), input);
  }

  /** A button that asks again in the page (no browser dialog) before it acts. */
  function confirmButton(label, question, action, cls) {
    const box = el('span', { class: 'row' });
    const ask = el('button', { type: 'button', class: cls || '', onclick: () => {
      box.replaceChildren(
        el('span', {}, question),
        el('button', { type: 'button', class: 'danger', onclick: action }, `Yes, ${label.toLowerCase()}`),
        el('button', { type: 'button', onclick: () => box.replaceChildren(ask) }, 'Cancel'),
      );
      box.querySelector('button').focus();
    } }, label);
    box.append(ask);
    return box;
  }

  // ---- sessions -----------------------------------------------------------------------

  /** Trades a link's token for a session; false (with the page saying why) when refused. */
  async function openLink(token) {
    // Off the address bar and the history at once: the token works once anyway.
    history.replaceState(null, '', location.pathname + location.search);
    let answer;
    try {
      const response = await fetch(new URL('session', location.href), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ token }),
        credentials: 'omit',
        cache: 'no-store',
      });
      answer = { status: response.status, data: await response.json().catch(() => null) };
    } catch (err) {
      problem('The server could not be reached', `${err.message}. Try the link again in a moment.`);
      return false;
    }
    if (answer.status !== 201) {
      const err = (answer.data && answer.data.error) || {};
      const titles = {
        link_used: 'This link was used already',
        link_expired: 'This link has expired',
      };
      problem(titles[err.code] || 'This link is not valid', err.message || 'Ask whoever gave you the link for a new one.');
      return false;
    }
    session = answer.data;
    sessionStorage.setItem(STORE, JSON.stringify(session));
    history.replaceState(null, '', '#/endpoints');
    return true;
  }

  function start() {
    window.addEventListener('hashchange', route);
    return route();
  }

  function problem(title, text) {
    generation += 1;
    timers.forEach(clearInterval);
    timers = [];
    document.getElementById('nav').hidden = true;
    document.getElementById('who').textContent = '';
    document.title = `${title} · Webhooks`;
    main.replaceChildren(el('h1', {}, title), el('p', {}, text));
  }

  function ended() {
    problem('The session has ended', 'It expired or was ended. Open a new portal link to go on.');
  }

  function showWho() {
    document.getElementById('nav').hidden = false;
    document.getElementById('who').textContent =
      `${session.tenant} · ${canManage() ? 'manage' : 'read only'} · until ${new Date(session.expires_at).toLocaleString()}`;
  }

  // ---- routing ------------------------------------------------------------------------

  const routes = [
    [/^#\/endpoints$/, endpointsView, 'Endpoints'],
    [/^#\/endpoints\/new$/, newEndpointView, 'Add an endpoint'],
    [/^#\/endpoints\/([^/]+)$/, endpointView, 'Endpoint'],
    [/^#\/endpoints\/([^/]+)\/edit$/, editEndpointView, 'Edit endpoint'],
    [/^#\/endpoints\/([^/]+)\/attempts$/, attemptsView, 'Delivery log'],
    [/^#\/attempts$/, attemptsView, 'Delivery log'],
    [/^#\/events$/, eventView, 'Find an event'],
    [/^#\/events\/([^/]+)$/, eventView, 'Event'],
    [/^#\/dead-letters$/, deadLettersView, 'Dead letters'],
    [/^#\/jobs$/, jobsView, 'Jobs'],
    [/^#\/jobs\/([^/]+)$/, jobView, 'Job'],
  ];

  async function route() {
    // A link opened in a tab where the portal already runs changes only the fragment.
    const link = /^#t=([A-Za-z0-9_]+)$/.exec(location.hash);
    if (link && !(await openLink(link[1]))) return undefined;
    if (!session) {
      problem('No session', 'Open this page from a portal link: ask whoever manages your webhooks for one.');
      return undefined;
    }
    showWho();
    timers.forEach(clearInterval);
    timers = [];
    const gen = ++generation;
    const [path, query] = (location.hash || '#/endpoints').split('?');
    const params = new URLSearchParams(query || '');
    for (const [pattern, view, title] of routes) {
      const match = pattern.exec(path === '#' || path === '' ? '#/endpoints' : path);
      if (!match) continue;
      document.title = `${title} · Webhooks`;
      render(gen, el('p', { class: 'muted' }, 'Loading…'));
      try {
        const args = match.slice(1).map((m) => decodeURIComponent(m));
        render(gen, await view(gen, params, ...args));
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return undefined;
        if (err instanceof ApiError && err.status === 404) {
          render(gen, el('h1', {}, 'Not found'), el('p', {}, err.message), el('a', { href: '#/endpoints' }, 'Back to the endpoints'));
        } else {
          render(gen, el('h1', {}, title), errorBox(err));
        }
      }
      main.focus();
      return undefined;
    }
    render(gen, el('h1', {}, 'Not found'), el('p', {}, 'There is no such page.'), el('a', { href: '#/endpoints' }, 'Back to the endpoints'));
    return undefined;
  }

  // ---- endpoints ----------------------------------------------------------------------

  function stateOf(ep) {
    if (ep.disabled) return el('span', { class: 'badge bad' }, `disabled${ep.disabled_reason ? `: ${ep.disabled_reason}` : ''}`);
    if (ep.paused) return el('span', { class: 'badge warn' }, `paused${ep.held ? `, ${ep.held} held` : ''}`);
    if (ep.failing_since) return el('span', { class: 'badge bad' }, 'failing since ', when(ep.failing_since));
    return el('span', { class: 'badge ok' }, 'active');
  }

  async function endpointsView(gen, params) {
    const q = params.get('q') || '';
    const query = new URLSearchParams({ limit: '50' });
    if (q) query.set('q', q);
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/endpoints?${query}`);
    const box = el('input', { type: 'search', id: 'search', value: q, placeholder: 'part of a URL or description' });
    const search = el('form', { role: 'search', class: 'row', onsubmit: (event) => {
      event.preventDefault();
      const v = box.value.trim();
      location.hash = `#/endpoints${v ? `?q=${enc(v)}` : ''}`;
    } }, field('Search', box), el('button', { type: 'submit' }, 'Search'));
    const rows = page.data.map((ep) => el('tr', {},
      el('td', { class: 'wrap' }, el('a', { href: `#/endpoints/${enc(ep.id)}` }, ep.url)),
      el('td', {}, ep.description || ''),
      el('td', {}, stateOf(ep)),
      el('td', {}, ep.filter_types.length ? ep.filter_types.join(', ') : 'every type')));
    return [
      el('h1', {}, 'Endpoints'),
      canManage() ? el('div', { class: 'row' }, el('a', { class: 'button', href: '#/endpoints/new' }, 'Add an endpoint')) : null,
      search,
      rows.length
        ? el('table', {}, el('thead', {}, el('tr', {}, ['URL', 'Description', 'State', 'Event types'].map((h) => el('th', { scope: 'col' }, h)))), el('tbody', {}, rows))
        : el('p', { class: 'muted' }, q ? 'No endpoint matches.' : 'No endpoints yet.'),
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/endpoints?${new URLSearchParams({ ...(q ? { q } : {}), cursor: page.next })}` }, 'Next page')) : null,
    ];
  }

  /** Success share, p95 latency and the last error of up to 100 recent attempts. */
  function health(attempts) {
    if (!attempts.length) return el('p', { class: 'muted' }, 'No attempts yet.');
    const ok = attempts.filter((a) => a.outcome === 'success').length;
    const latencies = attempts.map((a) => a.latency_ms).sort((a, b) => a - b);
    const p95 = latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.95))];
    const failed = attempts.find((a) => a.outcome !== 'success');
    return el('dl', { class: 'fields' },
      el('dt', {}, `Last ${attempts.length} attempts`), el('dd', {}, `${Math.round((100 * ok) / attempts.length)}% succeeded`),
      el('dt', {}, 'p95 latency'), el('dd', {}, `${p95.toFixed(0)} ms`),
      el('dt', {}, 'Last failure'), el('dd', {}, failed ? [failed.status ? `${failed.status} ` : '', failed.error || failed.outcome, ' ', when(failed.at)] : 'none'));
  }

  function secretBox(title, secret) {
    const copy = el('button', { type: 'button', onclick: async () => {
      try { await navigator.clipboard.writeText(secret); say('Copied.'); } catch (_) { say('Select the secret and copy it.'); }
    } }, 'Copy');
    return el('div', { class: 'secret', role: 'alert' },
      el('p', {}, el('strong', {}, title), ' It is shown only now: store it where your receiver reads it.'),
      el('p', {}, el('code', { id: 'secret' }, secret)), copy);
  }

  async function endpointView(gen, _params, id, shown) {
    const [ep, log] = await Promise.all([
      api('GET', `/endpoints/${enc(id)}`),
      api('GET', `/endpoints/${enc(id)}/attempts?limit=100`),
    ]);
    const facts = [
      ['URL', ep.url], ['Description', ep.description || '–'], ['State', el('span', { id: 'state' }, stateOf(ep))],
      ['Event types', ep.filter_types.length ? ep.filter_types.join(', ') : 'every type'],
      ['Channels', ep.channels.length ? ep.channels.join(', ') : 'any'],
      ['Rate limit', ep.rate_limit_per_sec ? `${ep.rate_limit_per_sec}/s` : 'none'],
      ['In flight at most', ep.max_in_flight || 'default'], ['Timeout', `${ep.timeout_ms} ms`],
      ['Retry schedule', ep.retry_schedule || 'default'], ['Signing', ep.signing], ['Profile', ep.profile],
      ['Created', when(ep.created_at)], ['Changed', when(ep.updated_at)],
    ];
    if (ep.public_keys && ep.public_keys.length) facts.push(['Public keys', ep.public_keys.map((k) => el('div', {}, el('code', {}, k.key), k.expires_at ? [' until ', when(k.expires_at)] : ''))]);
    const result = el('div', { 'aria-live': 'polite' });
    const nodes = [
      el('p', {}, el('a', { href: '#/endpoints' }, '← Endpoints')),
      el('h1', {}, ep.description || ep.url),
      shown ? secretBox('The endpoint was created. Its signing secret:', shown) : null,
      el('dl', { class: 'fields' }, facts.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)])),
      el('h2', {}, 'Health'), health(log.data),
      el('div', { class: 'row' },
        el('a', { class: 'button', href: `#/endpoints/${enc(id)}/attempts` }, 'Delivery log'),
        canManage() ? el('button', { type: 'button', onclick: () => sendTest(id, result) }, 'Send a test event') : null),
      result,
    ];
    if (canManage()) nodes.push(manageControls(ep, result));
    // While paused, the count of held deliveries keeps up by itself.
    if (ep.paused) {
      every(3000, async () => {
        const now = await api('GET', `/endpoints/${enc(id)}`).catch(() => null);
        const badge = document.getElementById('state');
        if (now && badge && gen === generation) badge.replaceChildren(stateOf(now));
      });
    }
    return nodes;
  }

  async function act(promise, done) {
    try {
      const value = await promise;
      if (done) done(value);
      return value;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) say(err.message);
      return undefined;
    }
  }

  async function sendTest(id, into) {
    into.replaceChildren(el('p', { class: 'muted' }, 'Sending a test event…'));
    try {
      const out = await api('POST', `/endpoints/${enc(id)}/test`, {});
      const a = out.attempt;
      into.replaceChildren(el('h2', {}, 'Test event ', el('code', {}, out.event_id)),
        a ? attemptDetail(a, true) : el('p', {}, 'Sent; its first attempt had not ended yet. ', el('a', { href: `#/events/${enc(out.event_id)}` }, 'Look it up')));
    } catch (err) {
      into.replaceChildren(errorBox(err));
    }
  }

  function manageControls(ep, result) {
    const id = ep.id;
    const grace = el('select', { id: 'grace' }, [['0s', 'at once'], ['1h', 'in 1 hour'], ['24h', 'in 24 hours'], ['7d', 'in 7 days']]
      .map(([v, t]) => el('option', { value: v, selected: v === '24h' }, t)));
    // Since when: a few choices (reachable by keyboard alone), or a time of one's own.
    const sinceChoice = el('select', { id: 'recover-from' }, [['15', '15 minutes ago'], ['60', '1 hour ago'], ['360', '6 hours ago'],
      ['1440', '24 hours ago'], ['10080', '7 days ago'], ['time', 'a time of my choice']]
      .map(([v, t]) => el('option', { value: v, selected: v === '60' }, t)));
    const since = el('input', { type: 'datetime-local', id: 'recover-since' });
    const until = el('input', { type: 'datetime-local', id: 'replay-until' });
    const ownTime = el('div', { class: 'row', hidden: true }, field('Since', since, '(your time zone)'), field('Until', until, '(replay only; empty: now)'));
    sinceChoice.addEventListener('change', () => { ownTime.hidden = sinceChoice.value !== 'time'; });
    const iso = (input) => (input.value ? new Date(input.value).toISOString() : undefined);
    const from = () => (sinceChoice.value === 'time'
      ? iso(since)
      : new Date(Date.now() - Number(sinceChoice.value) * 60000).toISOString());
    return el('section', {},
      el('h2', {}, 'Change'),
      el('div', { class: 'row' },
        el('a', { class: 'button', href: `#/endpoints/${enc(id)}/edit` }, 'Edit'),
        ep.paused
          ? el('button', { type: 'button', onclick: () => act(api('POST', `/endpoints/${enc(id)}/resume`), () => { say('Resumed: held deliveries are sent.'); route(); }) }, 'Resume')
          : el('button', { type: 'button', onclick: () => act(api('POST', `/endpoints/${enc(id)}/pause`), () => { say('Paused: new deliveries are held.'); route(); }) }, 'Pause'),
        ep.disabled ? el('button', { type: 'button', onclick: () => act(api('PATCH', `/endpoints/${enc(id)}`, { disabled: false }), () => { say('Enabled again.'); route(); }) }, 'Enable again') : null,
        confirmButton('Delete', 'Delete this endpoint? Nothing more is sent to it.', () => act(api('DELETE', `/endpoints/${enc(id)}`), () => { say('Deleted.'); location.hash = '#/endpoints'; }), 'danger')),
      ep.signing === 'hmac' ? el('div', { class: 'row' },
        field('Old secret stops', grace),
        confirmButton('Rotate the secret', 'Make a new signing secret?', () => act(api('POST', `/endpoints/${enc(id)}/secret/rotate`, { grace: grace.value }), (v) => {
          result.replaceChildren(secretBox('A new signing secret:', v.secret));
        }))) : null,
      el('h2', {}, 'Send again'),
      el('div', { class: 'row' }, field('From', sinceChoice)),
      ownTime,
      el('div', { class: 'row' },
        el('button', { type: 'button', onclick: () => {
          if (!from()) return say('Choose since when.');
          return act(api('POST', `/endpoints/${enc(id)}/recover`, { since: from() }), (job) => { location.hash = `#/jobs/${enc(job.id)}`; });
        } }, 'Recover what failed'),
        el('button', { type: 'button', onclick: () => {
          if (!from()) return say('Choose since when.');
          const body = { since: from() };
          if (sinceChoice.value === 'time' && until.value) body.until = iso(until);
          return act(api('POST', `/endpoints/${enc(id)}/replay`, body), (job) => { location.hash = `#/jobs/${enc(job.id)}`; });
        } }, 'Replay everything')),
      el('p', { class: 'hint' }, 'Recover sends the deliveries given up since then that were not delivered since; replay sends every matching event of the range again, delivered ones too.'));
  }

  async function endpointForm(gen, ep) {
    const types = await api('GET', '/event-types?limit=1000').catch(() => ({ data: [] }));
    const url = el('input', { type: 'url', required: true, value: ep ? ep.url : '', placeholder: 'https://example.com/webhooks' });
    const description = el('input', { type: 'text', value: ep ? ep.description : '' });
    const chosen = new Set(ep ? ep.filter_types : []);
    const boxes = types.data.filter((t) => !t.archived).map((t) => el('label', { class: 'hint' },
      el('input', { type: 'checkbox', value: t.name, checked: chosen.has(t.name) }), ` ${t.name}`, t.description ? ` – ${t.description}` : ''));
    const typed = el('input', { type: 'text', value: ep ? ep.filter_types.filter((t) => !types.data.some((c) => c.name === t)).join(', ') : '', placeholder: 'charge.paid, charge.refunded' });
    const channels = el('input', { type: 'text', value: ep ? ep.channels.join(', ') : '' });
    const rate = el('input', { type: 'number', min: 1, value: ep && ep.rate_limit_per_sec ? ep.rate_limit_per_sec : '' });
    const inflight = el('input', { type: 'number', min: 1, value: ep && ep.max_in_flight ? ep.max_in_flight : '' });
    const timeout = el('input', { type: 'number', min: 100, value: ep ? ep.timeout_ms : '' });
    const schedule = el('input', { type: 'text', value: ep && ep.retry_schedule ? ep.retry_schedule : '', placeholder: '0s,5s,5m,30m,2h' });
    const signing = ep ? null : el('select', {}, el('option', { value: 'hmac' }, 'HMAC with a shared secret (v1)'), el('option', { value: 'ed25519' }, 'ed25519 public key (v1a)'));
    // The delivery profile and what each needs: a token (sent in a header or the query, never
    // shown again), or Open Finance Brasil's path.
    const profile = el('select', {}, [['standard', 'Standard Webhooks'], ['token', 'Standard Webhooks plus a token the receiver checks'], ['openfinance-br', 'Open Finance Brasil']]
      .map(([v, t]) => el('option', { value: v, selected: (ep ? ep.profile : 'standard') === v }, t)));
    const tokenWhere = el('select', {}, [['header', 'a header'], ['query', 'the query string']]
      .map(([v, t]) => el('option', { value: v, selected: ep && ep.token ? (ep.token.query ? v === 'query' : v === 'header') : v === 'header' }, t)));
    const tokenName = el('input', { type: 'text', value: ep && ep.token ? (ep.token.header || ep.token.query || '') : '', placeholder: 'validationtoken' });
    const tokenValue = el('input', { type: 'password', autocomplete: 'off', value: '' });
    const pathTemplate = el('input', { type: 'text', value: ep && ep.path_template ? ep.path_template : '', placeholder: '/open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}' });
    const tokenFields = el('fieldset', {}, el('legend', {}, 'Token'),
      field('Sent in', tokenWhere), field('Header or parameter name', tokenName),
      field('Token value', tokenValue, ep && ep.token ? '(set; leave empty to keep it)' : '(never shown again)'));
    const openFinanceFields = el('div', {}, field('Path template', pathTemplate, '(appended to the URL; empty: the payments default)'));
    const showProfile = () => {
      tokenFields.hidden = profile.value !== 'token';
      openFinanceFields.hidden = profile.value !== 'openfinance-br';
    };
    profile.addEventListener('change', showProfile);
    showProfile();
    const headers = el('textarea', { rows: 3, placeholder: 'x-partner-id: 42' },
      ep ? Object.entries(ep.headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n') : '');
    // mTLS: the key is write-only; PEM blocks as pasted.
    const clientCert = el('textarea', { rows: 4, placeholder: '-----BEGIN CERTIFICATE-----' }, ep && ep.client_cert ? ep.client_cert : '');
    const clientKey = el('textarea', { rows: 4, autocomplete: 'off', placeholder: '-----BEGIN PRIVATE KEY-----' });
    const ca = el('textarea', { rows: 4, placeholder: '-----BEGIN CERTIFICATE-----' }, ep && ep.ca ? ep.ca : '');
    const problemBox = el('div', { 'aria-live': 'assertive' });
    const list = (s) => s.split(',').map((x) => x.trim()).filter((x) => x);
    const form = el('form', { novalidate: true, onsubmit: async (event) => {
      event.preventDefault();
      const body = {
        url: url.value.trim(),
        description: description.value.trim(),
        filter_types: [...boxes.map((b) => b.querySelector('input')).filter((b) => b.checked).map((b) => b.value), ...list(typed.value)],
        channels: list(channels.value),
      };
      const number = (input) => (input.value === '' ? null : Number(input.value));
      if (ep || rate.value !== '') body.rate_limit_per_sec = number(rate);
      if (ep || inflight.value !== '') body.max_in_flight = number(inflight);
      if (timeout.value !== '') body.timeout_ms = number(timeout);
      if (schedule.value.trim() !== '') body.retry_schedule = schedule.value.trim();
      if (signing) body.signing = signing.value;
      if (ep || profile.value !== 'standard') body.profile = profile.value;
      if (profile.value === 'token' && tokenValue.value) {
        body.token = { [tokenWhere.value]: tokenName.value.trim(), value: tokenValue.value };
      }
      if (profile.value === 'openfinance-br' && pathTemplate.value.trim()) body.path_template = pathTemplate.value.trim();
      const headerLines = headers.value.split('\n').map((l) => l.trim()).filter((l) => l);
      const bad = headerLines.find((l) => !l.includes(':'));
      if (bad) {
        problemBox.replaceChildren(errorBox(new Error(`each header is "name: value"; this one is not: ${bad}`)));
        return;
      }
      if (ep || headerLines.length) {
        body.headers = Object.fromEntries(headerLines.map((l) => [l.slice(0, l.indexOf(':')).trim(), l.slice(l.indexOf(':') + 1).trim()]));
      }
      if (clientCert.value.trim() && (clientKey.value.trim() || !ep)) {
        body.client_cert = clientCert.value.trim();
        body.client_key = clientKey.value.trim();
      }
      if (ca.value.trim()) body.ca = ca.value.trim();
      else if (ep && ep.ca) body.ca = null;
      // Emptied on edit: the endpoint stops presenting a client certificate.
      if (ep && ep.client_cert && !clientCert.value.trim()) {
        body.client_cert = null;
        body.client_key = null;
      }
      problemBox.replaceChildren();
      try {
        const saved = ep
          ? await api('PATCH', `/endpoints/${enc(ep.id)}`, body)
          : await api('POST', '/endpoints', body);
        if (ep) {
          say('Saved.');
          location.hash = `#/endpoints/${enc(saved.id)}`;
        } else {
          // The secret is shown once, on the endpoint's page, without passing through the URL.
          history.pushState(null, '', `#/endpoints/${enc(saved.id)}`);
          const gen2 = ++generation;
          render(gen2, await endpointView(gen2, new URLSearchParams(), saved.id, saved.secret));
          main.focus();
        }
      } catch (err) {
        if (!(err instanceof ApiError && err.status === 401)) problemBox.replaceChildren(errorBox(err));
      }
    } },
    field('URL', url, '(https)'),
    field('Description', description),
    boxes.length ? el('fieldset', {}, el('legend', {}, 'Event types from the catalog (none: every type)'), boxes) : null,
    field('Other event types', typed, '(comma-separated; none chosen: every type)'),
    field('Channels', channels, '(comma-separated; empty: any)'),
    field('Rate limit', rate, '(requests per second; empty: none)'),
    field('In flight at most', inflight, '(empty: the default)'),
    field('Timeout', timeout, '(milliseconds)'),
    field('Retry schedule', schedule, '(delays before each attempt; empty: the default)'),
    signing ? field('Signing', signing) : null,
    field('Profile', profile),
    tokenFields,
    openFinanceFields,
    field('Extra headers', headers, '(one "name: value" a line)'),
    el('fieldset', {}, el('legend', {}, 'Mutual TLS (when the receiver asks for a client certificate)'),
      field('Client certificate', clientCert, '(PEM chain)'),
      field('Client key', clientKey, ep && ep.client_cert ? '(PEM; set: leave empty to keep it)' : '(PEM; never shown again)'),
      field('CA certificates', ca, '(PEM; trusted for this endpoint besides the public roots)')),
    problemBox,
    el('div', { class: 'row' }, el('button', { type: 'submit', class: 'primary' }, ep ? 'Save' : 'Add the endpoint'),
      el('a', { href: ep ? `#/endpoints/${enc(ep.id)}` : '#/endpoints' }, 'Cancel')));
    return form;
  }

  async function newEndpointView(gen) {
    if (!canManage()) throw new ApiError(403, 'This session can look, not change: it is read only.');
    return [el('h1', {}, 'Add an endpoint'), await endpointForm(gen, null)];
  }

  async function editEndpointView(gen, _params, id) {
    if (!canManage()) throw new ApiError(403, 'This session can look, not change: it is read only.');
    const ep = await api('GET', `/endpoints/${enc(id)}`);
    return [el('p', {}, el('a', { href: `#/endpoints/${enc(id)}` }, '← Back')), el('h1', {}, 'Edit endpoint'), await endpointForm(gen, ep)];
  }

  // ---- the delivery log ---------------------------------------------------------------

  function statusOf(a) {
    if (a.status) return el('span', { class: `badge ${a.outcome === 'success' ? 'ok' : 'bad'}` }, String(a.status));
    return el('span', { class: 'badge bad' }, a.outcome);
  }

  function attemptDetail(a, open, withEndpoint) {
    const headers = Object.entries(a.response_headers || {});
    return el('details', { open },
      el('summary', {}, statusOf(a), ' ', a.type, withEndpoint ? [' → ', a.url] : null, ' · attempt ', String(a.attempt), ' · ', `${a.latency_ms.toFixed(0)} ms`, ' · ', when(a.at)),
      el('dl', { class: 'fields' },
        withEndpoint ? [el('dt', {}, 'Endpoint'), el('dd', {}, el('a', { href: `#/endpoints/${enc(a.endpoint_id)}` }, a.endpoint_id))] : null,
        el('dt', {}, 'Request'), el('dd', {}, 'POST ', a.url),
        el('dt', {}, 'webhook-id'), el('dd', {}, el('code', {}, a.delivery_id)),
        el('dt', {}, 'webhook-timestamp'), el('dd', {}, el('code', {}, String(Math.floor(new Date(a.at).getTime() / 1000)))),
        el('dt', {}, 'Request headers'), el('dd', {}, 'content-type, user-agent, webhook-id, webhook-timestamp, webhook-signature',
          el('span', { class: 'hint' }, ' (the signature, tokens and secrets are never shown)')),
        el('dt', {}, 'Event'), el('dd', {}, el('a', { href: `#/events/${enc(a.event_id)}` }, a.event_id)),
        el('dt', {}, 'Outcome'), el('dd', {}, a.outcome, a.error ? `: ${a.error}` : ''),
        el('dt', {}, 'Next attempt'), el('dd', {}, a.next_attempt_at ? when(a.next_attempt_at) : 'none'),
        el('dt', {}, 'Answer headers'), el('dd', {}, headers.length ? headers.map(([k, v]) => el('div', {}, el('code', {}, k), ': ', v)) : '–')),
      el('p', { class: 'hint' }, 'The answer’s body (first 4 KiB):'),
      el('pre', {}, a.response_body || '(empty)'));
  }

  const OUTCOMES = ['success', 'http_error', 'timeout', 'connect_error', 'tls_error', 'request_error', 'blocked'];

  /** datetime-local's value (the viewer's time) as RFC 3339, or '' when empty or invalid. */
  function isoOf(local) {
    const d = new Date(local);
    return local && !Number.isNaN(d.getTime()) ? d.toISOString() : '';
  }

  /** RFC 3339 as datetime-local's value, in the viewer's time zone. */
  function localOf(iso) {
    const d = new Date(iso);
    if (!iso || Number.isNaN(d.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  /** The delivery log of one endpoint (`id`) or of the whole tenant, with its filters. */
  async function attemptsView(gen, params, id) {
    const here = id ? `#/endpoints/${enc(id)}/attempts` : '#/attempts';
    const filters = {};
    for (const key of ['status', 'outcome', 'since', 'until']) {
      if (params.get(key)) filters[key] = params.get(key);
    }
    const query = new URLSearchParams({ limit: '50', ...filters });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const path = id ? `/endpoints/${enc(id)}/attempts` : '/attempts';
    const page = await api('GET', `${path}?${query}`);
    const status = el('input', { id: 'status-filter', value: filters.status || '', list: 'status-classes', placeholder: '5xx, 503 or none', size: 10 });
    const outcome = el('select', { id: 'outcome-filter' }, [['', 'any outcome'], ...OUTCOMES.map((o) => [o, o.replace('_', ' ')])]
      .map(([v, t]) => el('option', { value: v, selected: v === (filters.outcome || '') }, t)));
    const since = el('input', { type: 'datetime-local', id: 'since-filter', value: localOf(filters.since) });
    const until = el('input', { type: 'datetime-local', id: 'until-filter', value: localOf(filters.until) });
    const form = el('form', { class: 'row filters', onsubmit: (e) => {
      e.preventDefault();
      const next = new URLSearchParams();
      if (status.value.trim()) next.set('status', status.value.trim());
      if (outcome.value) next.set('outcome', outcome.value);
      if (isoOf(since.value)) next.set('since', isoOf(since.value));
      if (isoOf(until.value)) next.set('until', isoOf(until.value));
      location.hash = `${here}${[...next].length ? `?${next}` : ''}`;
    } },
    field('Status', status), field('Outcome', outcome), field('Since', since), field('Until', until),
    el('datalist', { id: 'status-classes' }, ['2xx', '4xx', '5xx', 'none'].map((v) => el('option', { value: v }))),
    el('button', { type: 'submit' }, 'Filter'));
    const show = (a) => attemptDetail(a, false, !id);
    const list = el('div', {}, page.data.map(show));
    const follow = el('input', { type: 'checkbox', id: 'follow', onchange: () => {
      timers.forEach(clearInterval);
      timers = [];
      if (follow.checked) every(3000, async () => {
        const fresh = await api('GET', `${path}?${new URLSearchParams({ limit: '50', ...filters })}`).catch(() => null);
        if (fresh) list.replaceChildren(...fresh.data.map(show));
      });
    } });
    return [
      id ? el('p', {}, el('a', { href: `#/endpoints/${enc(id)}` }, '← Endpoint')) : null,
      el('h1', {}, id ? 'Delivery log' : 'Delivery log of every endpoint'),
      form,
      el('p', {}, el('label', { for: 'follow', class: 'hint' }, follow, ' Follow new attempts')),
      page.data.length ? list : el('p', { class: 'muted' }, 'No attempts match.'),
      page.next ? el('div', { class: 'row' }, el('a', { href: `${here}?${new URLSearchParams({ ...filters, cursor: page.next })}` }, 'Older attempts')) : null,
    ];
  }

  // ---- events and jobs ----------------------------------------------------------------

  async function eventView(gen, _params, id) {
    const input = el('input', { type: 'text', id: 'event-id', value: id || '', required: true, placeholder: 'evt_…' });
    const form = el('form', { class: 'row', onsubmit: (event) => {
      event.preventDefault();
      if (input.value.trim()) location.hash = `#/events/${enc(input.value.trim())}`;
    } }, field('Event id', input), el('button', { type: 'submit' }, 'Find'));
    const nodes = [el('h1', {}, 'Find an event'), form];
    if (!id) return nodes;
    let found;
    try {
      found = await api('GET', `/events/${enc(id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return [...nodes, errorBox(err)];
      throw err;
    }
    nodes.push(el('h2', {}, el('code', {}, found.id), found.type ? ` · ${found.type}` : ''));
    if (!found.deliveries.length) nodes.push(el('p', { class: 'muted' }, 'No delivery of it was found.'));
    for (const d of found.deliveries) {
      nodes.push(el('section', {},
        el('h2', {}, 'To ', el('a', { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id), ': ', d.state, d.next_attempt_at ? [', next attempt ', when(d.next_attempt_at)] : ''),
        d.attempts.map((a) => attemptDetail(a, false)),
        d.dead_letter ? el('p', { class: 'bad' }, 'Given up: ', d.dead_letter.reason || d.dead_letter.kind) : null));
    }
    return nodes;
  }

  const DEAD_KINDS = ['exhausted', 'endpoint_gone', 'endpoint_disabled', 'transform', 'undecodable', 'not_json', 'subject_mismatch', 'invalid', 'schema'];

  /** What gancho gave up on, with why; the selected ones, or all that the filter shows, sent again. */
  async function deadLettersView(gen, params) {
    const filters = {};
    for (const key of ['kind', 'endpoint', 'since', 'until']) {
      if (params.get(key)) filters[key] = params.get(key);
    }
    const query = new URLSearchParams({ limit: '50', ...filters });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/dead-letters?${query}`);
    const kind = el('select', { id: 'kind-filter' }, [['', 'any kind'], ...DEAD_KINDS.map((k) => [k, k.replace(/_/g, ' ')])]
      .map(([v, t]) => el('option', { value: v, selected: v === (filters.kind || '') }, t)));
    const endpoint = el('input', { id: 'endpoint-filter', value: filters.endpoint || '', placeholder: 'ep_…', size: 16 });
    const since = el('input', { type: 'datetime-local', id: 'dl-since-filter', value: localOf(filters.since) });
    const until = el('input', { type: 'datetime-local', id: 'dl-until-filter', value: localOf(filters.until) });
    const form = el('form', { class: 'row filters', onsubmit: (e) => {
      e.preventDefault();
      const next = new URLSearchParams();
      if (kind.value) next.set('kind', kind.value);
      if (endpoint.value.trim()) next.set('endpoint', endpoint.value.trim());
      if (isoOf(since.value)) next.set('since', isoOf(since.value));
      if (isoOf(until.value)) next.set('until', isoOf(until.value));
      location.hash = `#/dead-letters${[...next].length ? `?${next}` : ''}`;
    } },
    field('Kind', kind), field('Endpoint', endpoint), field('Since', since), field('Until', until),
    el('button', { type: 'submit' }, 'Filter'));
    const boxes = [];
    const row = (d) => {
      const eventId = d.event ? d.event.id : '';
      const box = canManage() ? el('input', { type: 'checkbox', value: String(d.seq), id: `dl-${d.seq}` }) : null;
      if (box) boxes.push(box);
      return el('tr', {},
        box ? el('td', {}, el('label', { for: box.id, class: 'hint' }, box, ` ${eventId || d.seq}`)) : null,
        el('td', {}, el('time', { datetime: d.at, title: d.at }, when(d.at))),
        el('td', {}, el('span', { class: 'badge bad' }, d.kind)),
        el('td', {}, d.endpoint_id === '_events' ? 'none (refused event)' : el('a', { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id)),
        el('td', {}, eventId ? el('a', { href: `#/events/${enc(eventId)}` }, eventId) : '–'),
        el('td', { class: 'wrap' }, d.reason));
    };
    const table = el('table', {},
      el('thead', {}, el('tr', {},
        canManage() ? el('th', { scope: 'col' }, 'Select') : null,
        ['When', 'Kind', 'Endpoint', 'Event', 'Why'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, page.data.map(row)));
    const redrive = (body) => act(api('POST', '/dead-letters/redrive', body), (job) => { location.hash = `#/jobs/${enc(job.id)}`; });
    const selected = () => boxes.filter((b) => b.checked).map((b) => Number(b.value));
    const controls = canManage() && page.data.length
      ? el('div', { class: 'row' },
        confirmButton('Redrive selected', 'Send the selected dead letters again?', () => {
          const sequences = selected();
          if (!sequences.length) { say('Select the dead letters to send again first.'); return undefined; }
          return redrive({ sequences });
        }),
        confirmButton('Redrive all that match', 'Send every dead letter this filter matches again?', () => redrive({ ...filters })))
      : null;
    return [
      el('h1', {}, 'Dead letters'),
      el('p', { class: 'muted' }, 'What gancho gave up on, and why. Sent again, each is removed, so a second redrive sends nothing.'),
      form,
      page.data.length ? table : el('p', { class: 'muted' }, 'No dead letters match.'),
      controls,
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/dead-letters?${new URLSearchParams({ ...filters, cursor: page.next })}` }, 'Older dead letters')) : null,
    ];
  }

  /** What a job does, in a few words. */
  function jobWhat(job) {
    if (job.selected) return `redrive of ${job.selected} selected dead letter${job.selected === 1 ? '' : 's'}`;
    const parts = [job.kind];
    if (job.endpoint) parts.push(`of ${job.endpoint}`);
    if (job.dead_letter_kind) parts.push(`(${job.dead_letter_kind.replace(/_/g, ' ')})`);
    return parts.join(' ');
  }

  /** The tenant's recover, replay and redrive jobs, newest first, with their progress. */
  async function jobsView(gen, params) {
    const query = new URLSearchParams({ limit: '50' });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/jobs?${query}`);
    const jobs = [...page.data].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    const row = (job) => el('tr', {},
      el('td', {}, el('a', { href: `#/jobs/${enc(job.id)}` }, jobWhat(job))),
      el('td', {}, el('time', { datetime: job.created_at, title: job.created_at }, when(job.created_at))),
      el('td', {}, el('span', { class: `badge ${job.state === 'failed' ? 'bad' : job.state === 'running' ? 'warn' : ''}` }, job.state)),
      el('td', {}, el('progress', { class: 'progress', max: Math.max(job.total, 1), value: job.done, 'aria-label': `Progress of ${jobWhat(job)}` }), ` ${job.done} of ${job.total}`),
      el('td', {}, String(job.sent)),
      el('td', {}, String(job.skipped)));
    const body = el('tbody', { 'aria-live': 'polite' }, jobs.map(row));
    if (jobs.some((j) => j.state === 'running')) {
      // The rows follow the running jobs in place (focus stays where it is).
      every(2000, async () => {
        const fresh = await api('GET', `/jobs?${query}`).catch(() => null);
        if (!fresh) return;
        const sorted = [...fresh.data].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
        body.replaceChildren(...sorted.map(row));
        if (!sorted.some((j) => j.state === 'running')) { timers.forEach(clearInterval); timers = []; }
      });
    }
    return [
      el('h1', {}, 'Jobs'),
      el('p', { class: 'muted' }, 'Recover, replay and redrive: what each sends again, and how far it got.'),
      jobs.length
        ? el('table', {},
          el('thead', {}, el('tr', {}, ['Job', 'Started', 'State', 'Progress', 'Sent', 'Skipped'].map((h) => el('th', { scope: 'col' }, h)))),
          body)
        : el('p', { class: 'muted' }, 'No jobs yet.'),
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/jobs?${new URLSearchParams({ cursor: page.next })}` }, 'More jobs')) : null,
    ];
  }

  async function jobView(gen, _params, id) {
    const show = (job) => el('div', {},
      el('dl', { class: 'fields' },
        el('dt', {}, 'Kind'), el('dd', {}, job.kind),
        el('dt', {}, 'State'), el('dd', { id: 'job-state' }, job.state),
        el('dt', {}, 'Progress'), el('dd', {}, el('progress', { class: 'progress', max: Math.max(job.total, 1), value: job.done, 'aria-label': 'Progress' }), ` ${job.done} of ${job.total}`),
        el('dt', {}, 'Sent'), el('dd', { id: 'job-sent' }, String(job.sent)),
        el('dt', {}, 'Skipped'), el('dd', {}, String(job.skipped)),
        job.error ? [el('dt', {}, 'Error'), el('dd', { class: 'bad' }, job.error)] : null),
      el('p', {}, el('a', { href: '#/jobs' }, '← Jobs'),
        job.endpoint ? [' · ', el('a', { href: `#/endpoints/${enc(job.endpoint)}` }, 'Endpoint')] : null));
    const job = await api('GET', `/jobs/${enc(id)}`);
    const box = el('div', { 'aria-live': 'polite' }, show(job));
    if (job.state === 'running') {
      every(1000, async () => {
        const fresh = await api('GET', `/jobs/${enc(id)}`).catch(() => null);
        if (!fresh) return;
        box.replaceChildren(show(fresh));
        if (fresh.state !== 'running') { timers.forEach(clearInterval); timers = []; }
      });
    }
    return [
      el('h1', {}, 'Job ', el('code', {}, job.id)),
      box,
      canManage() && job.state === 'running'
        ? confirmButton('Cancel the job', 'Stop sending?', () => act(api('DELETE', `/jobs/${enc(id)}`), () => { say('Cancelled.'); route(); }))
        : null,
    ];
  }

  start();
})();
