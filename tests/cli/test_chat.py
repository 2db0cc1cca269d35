from penstock.config import DEFAULT_MODEL_NAME
from tests.cli.conftest import ADMIN_KEY, RunningServer, penstock, penstock_env


def test_chat_streams_an_answer_from_a_running_server(server: RunningServer) -> None:
    env = penstock_env(server.home, PENSTOCK_API_KEY=ADMIN_KEY)
    result = penstock(
        "chat", "--url", server.base_url, "--temperature", "0", env=env, input="What is the capital of France?\n"
    )
    assert result.returncode == 0, result.stderr
    assert "assistant> " in result.stdout
    assert "Paris" in result.stdout


def test_chat_reports_a_rejected_key(server: RunningServer) -> None:
    env = penstock_env(server.home, PENSTOCK_API_KEY="sk-wrong")
    result = penstock("chat", "--url", server.base_url, env=env, input="hello\n")
    assert "error 401" in result.stderr


def test_chat_reports_an_unknown_model(server: RunningServer) -> None:
    env = penstock_env(server.home, PENSTOCK_API_KEY=ADMIN_KEY)
    result = penstock("chat", "--url", server.base_url, "--model", "nope", env=env, input="hello\n")
    assert "error 404" in result.stderr
    assert DEFAULT_MODEL_NAME in result.stderr  # the message lists what is available


def test_chat_says_when_the_server_is_unreachable(tmp_path) -> None:
    result = penstock("chat", "--url", "http://127.0.0.1:9", env=penstock_env(tmp_path), input="hello\n")
    assert "cannot reach" in result.stderr
