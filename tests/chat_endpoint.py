"""The base of the tests' scripted OpenAI-compatible chat-completions endpoints (a judge, an
annotation model): subclasses read the request and choose the reply's text."""
import http.server
import json


class ScriptedChat(http.server.BaseHTTPRequestHandler):
  usage = {"prompt_tokens": 1, "completion_tokens": 1}     # what each reply reports

  def log_message(self, *args):
    pass

  def request_body(self) -> dict:
    return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

  def send_chat(self, content: str) -> None:
    """A 200 chat-completions answer whose one choice is `content`."""
    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                          "usage": self.usage}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(payload)))
    self.end_headers()
    self.wfile.write(payload)
