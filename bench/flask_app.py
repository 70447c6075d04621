"""The framework row of bench/http_bench.py: a small Flask application with a JSON endpoint."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

app = Flask(__name__)


@app.route("/")
def index() -> Any:
    return jsonify(message="Hello, world!", items=[1, 2, 3], ok=True)
