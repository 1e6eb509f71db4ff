// Talks to this server's admin and usage APIs with the key in the Authorization header.
// Same origin only: paths are absolute, never a URL of another host.

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

export class Api {
  #key;

  constructor(key) {
    this.#key = key;
  }

  async #call(method, path, body, accept = "application/json") {
    const headers = { authorization: `Bearer ${this.#key}`, accept };
    const init = { method, headers, credentials: "omit", cache: "no-store",
                   redirect: "error" };
    if (body !== undefined) {
      headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      let parsed = null;
      try { parsed = await response.json(); } catch { parsed = null; }
      throw new ApiError(response.status, parsed);
    }
    return accept === "application/json" ? response.json() : response.text();
  }

  get(path, params) {
    return this.#call("GET", withQuery(path, params));
  }

  text(path, params) {
    return this.#call("GET", withQuery(path, params), undefined, "text/csv");
  }

  post(path, body) { return this.#call("POST", path, body); }

  patch(path, body) { return this.#call("PATCH", path, body); }
}

function withQuery(path, params) {
  if (!params) return path;
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null));
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
