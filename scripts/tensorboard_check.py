#!/usr/bin/env python3
"""TensorBoard event files: the byte vectors llmtrain's unit tests check its writer against, and a check that
TensorBoard's own reader reads a run's event files back with the values of its metrics.jsonl.

    python3 scripts/tensorboard_check.py vectors       # prints the vectors (pure Python, no dependency)
    python3 scripts/tensorboard_check.py run RUN_DIR   # needs `pip install tensorboard` (EventAccumulator)

The vectors are encoded here by hand (TFRecord framing, CRC-32C, protobuf wire format), independently of the
Rust writer (prost, the crc crate); `vectors --write DIR` also writes them as an event file, which TensorBoard
2.21's EventAccumulator reads as file_version 2 and Scalars('loss') = [(7, 0.25)].
"""
import json
import pathlib
import struct
import sys


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(tag: int, wire: int, payload: bytes) -> bytes:
    return varint(tag << 3 | wire) + payload


def length_delimited(tag: int, payload: bytes) -> bytes:
    return field(tag, 2, varint(len(payload)) + payload)


def event(wall_time: float, step: int = 0, file_version: str = None, scalar=None) -> bytes:
    out = field(1, 1, struct.pack("<d", wall_time))
    if step:
        out += field(2, 0, varint(step))
    if file_version is not None:
        out += length_delimited(3, file_version.encode())
    if scalar is not None:
        tag, value = scalar
        summary_value = length_delimited(1, tag.encode()) + field(2, 5, struct.pack("<f", value))
        out += length_delimited(5, length_delimited(1, summary_value))
    return out


def record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked(length)) + data + struct.pack("<I", masked(data))


def vectors(write_dir=None):
    version = event(1.5, file_version="brain.Event:2")
    scalar = event(2.0, step=7, scalar=("loss", 0.25))
    print("masked_crc32c(b'') =", hex(masked(b"")))
    for name, data in [("file_version event", version), ("scalar event", scalar)]:
        print(f"{name}: {data.hex()}\n{name} record: {record(data).hex()}")
    if write_dir:
        path = pathlib.Path(write_dir)
        path.mkdir(parents=True, exist_ok=True)
        (path / "events.out.tfevents.0000000001.vectors").write_bytes(record(version) + record(scalar))


def check_run(run_dir: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = pathlib.Path(run_dir)
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    accumulator.Reload()
    # metrics.jsonl's values, last record per (tag, step) as TensorBoard keeps after a resume.
    expected = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record_ = json.loads(line)
        for tag, value in record_.items():
            if tag != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected[(tag, record_["step"])] = value
    seen = {}
    for tag in accumulator.Tags()["scalars"]:
        for point in accumulator.Scalars(tag):
            seen[(tag, point.step)] = point.value
    worst = 0.0
    for key, value in expected.items():
        if key not in seen:
            sys.exit(f"missing in the event files: {key[0]} at step {key[1]}")
        f32 = struct.unpack("<f", struct.pack("<f", value))[0]
        worst = max(worst, abs(seen[key] - f32))
    extra = set(seen) - set(expected)
    if extra:
        sys.exit(f"in the event files but not in metrics.jsonl: {sorted(extra)[:5]}")
    tags = sorted({tag for tag, _ in expected})
    print(f"{len(expected)} scalars over {len(tags)} tags ({', '.join(tags)}) read back by TensorBoard's "
          f"EventAccumulator; largest difference from metrics.jsonl (as f32): {worst}")
    if worst != 0.0:
        sys.exit("values differ")


if __name__ == "__main__":
    if sys.argv[1:2] == ["vectors"]:
        vectors(sys.argv[3] if sys.argv[2:3] == ["--write"] else None)
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        check_run(sys.argv[2])
    else:
        sys.exit(__doc__)
