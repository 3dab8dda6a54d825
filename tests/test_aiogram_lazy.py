"""aiogram imported with its models built on first use (protocols/telegram/_aiogram.py): the updates
and methods the gateway touches validate and serialise the same as with the eager import."""

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
user = {"id": 5, "is_bot": False, "first_name": "Ann", "username": "ann"}
chat = {"id": 5, "type": "private", "first_name": "Ann"}
group = {"id": -100123, "type": "supergroup", "title": "House"}
message = {"message_id": 2, "date": 1700000000, "chat": chat, "from": user, "text": "/mute kitchen 2h"}
updates = [
    {"update_id": 1, "message": message},
    {"update_id": 2, "edited_message": {**message, "edit_date": 1700000001}},
    {"update_id": 3, "callback_query": {"id": "q", "from": user, "chat_instance": "c", "data": "ack:abc234",
                                         "message": {**message, "reply_markup": {"inline_keyboard": [[
                                             {"text": "Acknowledge", "callback_data": "ack:abc234"}]]}}}},
    {"update_id": 4, "my_chat_member": {"chat": group, "from": user, "date": 1700000000,
                                        "old_chat_member": {"status": "member", "user": user},
                                        "new_chat_member": {"status": "kicked", "user": user,
                                                            "until_date": 0}}},
    {"update_id": 5, "message": {"message_id": 3, "date": 1700000000, "chat": group, "from": user,
                                 "migrate_to_chat_id": -100999}},
    {"update_id": 6, "channel_post": {"message_id": 4, "date": 1700000000, "chat": group, "text": "x"}},
]
keyboard = T.InlineKeyboardMarkup(inline_keyboard=[[
    T.InlineKeyboardButton(text="Acknowledge", callback_data="ack:abc234"),
    T.InlineKeyboardButton(text="Mute 1h", callback_data="mute:abc234")]])
calls = [
    M.GetMe(),
    M.GetUpdates(offset=7, timeout=30, allowed_updates=["message", "callback_query"]),
    M.SendMessage(chat_id=5, text="alert", reply_markup=keyboard),
    M.EditMessageText(chat_id=5, message_id=2, text="acknowledged", reply_markup=keyboard),
    M.AnswerCallbackQuery(callback_query_id="q", text="Acknowledged"),
    M.SetMyCommands(commands=[T.BotCommand(command="mute", description="Mute")]),
    M.SetWebhook(url="https://example.org/telegram/x/", secret_token="s" * 20),
    M.DeleteWebhook(),
]
out = {
    "lazy": lazy,
    "updates": [repr(T.Update.model_validate(u).model_dump(exclude_none=True)) for u in updates],
    "calls": [repr(c.model_dump(exclude_none=True)) for c in calls],
    "me": repr(T.User.model_validate({**user, "is_bot": True}).model_dump()),
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
    assert "ack:abc234" in str(lazy["updates"]) and "mute:abc234" in str(lazy["calls"])


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
