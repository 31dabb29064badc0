import asyncio
from pathlib import Path

import pytest

from relaybus.bus import Bus, NatsServer, ServerError, Settings
from relaybus.bus.server import find_binary
from relaybus.bus.streams import StreamSpec, ensure_stream


def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="RELAYBUS_NATS_SERVER='/nope/nats-server'"):
        find_binary("/nope/nats-server")


def test_too_old_binary_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\necho 'nats-server: v2.9.25'\n")
    fake.chmod(0o755)
    with pytest.raises(ServerError, match=r"2\.9\.25; relaybus needs >= 2\.10\.0"):
        find_binary(str(fake))


def test_start_failure_reports_the_servers_own_log(tmp_path: Path, nats_server: NatsServer) -> None:
    port = int(nats_server.url.rsplit(":", 1)[1])
    with pytest.raises(ServerError, match="did not become ready"):
        NatsServer(tmp_path / "s", port=port, start_timeout_s=10).start()


async def test_embedded_server_starts_on_loopback_and_stops(tmp_path: Path) -> None:
    async with NatsServer(tmp_path / "store") as server:
        assert server.url.startswith("nats://127.0.0.1:")
        proc = server.process
        assert proc is not None
        async with Bus(Settings.from_env({}, nats_url=server.url)) as bus:
            info = await bus.js.account_info()
            assert info is not None
    assert proc.poll() is not None  # stopped
    assert (tmp_path / "store" / "jetstream").exists()


async def test_cluster_keeps_r3_stream_when_a_node_dies(cluster: list[NatsServer]) -> None:
    urls = ",".join(node.url for node in cluster)
    settings = Settings.from_env({}, nats_url=urls, request_timeout_s=5)
    async with Bus(settings) as bus:
        for _ in range(100):  # the meta leader needs a moment after the routes connect (bounded)
            try:
                await ensure_stream(bus, StreamSpec("R3", ("r3.>",), replicas=3))
                break
            except Exception:
                await asyncio.sleep(0.2)
        for i in range(20):
            await bus.publish_bytes("r3.x", str(i).encode(), {"Nats-Msg-Id": f"m{i}"})
        info = await bus.js.stream_info("R3")
        leader = next(
            node
            for node in cluster
            if node.cluster and node.cluster.server_name == info.cluster.leader
        )
        leader.kill()  # the worst case: the stream leader dies
        for i in range(20, 40):  # retried with the same msg id through the leader election
            await bus.publish_bytes("r3.x", str(i).encode(), {"Nats-Msg-Id": f"m{i}"})
        info = await bus.js.stream_info("R3")
        assert info.state.messages == 40
