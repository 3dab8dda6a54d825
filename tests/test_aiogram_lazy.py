"""aiogram imported with its models built on first use (protocols/telegram/_aiogram.py): the methods
the gateway calls (aiogram's and protocols/telegram/methods.py's) serialise, and their answers
validate, the same as with the eager import."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

from protocols.telegram import _aiogram
from tests.conftest import ROOT

SCRIPT = """
import json, sys
from protocols.telegram import _aiogram
lazy = _aiogram.load(lazy=sys.argv[1] == "lazy")
from aiogram import methods as M, types as T
from protocols.telegram import methods as G
from protocols.telegram.bot import keyboard
user = {"id": 5, "is_bot": False, "first_name": "Ann", "username": "ann"}
chat = {"id": 5, "type": "private", "first_name": "Ann"}
message = {"message_id": 2, "date": 1700000000, "chat": chat, "from": user, "text": "/mute kitchen 2h"}
updates = [
    {"update_id": 1, "message": message},
    {"update_id": 3, "callback_query": {"id": "q", "from": user, "chat_instance": "c", "data": "ack:abc234",
                                         "message": {**message, "reply_markup": keyboard([[
                                             {"text": "Acknowledge", "data": "ack:abc234"}]])}}},
]
markup = keyboard([[{"text": "Acknowledge", "data": "ack:abc234"},
                   {"text": "Mute 1h", "data": "mute:abc234"}]])
calls = [
    M.GetMe(),
    G.Updates(offset=7, timeout=30, allowed_updates=["message", "callback_query"]),
    G.Send(chat_id=5, text="alert", reply_markup=markup, disable_notification=True),
    G.EditText(chat_id=5, message_id=2, text="acknowledged", reply_markup=markup),
    M.AnswerCallbackQuery(callback_query_id="q", text="Acknowledged"),
    M.SetMyCommands(commands=[T.BotCommand(command="mute", description="Mute")]),
    M.SetWebhook(url="https://example.org/telegram/x/", secret_token="s" * 20),
    M.DeleteWebhook(),
]
answers = [
    (M.GetMe, {**user, "is_bot": True}),
    (G.Updates, updates),
    (G.Send, message),
    (G.EditText, message),
    (G.EditText, True),
    (M.AnswerCallbackQuery, True),
    (M.SetMyCommands, True),
    (M.SetWebhook, True),
    (M.DeleteWebhook, True),
]
out = {
    "lazy": lazy,
    "calls": [repr(c.model_dump(exclude_none=True)) for c in calls],
    "answers": [
        repr(M.Response[method.__returning__].model_validate({"ok": True, "result": result}).result)
        for method, result in answers
    ],
}
print(json.dumps(out))
"""


def run(mode: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_lazy_and_eager_aiogram_read_and_write_the_same() -> None:
    lazy, eager = run("lazy"), run("eager")
    assert (lazy.pop("lazy"), eager.pop("lazy")) == (True, False)
    assert lazy == eager
    assert "mute:abc234" in str(lazy["calls"]) and "ack:abc234" in str(lazy["answers"][1])
    # JSON answers stay JSON: an update is the object Telegram sent, not a model's dump of it.
    assert lazy["answers"][1].startswith("[{'update_id': 1, 'message': {'message_id': 2")


def test_the_installed_versions_are_the_ones_checked() -> None:
    # An upgrade of aiogram or pydantic fails here by name: check the module against it, then
    # set CHECKED and pyproject's pins. Until then `load` imports aiogram eagerly (and says so).
    for package, release in _aiogram.CHECKED.items():
        assert version(package) == release, (
            f"{package} {version(package)}: check protocols/telegram/_aiogram.py"
        )
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"aiogram==3.31.0"' in pyproject and '"pydantic==2.13.5"' in pyproject
    assert _aiogram.checked()
