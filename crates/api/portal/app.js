// The tenant portal: a client of the API, never a second authority. It trades its link's
// token (in the address's fragment) for a session once, keeps the session in sessionStorage
// and sends it as a bearer token to /v1; it sets and reads no cookie. Everything shown comes
// from the API and may be hostile (descriptions, payloads, receivers' answers): the page
// builds the DOM with createElement and textContent only, never from HTML strings, so the
// Content-Security-Policy can require Trusted Types and nothing sent can run.
//
// Every word the page shows comes from a catalog per language (strings/en.json,
// strings/pt-BR.json), fetched from strings.json: the api picks by Accept-Language, and the
// language switch asks for one by name and is remembered for the session. The API's own
// error messages stay in English, after a translated lead.
'use strict';

(() => {
  const STORE = 'gancho.portal.session';
  const LANG = 'gancho.portal.lang';
  const main = document.getElementById('main');
  const brand = document.querySelector('.brand span').textContent;
  let session = loadSession();
  // Each navigation gets a number; a view that finishes after the next one started is dropped.
  let generation = 0;
  let timers = [];
  let strings = {};
  let lang = 'en';
  let plurals = new Intl.PluralRules('en');

  // ---- helpers ------------------------------------------------------------------------

  function loadSession() {
    try {
      const s = JSON.parse(sessionStorage.getItem(STORE));
      if (s && s.session && new Date(s.expires_at) > new Date()) return s;
    } catch (_) { /* nothing stored */ }
    return null;
  }

  /**
   * The catalog's text for `key`, with `{name}` filled from `vars`. A key whose entry has
   * `one`/`other` forms picks one by `vars.n`.
   */
  function t(key, vars) {
    let text = strings[key];
    if (text === undefined) return key;
    if (typeof text === 'object') text = text[plurals.select(vars ? vars.n : 0)] || text.other;
    return text.replace(/\{(\w+)\}/g, (whole, name) => (vars && name in vars ? String(vars[name]) : whole));
  }

  /** Loads the catalog: the one chosen this session, or the api's pick by Accept-Language. */
  async function loadStrings() {
    const chosen = sessionStorage.getItem(LANG);
    const url = new URL(`strings.json${chosen ? `?lang=${encodeURIComponent(chosen)}` : ''}`, location.href);
    const response = await fetch(url, { credentials: 'omit', cache: 'no-store' });
    const catalog = await response.json();
    strings = catalog.strings;
    lang = catalog.lang;
    plurals = new Intl.PluralRules(lang);
    document.documentElement.lang = lang;
    for (const node of document.querySelectorAll('[data-t]')) node.textContent = t(node.dataset.t);
    const pick = document.getElementById('lang');
    pick.replaceChildren(...catalog.languages.map((l) => el('option', { value: l.code, selected: l.code === lang }, l.name)));
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

  /** A time in the viewer's time zone and language, UTC on hover. */
  function when(iso) {
    if (!iso) return el('span', { class: 'muted' }, '–');
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return el('span', {}, iso);
    return el('time', { datetime: iso, title: d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC') }, d.toLocaleString(lang));
  }

  function say(message) {
    const status = document.getElementById('status');
    status.textContent = message;
    status.hidden = false;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { status.hidden = true; }, 4000);
  }

  class ApiError extends Error {
    /** `message` is the API's (English); `field` names the body's field it is about. */
    constructor(status, message, code, field) {
      super(message);
      this.status = status;
      this.code = code;
      this.field = field;
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
      throw new ApiError(401, t('session.ended.title'), 'ended');
    }
    if (!response.ok) {
      const err = data && data.error ? data.error : {};
      throw new ApiError(response.status, err.message || t('error.status', { status: response.status }), err.code, err.field);
    }
    return data;
  }

  /** The translated lead of an error, then the API's own message. */
  /** The API's codes and their catalog keys: an attempt's outcomes, a dead letter's kinds. */
  const OUTCOME_TEXT = {
    success: 'outcome.success', http_error: 'outcome.http_error', timeout: 'outcome.timeout',
    connect_error: 'outcome.connect_error', tls_error: 'outcome.tls_error',
    request_error: 'outcome.request_error', blocked: 'outcome.blocked', proxy_error: 'outcome.proxy_error',
  };
  const DEAD_KIND_TEXT = {
    exhausted: 'dead.kind.exhausted', endpoint_gone: 'dead.kind.endpoint_gone',
    endpoint_disabled: 'dead.kind.endpoint_disabled', transform: 'dead.kind.transform',
    undecodable: 'dead.kind.undecodable', not_json: 'dead.kind.not_json',
    subject_mismatch: 'dead.kind.subject_mismatch', invalid: 'dead.kind.invalid', schema: 'dead.kind.schema',
  };

  /** One of the API's codes in the reader's language; a code this page does not know yet
   * (from a newer api), as it is. */
  function code(texts, value) {
    const key = Object.hasOwn(texts, value) ? texts[value] : null;
    return key ? t(key) : String(value).replace(/_/g, ' ');
  }

  function explain(err) {
    if (err instanceof ApiError) return `${t(err.status === 403 ? 'error.lead.forbidden' : 'error.lead')} ${err.message}`;
    return t('error.failed', { why: err.message });
  }

  function errorBox(err) {
    return el('div', { class: 'error', role: 'alert' }, explain(err));
  }

  function render(gen, ...nodes) {
    if (gen !== generation) return;
    main.replaceChildren(...nodes.flat(Infinity).filter((n) => n));
  }

  // A view that follows something (the jobs, a job, an endpoint's attempts) asks again every
  // `ms` while the page is in view: a tab left open in the background asks nothing.
  function every(ms, fn) {
    timers.push(setInterval(() => { if (!document.hidden) fn(); }, ms));
  }

  function stopTimers() {
    timers.forEach(clearInterval);
    timers = [];
  }

  function field(label, input, hint) {
    const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
    input.id = id;
    return el('div', {}, el('label', { for: id }, label, hint ? el('span', { class: 'hint' }, ` ${hint}`) : null), input);
  }

  /** The fields of a form that show the API's refusal about them (a 422's `field`) under
   * their input, which is then marked invalid and focused; `prefix` starts their ids. */
  function fieldErrors(prefix) {
    const errors = {};
    const inputs = {};
    return {
      /** Whether the refusal's field is shown in the form (not hidden with its section). */
      shows: (key) => Object.hasOwn(errors, key) && !inputs[key].closest('[hidden]'),
      slot(key, label, input, hint) {
        inputs[key] = input;
        errors[key] = el('p', { class: 'field-error', id: `${prefix}-${key}-error`, 'aria-live': 'polite' });
        input.setAttribute('aria-describedby', errors[key].id);
        return el('div', {}, field(label, input, hint), errors[key]);
      },
      clear() {
        for (const [key, box] of Object.entries(errors)) {
          box.replaceChildren();
          inputs[key].removeAttribute('aria-invalid');
        }
      },
      mark(key, text) {
        errors[key].replaceChildren(text);
        inputs[key].setAttribute('aria-invalid', 'true');
        inputs[key].focus();
      },
    };
  }

  /** A button that asks again in the page (no browser dialog) before it acts. */
  function confirmButton(label, question, yes, action, cls) {
    const box = el('span', { class: 'row' });
    const ask = el('button', { type: 'button', class: cls || '', onclick: () => {
      box.replaceChildren(
        el('span', {}, question),
        el('button', { type: 'button', class: 'danger', onclick: action }, yes),
        el('button', { type: 'button', onclick: () => box.replaceChildren(ask) }, t('confirm.no')),
      );
      box.querySelector('button').focus();
    } }, label);
    box.append(ask);
    return box;
  }

  const readOnly = () => new ApiError(403, t('session.read_only'));

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
      problem(t('link.unreachable.title'), t('link.unreachable.text', { why: err.message }));
      return false;
    }
    if (answer.status !== 201) {
      const err = (answer.data && answer.data.error) || {};
      const titles = {
        link_used: t('link.used'),
        link_expired: t('link.expired'),
      };
      problem(titles[err.code] || t('link.invalid'), err.message ? `${t('error.lead')} ${err.message}` : t('link.ask'));
      return false;
    }
    session = answer.data;
    sessionStorage.setItem(STORE, JSON.stringify(session));
    history.replaceState(null, '', '#/endpoints');
    return true;
  }

  async function start() {
    try {
      await loadStrings();
    } catch (err) {
      main.replaceChildren(el('p', { class: 'error', role: 'alert' }, `The page's words could not be loaded: ${err.message}`));
      return undefined;
    }
    document.getElementById('lang').addEventListener('change', async (event) => {
      sessionStorage.setItem(LANG, event.target.value);
      await loadStrings();
      if (session) route(); else if (!location.hash.startsWith('#t=')) problem(t('session.none.title'), t('session.none.text'));
    });
    window.addEventListener('hashchange', route);
    return route();
  }

  function problem(title, text) {
    generation += 1;
    stopTimers();
    document.getElementById('nav').hidden = true;
    document.getElementById('who').replaceChildren();
    document.title = `${title} · ${brand}`;
    main.replaceChildren(el('h1', {}, title), el('p', {}, text));
  }

  function ended() {
    problem(t('session.ended.title'), t('session.ended.text'));
  }

  function showWho() {
    document.getElementById('nav').hidden = false;
    const until = new Date(session.expires_at).toLocaleString(lang);
    document.getElementById('who').replaceChildren(
      session.opened_by === 'platform' ? el('span', { class: 'badge warn', id: 'opened-by' }, t('who.platform')) : null,
      ' ',
      t(canManage() ? 'who.manage' : 'who.read', { tenant: session.tenant, until }),
    );
  }

  // ---- routing ------------------------------------------------------------------------

  const routes = [
    [/^#\/endpoints$/, endpointsView, 'nav.endpoints'],
    [/^#\/endpoints\/new$/, newEndpointView, 'endpoint.add'],
    [/^#\/endpoints\/([^/]+)$/, endpointView, 'endpoint.title'],
    [/^#\/endpoints\/([^/]+)\/edit$/, editEndpointView, 'endpoint.edit.title'],
    [/^#\/endpoints\/([^/]+)\/attempts$/, attemptsView, 'nav.attempts'],
    [/^#\/attempts$/, attemptsView, 'nav.attempts'],
    [/^#\/events$/, eventView, 'nav.events'],
    [/^#\/events\/([^/]+)$/, eventView, 'event.title'],
    [/^#\/dead-letters$/, deadLettersView, 'nav.dead_letters'],
    [/^#\/jobs$/, jobsView, 'nav.jobs'],
    [/^#\/jobs\/([^/]+)$/, jobView, 'job.title'],
    [/^#\/event-types$/, typesView, 'nav.event_types'],
    [/^#\/event-types\/new$/, newTypeView, 'type.add'],
    [/^#\/event-types\/([^/]+)$/, typeView, 'type.title'],
    [/^#\/event-types\/([^/]+)\/edit$/, editTypeView, 'type.edit.title'],
  ];

  async function route() {
    // A link opened in a tab where the portal already runs changes only the fragment.
    const link = /^#t=([A-Za-z0-9_]+)$/.exec(location.hash);
    if (link && !(await openLink(link[1]))) return undefined;
    if (!session) {
      problem(t('session.none.title'), t('session.none.text'));
      return undefined;
    }
    showWho();
    stopTimers();
    const gen = ++generation;
    const [path, query] = (location.hash || '#/endpoints').split('?');
    const params = new URLSearchParams(query || '');
    const back = el('a', { href: '#/endpoints' }, t('notfound.back'));
    for (const [pattern, view, title] of routes) {
      const match = pattern.exec(path === '#' || path === '' ? '#/endpoints' : path);
      if (!match) continue;
      document.title = `${t(title)} · ${brand}`;
      render(gen, el('p', { class: 'muted' }, t('loading')));
      try {
        const args = match.slice(1).map((m) => decodeURIComponent(m));
        render(gen, await view(gen, params, ...args));
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return undefined;
        if (err instanceof ApiError && err.status === 404) {
          render(gen, el('h1', {}, t('notfound.title')), el('p', {}, explain(err)), back);
        } else {
          render(gen, el('h1', {}, t(title)), errorBox(err));
        }
      }
      main.focus();
      return undefined;
    }
    render(gen, el('h1', {}, t('notfound.title')), el('p', {}, t('notfound.text')), back);
    return undefined;
  }

  // ---- endpoints ----------------------------------------------------------------------

  function stateOf(ep) {
    if (ep.disabled) return el('span', { class: 'badge bad' }, ep.disabled_reason ? t('state.disabled_why', { why: ep.disabled_reason }) : t('state.disabled'));
    if (ep.paused) return el('span', { class: 'badge warn' }, ep.held ? t('state.paused_held', { n: ep.held }) : t('state.paused'));
    if (ep.failing_since) return el('span', { class: 'badge bad' }, t('state.failing_since'), ' ', when(ep.failing_since));
    return el('span', { class: 'badge ok' }, t('state.active'));
  }

  const typesOf = (ep) => (ep.filter_types.length ? ep.filter_types.join(', ') : t('endpoint.every_type'));

  async function endpointsView(gen, params) {
    const q = params.get('q') || '';
    const query = new URLSearchParams({ limit: '50' });
    if (q) query.set('q', q);
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/endpoints?${query}`);
    const box = el('input', { type: 'search', id: 'search', value: q, placeholder: t('endpoints.search.placeholder') });
    const search = el('form', { role: 'search', class: 'row', onsubmit: (event) => {
      event.preventDefault();
      const v = box.value.trim();
      location.hash = `#/endpoints${v ? `?q=${enc(v)}` : ''}`;
    } }, field(t('endpoints.search'), box), el('button', { type: 'submit' }, t('endpoints.search')));
    const rows = page.data.map((ep) => el('tr', {},
      el('td', { class: 'wrap' }, el('a', { href: `#/endpoints/${enc(ep.id)}` }, ep.url)),
      el('td', {}, ep.description || ''),
      el('td', {}, stateOf(ep)),
      el('td', {}, typesOf(ep))));
    const heads = ['endpoint.url', 'endpoint.description', 'endpoint.state', 'endpoint.types'];
    return [
      el('h1', {}, t('nav.endpoints')),
      canManage() ? el('div', { class: 'row' }, el('a', { class: 'button', href: '#/endpoints/new' }, t('endpoint.add'))) : null,
      search,
      rows.length
        ? el('table', {}, el('thead', {}, el('tr', {}, heads.map((h) => el('th', { scope: 'col' }, t(h))))), el('tbody', {}, rows))
        : el('p', { class: 'muted' }, q ? t('endpoints.none_match') : t('endpoints.none')),
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/endpoints?${new URLSearchParams({ ...(q ? { q } : {}), cursor: page.next })}` }, t('page.next'))) : null,
    ];
  }

  /** Success share, p95 latency and the last error of up to 100 recent attempts. */
  function health(attempts) {
    if (!attempts.length) return el('p', { class: 'muted' }, t('health.none'));
    const ok = attempts.filter((a) => a.outcome === 'success').length;
    const latencies = attempts.map((a) => a.latency_ms).sort((a, b) => a - b);
    const p95 = latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.95))];
    const failed = attempts.find((a) => a.outcome !== 'success');
    return el('dl', { class: 'fields' },
      el('dt', {}, t('health.last', { n: attempts.length })), el('dd', {}, t('health.succeeded', { percent: Math.round((100 * ok) / attempts.length) })),
      el('dt', {}, t('health.p95')), el('dd', {}, `${p95.toFixed(0)} ms`),
      el('dt', {}, t('health.last_failure')), el('dd', {}, failed ? [failed.status ? `${failed.status} ` : '', failed.error || code(OUTCOME_TEXT, failed.outcome), ' ', when(failed.at)] : t('none')));
  }

  function secretBox(title, secret) {
    const copy = el('button', { type: 'button', onclick: async () => {
      try { await navigator.clipboard.writeText(secret); say(t('secret.copied')); } catch (_) { say(t('secret.copy_by_hand')); }
    } }, t('secret.copy'));
    return el('div', { class: 'secret', role: 'alert' },
      el('p', {}, el('strong', {}, title), ' ', t('secret.once')),
      el('p', {}, el('code', { id: 'secret' }, secret)), copy);
  }

  async function endpointView(gen, _params, id, shown) {
    const [ep, log] = await Promise.all([
      api('GET', `/endpoints/${enc(id)}`),
      api('GET', `/endpoints/${enc(id)}/attempts?limit=100`),
    ]);
    const facts = [
      ['endpoint.url', ep.url], ['endpoint.description', ep.description || '–'], ['endpoint.state', el('span', { id: 'state' }, stateOf(ep))],
      ['endpoint.types', typesOf(ep)],
      ['endpoint.channels', ep.channels.length ? ep.channels.join(', ') : t('endpoint.any_channel')],
      ['endpoint.rate', ep.rate_limit_per_sec ? `${ep.rate_limit_per_sec}/s` : t('none')],
      ['endpoint.in_flight', ep.max_in_flight || t('endpoint.default')], ['endpoint.timeout', `${ep.timeout_ms} ms`],
      ['endpoint.schedule', ep.retry_schedule || t('endpoint.default')], ['endpoint.signing', ep.signing], ['endpoint.profile', ep.profile],
      ['endpoint.created', when(ep.created_at)], ['endpoint.changed', when(ep.updated_at)],
    ];
    if (ep.public_keys && ep.public_keys.length) facts.push(['endpoint.public_keys', ep.public_keys.map((k) => el('div', {}, el('code', {}, k.key), k.expires_at ? [` ${t('endpoint.until')} `, when(k.expires_at)] : ''))]);
    const result = el('div', { 'aria-live': 'polite' });
    const nodes = [
      el('p', {}, el('a', { href: '#/endpoints' }, `← ${t('nav.endpoints')}`)),
      el('h1', {}, ep.description || ep.url),
      shown ? secretBox(t('secret.created'), shown) : null,
      el('dl', { class: 'fields' }, facts.map(([k, v]) => [el('dt', {}, t(k)), el('dd', {}, v)])),
      el('h2', {}, t('health.title')), health(log.data),
      el('div', { class: 'row' },
        el('a', { class: 'button', href: `#/endpoints/${enc(id)}/attempts` }, t('nav.attempts')),
        canManage() ? el('button', { type: 'button', onclick: () => sendTest(id, result) }, t('test.send')) : null),
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
      if (!(err instanceof ApiError && err.status === 401)) say(explain(err));
      return undefined;
    }
  }

  async function sendTest(id, into) {
    into.replaceChildren(el('p', { class: 'muted' }, t('test.sending')));
    try {
      const out = await api('POST', `/endpoints/${enc(id)}/test`, {});
      const a = out.attempt;
      into.replaceChildren(el('h2', {}, t('test.title'), ' ', el('code', {}, out.event_id)),
        a ? attemptDetail(a, true) : el('p', {}, t('test.pending'), ' ', el('a', { href: `#/events/${enc(out.event_id)}` }, t('test.look_up'))));
    } catch (err) {
      into.replaceChildren(errorBox(err));
    }
  }

  function manageControls(ep, result) {
    const id = ep.id;
    const grace = el('select', { id: 'grace' }, [['0s', 'grace.now'], ['1h', 'grace.1h'], ['24h', 'grace.24h'], ['7d', 'grace.7d']]
      .map(([v, k]) => el('option', { value: v, selected: v === '24h' }, t(k))));
    // Since when: a few choices (reachable by keyboard alone), or a time of one's own.
    const sinceChoice = el('select', { id: 'recover-from' }, [['15', 'since.15m'], ['60', 'since.1h'], ['360', 'since.6h'],
      ['1440', 'since.24h'], ['10080', 'since.7d'], ['time', 'since.own']]
      .map(([v, k]) => el('option', { value: v, selected: v === '60' }, t(k))));
    const since = el('input', { type: 'datetime-local', id: 'recover-since' });
    const until = el('input', { type: 'datetime-local', id: 'replay-until' });
    const ownTime = el('div', { class: 'row', hidden: true }, field(t('filter.since'), since, t('resend.since_hint')), field(t('filter.until'), until, t('resend.until_hint')));
    sinceChoice.addEventListener('change', () => { ownTime.hidden = sinceChoice.value !== 'time'; });
    const iso = (input) => (input.value ? new Date(input.value).toISOString() : undefined);
    const from = () => (sinceChoice.value === 'time'
      ? iso(since)
      : new Date(Date.now() - Number(sinceChoice.value) * 60000).toISOString());
    const toJob = (job) => { location.hash = `#/jobs/${enc(job.id)}`; };
    return el('section', {},
      el('h2', {}, t('change.title')),
      el('div', { class: 'row' },
        el('a', { class: 'button', href: `#/endpoints/${enc(id)}/edit` }, t('change.edit')),
        ep.paused
          ? el('button', { type: 'button', onclick: () => act(api('POST', `/endpoints/${enc(id)}/resume`), () => { say(t('change.resumed')); route(); }) }, t('change.resume'))
          : el('button', { type: 'button', onclick: () => act(api('POST', `/endpoints/${enc(id)}/pause`), () => { say(t('change.paused')); route(); }) }, t('change.pause')),
        ep.disabled ? el('button', { type: 'button', onclick: () => act(api('PATCH', `/endpoints/${enc(id)}`, { disabled: false }), () => { say(t('change.enabled')); route(); }) }, t('change.enable')) : null,
        confirmButton(t('change.delete'), t('change.delete.ask'), t('change.delete.yes'), () => act(api('DELETE', `/endpoints/${enc(id)}`), () => { say(t('change.deleted')); location.hash = '#/endpoints'; }), 'danger')),
      ep.signing === 'hmac' ? el('div', { class: 'row' },
        field(t('rotate.grace'), grace),
        confirmButton(t('rotate.button'), t('rotate.ask'), t('rotate.yes'), () => act(api('POST', `/endpoints/${enc(id)}/secret/rotate`, { grace: grace.value }), (v) => {
          result.replaceChildren(secretBox(t('secret.rotated'), v.secret));
        }))) : null,
      el('h2', {}, t('resend.title')),
      el('div', { class: 'row' }, field(t('resend.from'), sinceChoice)),
      ownTime,
      el('div', { class: 'row' },
        el('button', { type: 'button', onclick: () => {
          if (!from()) return say(t('resend.choose_since'));
          return act(api('POST', `/endpoints/${enc(id)}/recover`, { since: from() }), toJob);
        } }, t('resend.recover')),
        el('button', { type: 'button', onclick: () => {
          if (!from()) return say(t('resend.choose_since'));
          const body = { since: from() };
          if (sinceChoice.value === 'time' && until.value) body.until = iso(until);
          return act(api('POST', `/endpoints/${enc(id)}/replay`, body), toJob);
        } }, t('resend.replay'))),
      el('p', { class: 'hint' }, t('resend.hint')));
  }

  async function endpointForm(gen, ep) {
    const types = await api('GET', '/event-types?limit=1000').catch(() => ({ data: [] }));
    const url = el('input', { type: 'url', required: true, value: ep ? ep.url : '', placeholder: 'https://example.com/webhooks' });
    const description = el('input', { type: 'text', value: ep ? ep.description : '' });
    const chosen = new Set(ep ? ep.filter_types : []);
    const boxes = types.data.filter((ty) => !ty.archived).map((ty) => el('label', { class: 'hint' },
      el('input', { type: 'checkbox', value: ty.name, checked: chosen.has(ty.name) }), ` ${ty.name}`, ty.description ? ` – ${ty.description}` : ''));
    const typed = el('input', { type: 'text', value: ep ? ep.filter_types.filter((ty) => !types.data.some((c) => c.name === ty)).join(', ') : '', placeholder: 'charge.paid, charge.refunded' });
    const channels = el('input', { type: 'text', value: ep ? ep.channels.join(', ') : '' });
    const rate = el('input', { type: 'number', min: 1, value: ep && ep.rate_limit_per_sec ? ep.rate_limit_per_sec : '' });
    const inflight = el('input', { type: 'number', min: 1, value: ep && ep.max_in_flight ? ep.max_in_flight : '' });
    const timeout = el('input', { type: 'number', min: 100, value: ep ? ep.timeout_ms : '' });
    const schedule = el('input', { type: 'text', value: ep && ep.retry_schedule ? ep.retry_schedule : '', placeholder: '0s,5s,5m,30m,2h' });
    const signing = ep ? null : el('select', {}, el('option', { value: 'hmac' }, t('form.signing.hmac')), el('option', { value: 'ed25519' }, t('form.signing.ed25519')));
    // The delivery profile and what each needs: a token (sent in a header or the query, never
    // shown again), or Open Finance Brasil's path.
    const profile = el('select', {}, [['standard', 'form.profile.standard'], ['token', 'form.profile.token'], ['openfinance-br', 'form.profile.openfinance']]
      .map(([v, k]) => el('option', { value: v, selected: (ep ? ep.profile : 'standard') === v }, t(k))));
    const tokenWhere = el('select', {}, [['header', 'form.token.header'], ['query', 'form.token.query']]
      .map(([v, k]) => el('option', { value: v, selected: ep && ep.token ? (ep.token.query ? v === 'query' : v === 'header') : v === 'header' }, t(k))));
    const tokenName = el('input', { type: 'text', value: ep && ep.token ? (ep.token.header || ep.token.query || '') : '', placeholder: 'validationtoken' });
    const tokenValue = el('input', { type: 'password', autocomplete: 'off', value: '' });
    const pathTemplate = el('input', { type: 'text', value: ep && ep.path_template ? ep.path_template : '', placeholder: '/open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}' });
    const tokenFields = el('fieldset', {}, el('legend', {}, t('form.token')));
    const openFinanceFields = el('div', {});
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
    // A refusal about one of the form's fields goes under it; about none, above the buttons.
    const fields = fieldErrors('ep');
    const slot = fields.slot;
    // A refusal about the token (its name or its value: the message says which) goes under
    // its value.
    tokenFields.append(field(t('form.token.where'), tokenWhere), field(t('form.token.name'), tokenName),
      slot('token', t('form.token.value'), tokenValue, ep && ep.token ? t('form.token.value.kept') : t('form.never_again')));
    openFinanceFields.append(slot('path_template', t('form.path'), pathTemplate, t('form.path.hint')));
    const list = (s) => s.split(',').map((x) => x.trim()).filter((x) => x);
    const form = el('form', { novalidate: true, onsubmit: async (event) => {
      event.preventDefault();
      fields.clear();
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
        fields.mark('headers', t('form.headers.bad', { line: bad }));
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
          say(t('saved'));
          location.hash = `#/endpoints/${enc(saved.id)}`;
        } else {
          // The secret is shown once, on the endpoint's page, without passing through the URL.
          history.pushState(null, '', `#/endpoints/${enc(saved.id)}`);
          const gen2 = ++generation;
          render(gen2, await endpointView(gen2, new URLSearchParams(), saved.id, saved.secret));
          main.focus();
        }
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return;
        if (err instanceof ApiError && err.field && fields.shows(err.field)) fields.mark(err.field, explain(err));
        else problemBox.replaceChildren(errorBox(err));
      }
    } },
    slot('url', t('endpoint.url'), url, t('form.url.hint')),
    slot('description', t('endpoint.description'), description),
    boxes.length ? el('fieldset', {}, el('legend', {}, t('form.types.catalog')), boxes) : null,
    slot('filter_types', t('form.types.other'), typed, t('form.types.other.hint')),
    slot('channels', t('endpoint.channels'), channels, t('form.channels.hint')),
    slot('rate_limit_per_sec', t('endpoint.rate'), rate, t('form.rate.hint')),
    slot('max_in_flight', t('endpoint.in_flight'), inflight, t('form.in_flight.hint')),
    slot('timeout_ms', t('endpoint.timeout'), timeout, t('form.timeout.hint')),
    slot('retry_schedule', t('endpoint.schedule'), schedule, t('form.schedule.hint')),
    signing ? slot('signing', t('endpoint.signing'), signing) : null,
    slot('profile', t('endpoint.profile'), profile),
    tokenFields,
    openFinanceFields,
    slot('headers', t('form.headers'), headers, t('form.headers.hint')),
    el('fieldset', {}, el('legend', {}, t('form.mtls')),
      slot('client_cert', t('form.mtls.cert'), clientCert, t('form.mtls.cert.hint')),
      slot('client_key', t('form.mtls.key'), clientKey, ep && ep.client_cert ? t('form.mtls.key.kept') : t('form.mtls.key.hint')),
      slot('ca', t('form.mtls.ca'), ca, t('form.mtls.ca.hint'))),
    problemBox,
    el('div', { class: 'row' }, el('button', { type: 'submit', class: 'primary' }, ep ? t('save') : t('form.add')),
      el('a', { href: ep ? `#/endpoints/${enc(ep.id)}` : '#/endpoints' }, t('cancel'))));
    return form;
  }

  async function newEndpointView(gen) {
    if (!canManage()) throw readOnly();
    return [el('h1', {}, t('endpoint.add')), await endpointForm(gen, null)];
  }

  async function editEndpointView(gen, _params, id) {
    if (!canManage()) throw readOnly();
    const ep = await api('GET', `/endpoints/${enc(id)}`);
    return [el('p', {}, el('a', { href: `#/endpoints/${enc(id)}` }, `← ${t('back')}`)), el('h1', {}, t('endpoint.edit.title')), await endpointForm(gen, ep)];
  }

  // ---- the delivery log ---------------------------------------------------------------

  function statusOf(a) {
    if (a.status) return el('span', { class: `badge ${a.outcome === 'success' ? 'ok' : 'bad'}` }, String(a.status));
    return el('span', { class: 'badge bad', title: a.outcome }, code(OUTCOME_TEXT, a.outcome));
  }

  function attemptDetail(a, open, withEndpoint) {
    const headers = Object.entries(a.response_headers || {});
    return el('details', { open },
      el('summary', {}, statusOf(a), ' ', a.type, withEndpoint ? [' → ', a.url] : null, ' · ', t('attempt.n', { n: a.attempt }), ' · ', `${a.latency_ms.toFixed(0)} ms`, ' · ', when(a.at)),
      el('dl', { class: 'fields' },
        withEndpoint ? [el('dt', {}, t('attempt.endpoint')), el('dd', {}, el('a', { href: `#/endpoints/${enc(a.endpoint_id)}` }, a.endpoint_id))] : null,
        el('dt', {}, t('attempt.request')), el('dd', {}, 'POST ', a.url),
        el('dt', {}, 'webhook-id'), el('dd', {}, el('code', {}, a.delivery_id)),
        el('dt', {}, 'webhook-timestamp'), el('dd', {}, el('code', {}, String(Math.floor(new Date(a.at).getTime() / 1000)))),
        el('dt', {}, t('attempt.request_headers')), el('dd', {}, 'content-type, user-agent, webhook-id, webhook-timestamp, webhook-signature',
          el('span', { class: 'hint' }, ` ${t('attempt.never_shown')}`)),
        el('dt', {}, t('attempt.event')), el('dd', {}, el('a', { href: `#/events/${enc(a.event_id)}` }, a.event_id)),
        el('dt', {}, t('attempt.outcome')), el('dd', {}, code(OUTCOME_TEXT, a.outcome), a.error ? `: ${a.error}` : ''),
        el('dt', {}, t('attempt.next')), el('dd', {}, a.next_attempt_at ? when(a.next_attempt_at) : t('none')),
        el('dt', {}, t('attempt.answer_headers')), el('dd', {}, headers.length ? headers.map(([k, v]) => el('div', {}, el('code', {}, k), ': ', v)) : '–')),
      el('p', { class: 'hint' }, t('attempt.body')),
      el('pre', {}, a.response_body || t('attempt.empty')));
  }

  const OUTCOMES = Object.keys(OUTCOME_TEXT);

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
    const status = el('input', { id: 'status-filter', value: filters.status || '', list: 'status-classes', placeholder: t('filter.status.placeholder'), size: 10 });
    const outcome = el('select', { id: 'outcome-filter' }, [['', t('filter.any_outcome')], ...OUTCOMES.map((o) => [o, code(OUTCOME_TEXT, o)])]
      .map(([v, text]) => el('option', { value: v, selected: v === (filters.outcome || '') }, text)));
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
    field(t('filter.status'), status), field(t('filter.outcome'), outcome), field(t('filter.since'), since), field(t('filter.until'), until),
    el('datalist', { id: 'status-classes' }, ['2xx', '4xx', '5xx', 'none'].map((v) => el('option', { value: v }))),
    el('button', { type: 'submit' }, t('filter.apply')));
    const show = (a) => attemptDetail(a, false, !id);
    const list = el('div', {}, page.data.map(show));
    const follow = el('input', { type: 'checkbox', id: 'follow', onchange: () => {
      stopTimers();
      if (follow.checked) every(3000, async () => {
        const fresh = await api('GET', `${path}?${new URLSearchParams({ limit: '50', ...filters })}`).catch(() => null);
        if (fresh) list.replaceChildren(...fresh.data.map(show));
      });
    } });
    return [
      id ? el('p', {}, el('a', { href: `#/endpoints/${enc(id)}` }, `← ${t('endpoint.title')}`)) : null,
      el('h1', {}, id ? t('nav.attempts') : t('attempts.every')),
      form,
      el('p', {}, el('label', { for: 'follow', class: 'hint' }, follow, ` ${t('attempts.follow')}`)),
      page.data.length ? list : el('p', { class: 'muted' }, t('attempts.none')),
      page.next ? el('div', { class: 'row' }, el('a', { href: `${here}?${new URLSearchParams({ ...filters, cursor: page.next })}` }, t('attempts.older'))) : null,
    ];
  }

  // ---- events and dead letters --------------------------------------------------------

  async function eventView(gen, _params, id) {
    const input = el('input', { type: 'text', id: 'event-id', value: id || '', required: true, placeholder: 'evt_…' });
    const form = el('form', { class: 'row', onsubmit: (event) => {
      event.preventDefault();
      if (input.value.trim()) location.hash = `#/events/${enc(input.value.trim())}`;
    } }, field(t('event.id'), input), el('button', { type: 'submit' }, t('event.find')));
    const nodes = [el('h1', {}, t('nav.events')), form];
    if (!id) return nodes;
    let found;
    try {
      found = await api('GET', `/events/${enc(id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return [...nodes, errorBox(err)];
      throw err;
    }
    nodes.push(el('h2', {}, el('code', {}, found.id), found.type ? ` · ${found.type}` : ''));
    if (!found.deliveries.length) nodes.push(el('p', { class: 'muted' }, t('event.no_deliveries')));
    for (const d of found.deliveries) {
      nodes.push(el('section', {},
        el('h2', {}, t('event.to'), ' ', el('a', { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id), ': ', d.state, d.next_attempt_at ? [`, ${t('event.next_attempt')} `, when(d.next_attempt_at)] : ''),
        d.attempts.map((a) => attemptDetail(a, false)),
        d.dead_letter ? el('p', { class: 'bad' }, t('event.given_up'), ' ', d.dead_letter.reason || code(DEAD_KIND_TEXT, d.dead_letter.kind)) : null));
    }
    return nodes;
  }

  const DEAD_KINDS = Object.keys(DEAD_KIND_TEXT);

  /** What gancho gave up on, with why; the selected ones, or all that the filter shows, sent again. */
  async function deadLettersView(gen, params) {
    const filters = {};
    for (const key of ['kind', 'endpoint', 'since', 'until']) {
      if (params.get(key)) filters[key] = params.get(key);
    }
    const query = new URLSearchParams({ limit: '50', ...filters });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/dead-letters?${query}`);
    const kind = el('select', { id: 'kind-filter' }, [['', t('filter.any_kind')], ...DEAD_KINDS.map((k) => [k, code(DEAD_KIND_TEXT, k)])]
      .map(([v, text]) => el('option', { value: v, selected: v === (filters.kind || '') }, text)));
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
    field(t('filter.kind'), kind), field(t('attempt.endpoint'), endpoint), field(t('filter.since'), since), field(t('filter.until'), until),
    el('button', { type: 'submit' }, t('filter.apply')));
    const boxes = [];
    const row = (d) => {
      const eventId = d.event ? d.event.id : '';
      const box = canManage() ? el('input', { type: 'checkbox', value: String(d.seq), id: `dl-${d.seq}` }) : null;
      if (box) boxes.push(box);
      return el('tr', {},
        box ? el('td', {}, el('label', { for: box.id, class: 'hint' }, box, ` ${eventId || d.seq}`)) : null,
        el('td', {}, when(d.at)),
        el('td', {}, el('span', { class: 'badge bad', title: d.kind }, code(DEAD_KIND_TEXT, d.kind))),
        el('td', {}, d.endpoint_id === '_events' ? t('dead.refused_event') : el('a', { href: `#/endpoints/${enc(d.endpoint_id)}` }, d.endpoint_id)),
        el('td', {}, eventId ? el('a', { href: `#/events/${enc(eventId)}` }, eventId) : '–'),
        el('td', { class: 'wrap' }, d.reason));
    };
    const table = el('table', {},
      el('thead', {}, el('tr', {},
        canManage() ? el('th', { scope: 'col' }, t('dead.select')) : null,
        ['dead.when', 'filter.kind', 'attempt.endpoint', 'attempt.event', 'dead.why'].map((h) => el('th', { scope: 'col' }, t(h))))),
      el('tbody', {}, page.data.map(row)));
    const redrive = (body) => act(api('POST', '/dead-letters/redrive', body), (job) => { location.hash = `#/jobs/${enc(job.id)}`; });
    const selected = () => boxes.filter((b) => b.checked).map((b) => Number(b.value));
    const controls = canManage() && page.data.length
      ? el('div', { class: 'row' },
        confirmButton(t('dead.redrive_selected'), t('dead.redrive_selected.ask'), t('dead.redrive_selected.yes'), () => {
          const sequences = selected();
          if (!sequences.length) { say(t('dead.select_first')); return undefined; }
          return redrive({ sequences });
        }),
        confirmButton(t('dead.redrive_all'), t('dead.redrive_all.ask'), t('dead.redrive_all.yes'), () => redrive({ ...filters })))
      : null;
    return [
      el('h1', {}, t('nav.dead_letters')),
      el('p', { class: 'muted' }, t('dead.intro')),
      form,
      page.data.length ? table : el('p', { class: 'muted' }, t('dead.none')),
      controls,
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/dead-letters?${new URLSearchParams({ ...filters, cursor: page.next })}` }, t('dead.older'))) : null,
    ];
  }

  // ---- jobs ---------------------------------------------------------------------------

  /** What a job does, in a few words. */
  function jobWhat(job) {
    if (job.selected) return t('job.what.selected', { n: job.selected });
    const kinds = { recover: t('job.kind.recover'), replay: t('job.kind.replay'), redrive: t('job.kind.redrive') };
    const parts = [kinds[job.kind] || job.kind];
    if (job.endpoint) parts.push(t('job.what.of', { endpoint: job.endpoint }));
    if (job.dead_letter_kind) parts.push(`(${code(DEAD_KIND_TEXT, job.dead_letter_kind)})`);
    return parts.join(' ');
  }

  function jobState(job) {
    const states = { running: t('job.state.running'), done: t('job.state.done'), cancelled: t('job.state.cancelled'), failed: t('job.state.failed') };
    return states[job.state] || job.state;
  }

  const newestFirst = (jobs) => [...jobs].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));

  function cancelJob(job) {
    return confirmButton(t('job.cancel'), t('job.cancel.ask'), t('job.cancel.yes'),
      () => act(api('DELETE', `/jobs/${enc(job.id)}`), () => { say(t('job.cancelled')); route(); }));
  }

  /** The tenant's recover, replay and redrive jobs, newest first, with their progress. */
  async function jobsView(gen, params) {
    const query = new URLSearchParams({ limit: '50' });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/jobs?${query}`);
    const jobs = newestFirst(page.data);
    // A row per job whose cells follow it in place, so a question being asked (cancel?) and
    // the focus stay where they are while its progress moves.
    const rows = new Map();
    const row = (job) => {
      const progress = el('progress', { class: 'progress', max: Math.max(job.total, 1), value: job.done, 'aria-label': t('job.progress_of', { what: jobWhat(job) }) });
      const cells = {
        state: el('span', {}),
        count: el('span', {}),
        sent: el('td', {}),
        skipped: el('td', {}),
        control: el('td', {}),
      };
      const tr = el('tr', { 'data-job': job.id },
        el('td', {}, el('a', { href: `#/jobs/${enc(job.id)}` }, jobWhat(job))),
        el('td', {}, when(job.created_at)),
        el('td', {}, cells.state),
        el('td', {}, progress, cells.count),
        cells.sent, cells.skipped,
        canManage() ? cells.control : null);
      const update = (now) => {
        cells.state.className = `badge ${now.state === 'failed' ? 'bad' : now.state === 'running' ? 'warn' : ''}`;
        cells.state.textContent = jobState(now);
        progress.max = Math.max(now.total, 1);
        progress.value = now.done;
        cells.count.textContent = ` ${t('job.done_of', { done: now.done, total: now.total })}`;
        cells.sent.textContent = String(now.sent);
        cells.skipped.textContent = String(now.skipped);
        if (now.state !== 'running') cells.control.replaceChildren();
        else if (!cells.control.firstChild) cells.control.append(cancelJob(now));
      };
      update(job);
      rows.set(job.id, update);
      return tr;
    };
    const body = el('tbody', {}, jobs.map(row));
    const heads = ['job.title', 'job.started', 'job.state', 'job.progress', 'job.sent', 'job.skipped'];
    const table = el('table', {},
      el('thead', {}, el('tr', {}, heads.map((h) => el('th', { scope: 'col' }, t(h))),
        canManage() ? el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, t('job.actions'))) : null)),
      body);
    // While the view is open it follows the jobs: a job started elsewhere (another view, the
    // CLI, the API) appears, and running ones move.
    every(2000, async () => {
      const fresh = await api('GET', `/jobs?${query}`).catch(() => null);
      if (!fresh || gen !== generation) return;
      for (const job of newestFirst(fresh.data).reverse()) {
        if (rows.has(job.id)) rows.get(job.id)(job);
        else if (!params.get('cursor')) body.prepend(row(job));
      }
      const none = document.getElementById('no-jobs');
      if (none && body.children.length) none.replaceWith(table);
    });
    return [
      el('h1', {}, t('nav.jobs')),
      el('p', { class: 'muted' }, t('jobs.intro')),
      jobs.length ? table : el('p', { class: 'muted', id: 'no-jobs' }, t('jobs.none')),
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/jobs?${new URLSearchParams({ cursor: page.next })}` }, t('jobs.more'))) : null,
    ];
  }

  async function jobView(gen, _params, id) {
    const show = (job) => el('div', {},
      el('dl', { class: 'fields' },
        el('dt', {}, t('job.kind')), el('dd', {}, jobWhat(job)),
        el('dt', {}, t('job.state')), el('dd', { id: 'job-state' }, jobState(job)),
        el('dt', {}, t('job.progress')), el('dd', {}, el('progress', { class: 'progress', max: Math.max(job.total, 1), value: job.done, 'aria-label': t('job.progress') }), ` ${t('job.done_of', { done: job.done, total: job.total })}`),
        el('dt', {}, t('job.sent')), el('dd', { id: 'job-sent' }, String(job.sent)),
        el('dt', {}, t('job.skipped')), el('dd', {}, String(job.skipped)),
        job.error ? [el('dt', {}, t('job.error')), el('dd', { class: 'bad' }, job.error)] : null),
      el('p', {}, el('a', { href: '#/jobs' }, `← ${t('nav.jobs')}`),
        job.endpoint ? [' · ', el('a', { href: `#/endpoints/${enc(job.endpoint)}` }, t('endpoint.title'))] : null));
    const job = await api('GET', `/jobs/${enc(id)}`);
    const box = el('div', { 'aria-live': 'polite' }, show(job));
    if (job.state === 'running') {
      every(1000, async () => {
        const fresh = await api('GET', `/jobs/${enc(id)}`).catch(() => null);
        if (!fresh) return;
        box.replaceChildren(show(fresh));
        if (fresh.state !== 'running') stopTimers();
      });
    }
    return [
      el('h1', {}, t('job.title'), ' ', el('code', {}, job.id)),
      box,
      canManage() && job.state === 'running' ? cancelJob(job) : null,
    ];
  }

  // ---- the event catalog ----------------------------------------------------------------

  async function typesView(gen, params) {
    const query = new URLSearchParams({ limit: '100' });
    if (params.get('cursor')) query.set('cursor', params.get('cursor'));
    const page = await api('GET', `/event-types?${query}`);
    const rows = page.data.map((ty) => el('tr', {},
      el('td', {}, el('a', { href: `#/event-types/${enc(ty.name)}` }, ty.name), ty.archived ? [' ', el('span', { class: 'badge' }, t('type.archived'))] : null),
      el('td', {}, ty.description || '–'),
      el('td', {}, ty.schema ? t('type.has_schema') : t('type.any_json'))));
    return [
      el('h1', {}, t('nav.event_types')),
      el('p', { class: 'muted' }, t('types.intro')),
      canManage() ? el('div', { class: 'row' }, el('a', { class: 'button', href: '#/event-types/new' }, t('type.add'))) : null,
      rows.length
        ? el('table', {}, el('thead', {}, el('tr', {}, ['type.name', 'type.description', 'type.schema'].map((h) => el('th', { scope: 'col' }, t(h))))), el('tbody', {}, rows))
        : el('p', { class: 'muted' }, t('types.none')),
      page.next ? el('div', { class: 'row' }, el('a', { href: `#/event-types?${new URLSearchParams({ cursor: page.next })}` }, t('page.next'))) : null,
    ];
  }

  /** A JSON Schema as a table: each field by its path as ingest names it (`data/amount`). */
  function schemaTable(schema) {
    const rows = [];
    const describe = (s) => {
      const rules = [];
      if (s.enum) rules.push(t('schema.one_of', { values: s.enum.map((v) => JSON.stringify(v)).join(', ') }));
      if (s.const !== undefined) rules.push(t('schema.const', { value: JSON.stringify(s.const) }));
      for (const [key, name] of [['minimum', '≥'], ['exclusiveMinimum', '>'], ['maximum', '≤'], ['exclusiveMaximum', '<']]) {
        if (typeof s[key] === 'number') rules.push(`${name} ${s[key]}`);
      }
      if (typeof s.minLength === 'number' || typeof s.maxLength === 'number') rules.push(t('schema.length', { min: s.minLength ?? 0, max: s.maxLength ?? '∞' }));
      if (typeof s.minItems === 'number' || typeof s.maxItems === 'number') rules.push(t('schema.items', { min: s.minItems ?? 0, max: s.maxItems ?? '∞' }));
      if (s.pattern) rules.push(t('schema.pattern', { pattern: s.pattern }));
      if (s.format) rules.push(t('schema.format', { format: s.format }));
      if (s.additionalProperties === false) rules.push(t('schema.closed'));
      return rules.join('; ');
    };
    const walk = (s, path, required, depth) => {
      if (!s || typeof s !== 'object' || depth > 8) return;
      const type = Array.isArray(s.type) ? s.type.join(' | ') : (s.type || (s.enum ? 'enum' : s.const !== undefined ? 'const' : t('schema.any')));
      rows.push(el('tr', {},
        el('td', {}, el('code', {}, path)),
        el('td', {}, type),
        el('td', {}, required ? t('schema.required') : t('schema.optional')),
        el('td', {}, describe(s)),
        el('td', {}, s.description || s.title || '')));
      const needed = new Set(Array.isArray(s.required) ? s.required : []);
      for (const [name, sub] of Object.entries(s.properties || {})) walk(sub, `${path}/${name}`, needed.has(name), depth + 1);
      if (s.items && typeof s.items === 'object' && !Array.isArray(s.items)) walk(s.items, `${path}/0…`, false, depth + 1);
    };
    walk(schema, 'data', true, 0);
    return el('table', {}, el('thead', {}, el('tr', {}, ['schema.path', 'schema.type', 'schema.presence', 'schema.rules', 'type.description'].map((h) => el('th', { scope: 'col' }, t(h))))),
      el('tbody', {}, rows));
  }

  async function typeView(gen, _params, name) {
    const ty = await api('GET', `/event-types/${enc(name)}`);
    return [
      el('p', {}, el('a', { href: '#/event-types' }, `← ${t('nav.event_types')}`)),
      el('h1', {}, el('code', {}, ty.name), ty.archived ? [' ', el('span', { class: 'badge' }, t('type.archived'))] : null),
      el('p', {}, ty.description || el('span', { class: 'muted' }, t('type.no_description'))),
      canManage() ? el('div', { class: 'row' }, el('a', { class: 'button', href: `#/event-types/${enc(ty.name)}/edit` }, t('change.edit'))) : null,
      el('h2', {}, t('type.schema')),
      ty.schema
        ? [schemaTable(ty.schema), el('details', {}, el('summary', {}, t('type.schema_json')), el('pre', {}, JSON.stringify(ty.schema, null, 2)))]
        : el('p', { class: 'muted' }, t('type.no_schema')),
      el('h2', {}, t('type.example')),
      ty.example !== undefined ? el('pre', {}, JSON.stringify(ty.example, null, 2)) : el('p', { class: 'muted' }, t('type.no_example')),
      el('p', { class: 'muted' }, t('type.changed'), ' ', when(ty.updated_at)),
    ];
  }

  /** Create (`ty` null) or edit an event type; each refusal is shown next to its field. */
  function typeForm(ty) {
    const inputs = {
      name: ty ? null : el('input', { type: 'text', required: true, placeholder: 'charge.paid' }),
      description: el('textarea', { rows: 2 }, ty ? ty.description : ''),
      schema: el('textarea', { rows: 12, spellcheck: 'false', placeholder: '{"type": "object", "required": ["amount"]}' }, ty && ty.schema ? JSON.stringify(ty.schema, null, 2) : ''),
      example: el('textarea', { rows: 8, spellcheck: 'false', placeholder: '{"amount": 990}' }, ty && ty.example !== undefined ? JSON.stringify(ty.example, null, 2) : ''),
    };
    const archived = el('input', { type: 'checkbox', id: 'type-archived', checked: ty ? ty.archived : false });
    const fields = fieldErrors('type');
    const slot = (key, label, hint) => {
      inputs[key].id = `type-${key}`;
      return fields.slot(key, label, inputs[key], hint);
    };
    const { clear, mark } = fields;
    const problemBox = el('div', { 'aria-live': 'assertive' });
    const json = (key) => {
      const text = inputs[key].value.trim();
      if (!text) return { value: undefined };
      try { return { value: JSON.parse(text) }; } catch (e) { return { error: t('type.not_json', { why: e.message }) }; }
    };
    const form = el('form', { novalidate: true, onsubmit: async (event) => {
      event.preventDefault();
      clear();
      problemBox.replaceChildren();
      const name = ty ? ty.name : inputs.name.value.trim();
      if (!name) return mark('name', t('type.name_needed'));
      const body = { description: inputs.description.value.trim(), archived: archived.checked };
      for (const key of ['schema', 'example']) {
        const parsed = json(key);
        if (parsed.error) return mark(key, parsed.error);
        if (parsed.value !== undefined) body[key] = parsed.value;
      }
      try {
        await api('PUT', `/event-types/${enc(name)}`, body);
        say(t('saved'));
        location.hash = `#/event-types/${enc(name)}`;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return undefined;
        if (err instanceof ApiError && err.field && fields.shows(err.field)) mark(err.field, explain(err));
        else problemBox.replaceChildren(errorBox(err));
      }
      return undefined;
    } },
    ty ? null : slot('name', t('type.name'), t('type.name.hint')),
    slot('description', t('type.description')),
    slot('schema', t('type.schema'), t('type.schema.hint')),
    slot('example', t('type.example'), t('type.example.hint')),
    el('p', {}, el('label', { for: archived.id, class: 'hint' }, archived, ` ${t('type.archive')}`)),
    problemBox,
    el('div', { class: 'row' }, el('button', { type: 'submit', class: 'primary' }, ty ? t('save') : t('type.add')),
      el('a', { href: ty ? `#/event-types/${enc(ty.name)}` : '#/event-types' }, t('cancel'))));
    return form;
  }

  async function newTypeView() {
    if (!canManage()) throw readOnly();
    return [el('h1', {}, t('type.add')), typeForm(null)];
  }

  async function editTypeView(gen, _params, name) {
    if (!canManage()) throw readOnly();
    const ty = await api('GET', `/event-types/${enc(name)}`);
    return [el('p', {}, el('a', { href: `#/event-types/${enc(name)}` }, `← ${t('back')}`)), el('h1', {}, t('type.edit.title'), ' ', el('code', {}, name)), typeForm(ty)];
  }

  start();
})();
