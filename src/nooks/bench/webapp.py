"""The small Flask route of the web benchmark (Flask comes with the test extras)."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/hello")
def hello() -> dict[str, object]:
    return {"message": "hello, world", "ok": True}
