// In-page harness, evaluated in every test page by driver.mjs. It opens Herald's transports the
// way a web application would (WebSocket, EventSource, fetch loops, a forever iframe) and
// records everything the page can observe in `window.harness.log[key]`, for the Rust test to
// assert on. It keeps no logic of its own beyond what a real client does.
(() => {
  const log = {};
  const closers = [];
  const push = (key, entry) => {
    (log[key] ||= []).push(entry);
  };
  const parse = (text) => {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  };
  const withSince = (url, since) =>
    since === null || since === undefined ? url : `${url}&since=${encodeURIComponent(since)}`;

  window.harness = {
    log,

    /** A WebSocket; records open, each message, error and close (with its code). */
    ws(key, url) {
      log[key] ||= [];
      const ws = new WebSocket(url);
      ws.onopen = () => push(key, { event: 'open' });
      ws.onmessage = (e) => push(key, { event: 'message', data: parse(e.data) });
      ws.onerror = () => push(key, { event: 'error' });
      ws.onclose = (e) => push(key, { event: 'close', code: e.code });
      closers.push(() => ws.close());
    },

    /** An EventSource; records open, messages (with lastEventId), gap/disconnect events, errors. */
    sse(key, url) {
      log[key] ||= [];
      const es = new EventSource(url);
      es.onopen = () => push(key, { event: 'open' });
      es.onmessage = (e) => push(key, { event: 'message', id: e.lastEventId, data: parse(e.data) });
      for (const name of ['gap', 'disconnect']) {
        es.addEventListener(name, (e) => push(key, { event: name, data: parse(e.data) }));
      }
      es.onerror = () => push(key, { event: 'error', readyState: es.readyState });
      closers.push(() => es.close());
    },

    /** One fetch: status, the X-Herald-Cursor header as the page can read it, and the body. */
    async fetch(key, url) {
      log[key] ||= [];
      try {
        const r = await fetch(url);
        push(key, {
          event: 'response',
          status: r.status,
          cursor: r.headers.get('X-Herald-Cursor'),
          body: parse(await r.text()),
        });
      } catch (e) {
        push(key, { event: 'error', error: e.name });
      }
    },

    /** A long-polling loop: each answer's envelopes, then the next request with `since` set to
     *  the answer's X-Herald-Cursor. Stops on an error or a missing cursor. */
    longpoll(key, url) {
      log[key] ||= [];
      const abort = new AbortController();
      closers.push(() => abort.abort());
      (async () => {
        let since = null;
        for (;;) {
          let r;
          try {
            r = await fetch(withSince(url, since), { signal: abort.signal });
          } catch (e) {
            if (!abort.signal.aborted) push(key, { event: 'error', error: e.name });
            return;
          }
          if (r.status !== 200) {
            push(key, { event: 'status', status: r.status, body: parse(await r.text()) });
            return;
          }
          const cursor = r.headers.get('X-Herald-Cursor');
          const body = await r.json();
          push(key, { event: 'answer', since, cursor, count: body.length });
          for (const m of body) push(key, { event: 'message', data: m });
          if (!cursor) {
            push(key, { event: 'error', error: 'no readable X-Herald-Cursor' });
            return;
          }
          since = cursor;
        }
      })();
    },

    /** A forever iframe whose script calls `parent[callback](…)`. */
    iframe(key, url, callback, referrerPolicy) {
      log[key] ||= [];
      window[callback] = (m) => push(key, { event: 'message', data: m });
      const frame = document.createElement('iframe');
      frame.name = key;
      if (referrerPolicy) frame.referrerPolicy = referrerPolicy;
      frame.src = url;
      document.body.appendChild(frame);
      closers.push(() => frame.remove());
    },

    /** Closes every connection this page opened. */
    stop() {
      for (const close of closers.splice(0)) close();
    },
  };
})();
