"""Framework-link benchmark: hub users → bridge → a real NoneBot echo bot → back as pushes.

50 hub users each send 20 messages closed-loop (send, wait for the bot's echo push, repeat).
The bridge (`momobridge serve`) and NoneBot each run in their own process; this process is the
load generator. Baseline in the same run: the same closed loop of hub heartbeats, which shows
what the framework hop adds.

    python bench/onebot_bench.py [--users 50] [--messages 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402

from tests.support.frameworks import FrameworkProcess, free_port  # noqa: E402

BOT = "10000"


async def start_bridge(
    workdir: Path, framework_url: str, token: str
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    cfg = workdir / "config.toml"
    cfg.write_text(
        f'[server]\nport = {port}\n[storage]\npath = "{workdir / "bridge.db"}"\n'
        f'[log]\nlevel = "warning"\nformat = "json"\n[momohub]\nenabled = false\n'
        f'[[onebot.frameworks]]\nurl = "{framework_url}"\naccess_token = "{token}"\n'
        f"reconnect_interval = 0.1\n"
    )
    log = (workdir / "bridge.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        "serve",
        "--config",
        str(cfg),
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    log.close()
    # Ready when a login lists the bot as a contact and a message to it is accepted.
    async with asyncio.timeout(60):
        while True:
            try:
                async with connect(f"ws://127.0.0.1:{port}/api/gateway") as ws:
                    await ws.send(
                        json.dumps(
                            {
                                "request_id": 1,
                                "protocol": "system",
                                "type": "login",
                                "data": {"mio-chat-id": "probe"},
                            }
                        )
                    )
                    await ws.recv()
                    await ws.send(
                        json.dumps(
                            {
                                "request_id": 2,
                                "protocol": "onebot",
                                "type": "message",
                                "id": BOT,
                                "data": [{"type": "text", "data": {"text": "warm"}}],
                            }
                        )
                    )
                    ack = json.loads(await ws.recv())
                    if ack.get("code") == 0:
                        return proc, port
            except OSError:
                pass
            await asyncio.sleep(0.2)


async def user(url: str, uid: str, n: int, kind: str, rtts: list[float]) -> None:
    async with connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "request_id": 0,
                    "protocol": "system",
                    "type": "login",
                    "data": {"mio-chat-id": uid},
                }
            )
        )
        json.loads(await ws.recv())
        for i in range(1, n + 1):
            t0 = time.perf_counter()
            if kind == "heartbeat":
                await ws.send(
                    json.dumps(
                        {
                            "request_id": i,
                            "protocol": "system",
                            "type": "heartbeat",
                            "data": {"timestamp": ""},
                        }
                    )
                )
                while json.loads(await ws.recv()).get("request_id") != i:
                    pass
            else:
                text = f"m{i}"
                await ws.send(
                    json.dumps(
                        {
                            "request_id": i,
                            "protocol": "onebot",
                            "type": "message",
                            "id": BOT,
                            "data": [{"type": "text", "data": {"text": text}}],
                        }
                    )
                )
                while True:  # the ack, then the bot's echo as a push
                    f = json.loads(await ws.recv())
                    if f.get("code") == 1:
                        raise RuntimeError(f"send failed: {f}")
                    content = (f.get("data") or {}).get("content") or {}
                    msg = content.get("message") or []
                    if msg and msg[0].get("data", {}).get("text") == f"echo: {text}":
                        break
            rtts.append(time.perf_counter() - t0)


async def closed_loop(url: str, users: int, n: int, kind: str) -> tuple[float, list[float]]:
    rtts: list[float] = []
    t0 = time.perf_counter()
    async with asyncio.timeout(300):
        await asyncio.gather(*(user(url, f"{kind}{u}", n, kind, rtts) for u in range(users)))
    return time.perf_counter() - t0, rtts


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000


async def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--users", type=int, default=50)
    ap.add_argument("--messages", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="10 users x 5 messages")
    args = ap.parse_args()
    if args.quick:
        args.users, args.messages = 10, 5
    cpu = cpu_model()
    print("MomoBridge framework-link benchmark")
    print(f"machine : nproc={os.cpu_count()} cpu={cpu!r} python={platform.python_version()}")
    print(
        f"load    : {args.users} users x {args.messages} messages, closed loop; bridge and NoneBot "
        "in separate processes, load generator in this one"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        token = "bench"
        bot = FrameworkProcess("nonebot_bot.py", "/onebot/v11/ws", token, work / "nonebot")
        bridge = None
        try:
            await bot.start()
            bridge, port = await start_bridge(work, bot.url, token)
            url = f"ws://127.0.0.1:{port}/api/gateway"
            hb_time, hb = await closed_loop(url, args.users, args.messages, "heartbeat")
            ob_time, ob = await closed_loop(url, args.users, args.messages, "message")
        finally:
            if bridge is not None and bridge.returncode is None:
                bridge.terminate()
                await bridge.wait()
            await bot.stop()
    total = args.users * args.messages
    print()
    print(f"{'':28}{'per s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    print(
        f"{'hub heartbeat (baseline)':28}{total / hb_time:>10,.0f}{pct(hb, 50):>10.2f}{pct(hb, 99):>10.2f}"
    )
    print(
        f"{'message → NoneBot → push':28}{total / ob_time:>10,.0f}{pct(ob, 50):>10.2f}{pct(ob, 99):>10.2f}"
    )
    print(
        f"ratio (framework round trip / heartbeat): throughput {hb_time / ob_time:.2f}, "
        f"p50 latency {pct(ob, 50) / pct(hb, 50):.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
