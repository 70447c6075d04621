from conftest import Server


def test_serves_and_stops(server: Server) -> None:
    server.start().wait_ready(2)
    assert server.ask_pid() in server.worker_pids()
