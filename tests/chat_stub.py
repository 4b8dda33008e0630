"""A local OpenAI-compatible chat endpoint whose replies a test scripts (status codes, hangs, bad JSON)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def completion(content: str, prompt_tokens: int = 100, completion_tokens: int = 20) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "test-vlm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


class ChatServer:
    """A chat-completions endpoint whose replies come from `responder(call_index, body)`, which returns
    ("ok", content) | ("status", code, body_dict) | ("hang", seconds) | ("raw", bytes)."""

    def __init__(self, responder=None):
        self.responder = responder or (lambda i, body: ("ok", "answer to " + user_text(body)))
        self.calls: list[dict] = []
        self.inflight = self.max_inflight = 0
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    i = len(server.calls)
                    server.calls.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                    server.inflight += 1
                    server.max_inflight = max(server.max_inflight, server.inflight)
                try:
                    self.reply(server.responder(i, body))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)
                finally:
                    with server.lock:
                        server.inflight -= 1

            def reply(self, action):
                kind = action[0]
                if kind == "hang":
                    server.release.wait(action[1])
                    action = ("ok", "too late")
                    kind = "ok"
                if kind == "ok":
                    code, data = 200, json.dumps(completion(action[1])).encode()
                elif kind == "status":
                    code, data = action[1], json.dumps(action[2]).encode()
                else:
                    code, data = 200, action[1]
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def user_text(body: dict) -> str:
    return next(p["text"] for p in body["messages"][1]["content"] if p["type"] == "text")
