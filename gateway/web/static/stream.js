// The page's side of /ws/alerts/: reconnects with back-off and resumes from the last seq it saw.

const FIRST_DELAY = 500;
const MAX_DELAY = 10000;
const PING_EVERY = 20000;
const PONG_WITHIN = 8000;
export const CLOSE_UNAUTHORIZED = 4401;

export class AlertStream {
  /**
   * handlers: hello(msg, resumedFrom), alert(msg), sensor(msg), sensors(msg), silence(msg), mode(msg), error(msg),
   * state(name, detail) with name "connecting" | "live" | "down", unauthorized().
   */
  constructor(url, handlers) {
    this.url = url;
    this.on = handlers;
    this.socket = null;
    this.seq = null; // the highest seq seen: what `resume` asks to continue from
    this.delay = FIRST_DELAY;
    this.retryTimer = null;
    this.pingTimer = null;
    this.pongTimer = null;
  }

  start() {
    this.connect();
    // Coming back from sleep or a lost network: try now rather than at the end of a back-off.
    window.addEventListener("online", () => this.retryNow());
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.retryNow();
    });
  }

  get live() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN && this.greeted;
  }

  send(message) {
    if (!this.live) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  ack(alertId) {
    return this.send({ type: "ack", alert: alertId });
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.greeted = false;
    this.on.state("connecting", "connecting…");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onmessage = (event) => this.receive(event.data);
    socket.onclose = (event) => this.closed(socket, event);
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "hello") {
      const resumedFrom = this.seq;
      this.greeted = true;
      this.delay = FIRST_DELAY;
      this.on.hello(msg, resumedFrom);
      if (resumedFrom !== null) this.socket.send(JSON.stringify({ type: "resume", after: resumedFrom }));
      this.seq = Math.max(this.seq ?? 0, msg.seq);
      this.on.state("live", "live");
      this.keepAlive();
    } else if (msg.type === "alert") {
      this.seq = Math.max(this.seq ?? 0, msg.seq);
      this.on.alert(msg);
    } else if (msg.type === "sensor") {
      this.on.sensor(msg);
    } else if (msg.type === "sensors") {
      this.on.sensors(msg);
    } else if (msg.type === "silence") {
      this.on.silence(msg);
    } else if (msg.type === "mode") {
      this.on.mode(msg);
    } else if (msg.type === "pong") {
      clearTimeout(this.pongTimer);
    } else if (msg.type === "error") {
      this.on.error(msg);
    }
  }

  keepAlive() {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      // A socket over dead Wi-Fi stays "open" for minutes: no pong means it is gone.
      if (!this.send({ type: "ping" })) return;
      clearTimeout(this.pongTimer);
      this.pongTimer = setTimeout(() => this.socket && this.socket.close(), PONG_WITHIN);
    }, PING_EVERY);
  }

  closed(socket, event) {
    if (socket !== this.socket) return;
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
    this.socket = null;
    this.greeted = false;
    if (event.code === CLOSE_UNAUTHORIZED) {
      this.on.state("down", "signed out");
      this.on.unauthorized();
      return;
    }
    // Full jitter: a restarted gateway is not hit by every screen in the same millisecond.
    const wait = Math.round(this.delay / 2 + Math.random() * (this.delay / 2));
    this.delay = Math.min(MAX_DELAY, this.delay * 2);
    this.on.state("down", `reconnecting in ${Math.ceil(wait / 1000)} s`);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  retryNow() {
    if (this.retryTimer !== null) this.connect();
  }
}
