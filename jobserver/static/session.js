// The tab's session: the token and the API calls made with it.
// Rules: the token comes from the URL's fragment (`#token=...`, which the
// browser never sends) or from the sign-in box; it is kept in sessionStorage
// (this tab only) and the fragment is removed from the address bar at once.
// Calls and streams (sse.js) send it as `Authorization: Bearer`: it is never
// put in a URL.

const KEY = "jobserver-token";

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && (body.code || body.type);
    this.field = body && body.field;
  }
}

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + (4 - part.length % 4) % 4, "=")));
  } catch {
    return {};
  }
}

export const session = {
  token: null,
  sub: "",
  role: "",
  get isAdmin() { return this.role === "admin"; },

  // Take the token from the fragment (then drop it from the URL) or the tab's storage.
  load() {
    const hash = new URLSearchParams(location.hash.slice(1));
    const given = hash.get("token");
    if (given) {
      sessionStorage.setItem(KEY, given);
      hash.delete("token");
      const rest = hash.toString();
      history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
    }
    this.set(sessionStorage.getItem(KEY));
    return this.token !== null;
  },

  set(token) {
    this.token = token || null;
    if (this.token) sessionStorage.setItem(KEY, this.token);
    else sessionStorage.removeItem(KEY);
    const c = this.token ? claims(this.token) : {};
    this.sub = c.sub || "";
    this.role = c.role || "";
  },
};

// A JSON call; a non-2xx answer throws ApiError (a 401 also tells the page).
export async function api(path, {method = "GET", body} = {}) {
  const headers = {"Authorization": `Bearer ${session.token}`};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {method, headers, body: body === undefined ? undefined :
                                                        JSON.stringify(body)});
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = {message: text}; }
  if (!r.ok) {
    const error = new ApiError(r.status, data);
    if (r.status === 401) window.dispatchEvent(new CustomEvent("jobserver:unauthorized"));
    throw error;
  }
  return data;
}
