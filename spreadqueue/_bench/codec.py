"""Benchmark of the sans-IO Spread codec (:mod:`spreadqueue._spread.wire`).

Measures how fast :class:`~spreadqueue._spread.wire.ClientDecoder` decodes streams of
100-byte and 100 KB messages fed in realistic 64 KB reads (MB/s of stream and
messages/s), and how fast :func:`~spreadqueue._spread.wire.encode_message` encodes them.
Each figure is the median of several runs. Run it with::

    python -m spreadqueue._bench.codec [--repeats N]

This is a measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from spreadqueue._spread import wire

CHUNK = 64 * 1024
SENDER = "#bench#localhost"
GROUP = "bench-group"
#: (label, payload size, messages per run): about 4..10 MB of stream per run.
CASES: tuple[tuple[str, int, int], ...] = (("100 B", 100, 25_000), ("100 KB", 100_000, 100))


def _established() -> wire.ClientDecoder:
    decoder = wire.ClientDecoder()
    decoder.feed(wire.encode_auth_list() + wire.encode_accept(SENDER))
    return decoder


def _stream(size: int, count: int) -> bytes:
    """``count`` daemon -> client data messages of ``size`` bytes, back to back."""
    data = bytes(i & 0xFF for i in range(size))
    frame = wire.RegularMessage(wire.SAFE_MESS, SENDER, (GROUP,), 1, data)
    return wire.encode_to_client(frame) * count


def _median_rate(
    run_once: Callable[[], None], repeats: int, nbytes: int, count: int
) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "seconds": median,
        "mb_per_s": nbytes / median / 1e6,
        "msgs_per_s": count / median,
    }


def bench_decode(size: int, count: int, repeats: int) -> dict[str, float]:
    """Decode ``count`` messages of ``size`` bytes fed in 64 KB chunks."""
    stream = _stream(size, count)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
    got = 0

    def once() -> None:
        nonlocal got
        decoder = _established()
        feed = decoder.feed
        got = 0
        for chunk in chunks:
            got += len(feed(chunk))

    result = _median_rate(once, repeats, len(stream), count)
    if got != count:  # a benchmark of a broken decoder would be worthless
        raise RuntimeError(f"decoded {got} messages, expected {count}")
    return result


def bench_encode(size: int, count: int, repeats: int) -> dict[str, float]:
    """Encode ``count`` messages of ``size`` bytes with encode_message."""
    data = bytes(size)
    encode = wire.encode_message
    nbytes = count * wire.message_size(1, size)

    def once() -> None:
        for i in range(count):
            encode(wire.SAFE_MESS, SENDER, (GROUP,), data, i & 0x7FFF)

    return _median_rate(once, repeats, nbytes, count)


def run(repeats: int = 5) -> dict[str, dict[str, float]]:
    """All measurements: ``{"decode 100 B": {"mb_per_s": ..., "msgs_per_s": ...}, ...}``."""
    results: dict[str, dict[str, float]] = {}
    for label, size, count in CASES:
        results[f"decode {label}"] = bench_decode(size, count, repeats)
    for label, size, count in CASES:
        results[f"encode {label}"] = bench_encode(size, count, repeats)
    return results


def format_table(results: dict[str, dict[str, float]], repeats: int) -> str:
    """The results as a small text table."""
    lines = [
        f"spreadqueue codec benchmark (median of {repeats} runs, 64 KB reads)",
        f"{'case':<16}{'MB/s':>10}{'messages/s':>14}",
    ]
    for name, r in results.items():
        lines.append(f"{name:<16}{r['mb_per_s']:>10.1f}{r['msgs_per_s']:>14,.0f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark and print the table."""
    parser = argparse.ArgumentParser(prog="python -m spreadqueue._bench.codec", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="runs per figure (default 5)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    print(format_table(run(args.repeats), args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
