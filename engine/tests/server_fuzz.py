"""Seeded fuzz cases for the server's multipart upload and JSON bodies (the tests are in test_server_robustness).

Each case mutates a valid request (the `parameters` JSON, the multipart framing, the uploaded files, or
the export body); the server must answer every one below 500 within the time limit, and afterwards its
worker must still run a job to success. A failure names the seed that replays it.
"""

from __future__ import annotations

import json
import random
import time

import httpx

from medgen.server.process import ServerProcess
from test_server import client, job_parameters, post_job, wait_for

FAST_CASES = 60
CASE_TIMEOUT_S = 30.0
_FIELDS = ["prompt", "negative_prompt", "model", "adapters", "scheduler", "segment", "label", "slices", "all_slices",
           "num_variants", "seed", "num_inference_steps", "guidance_scale", "strength", "mask_dilate_mm",
           "mask_blur_px", "crop_padding_px", "window", "window_center", "window_width", "control_from",
           "prompt_variations", "unknown_field", ""]
_RAW_VALUES = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1e-400", "-0.0", "0", "-1", "1", "2",
               "9223372036854775807", "9223372036854775808", "-9223372036854775809", "18446744073709551616",
               "1" + "0" * 400, "0.5", "3.4e38", "true", "false", "null", '""', '"x"', '"' + "A" * 5000 + '"',
               '"\\u0000"', '"\\ud800"', '"ünïcødé ☢"', "[]", "[1, 2, 3]", "[-1]", "[1e400]", '[{"name": "x"}]',
               '[{"name": "x", "weight": NaN}]', "{}", '{"a": {"b": {"c": []}}}', "[" * 200 + "]" * 200]


def _parameters_text(rng: random.Random) -> str:
    """Valid parameters with one to three fields set to hostile raw JSON values, sometimes mangled text."""
    base = job_parameters(num_inference_steps=1)
    text = json.dumps(base)[:-1]
    for _ in range(rng.randint(1, 3)):
        text += f', "{rng.choice(_FIELDS)}": {rng.choice(_RAW_VALUES)}'
    text += "}"
    roll = rng.random()
    if roll < 0.1:
        text = text[: rng.randrange(len(text))]
    elif roll < 0.15:
        text = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(1, 200)))
    elif roll < 0.2:
        text = rng.choice(["[]", "null", "1e400", '"prompt"', "{}", '{"prompt": "x"}' * 3])
    return text


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        if not data:
            break
        position = rng.randrange(len(data))
        if kind == 0:  # flip bits
            data[position] ^= 1 << rng.randrange(8)
        elif kind == 1:  # truncate
            del data[position:]
        elif kind == 2:  # duplicate a slice
            end = min(len(data), position + rng.randrange(1, 256))
            data[position:position] = data[position:end]
        elif kind == 3:  # delete a slice
            del data[position:position + rng.randrange(1, 256)]
        else:  # overwrite with a hostile token
            token = rng.choice([b"\r\n", b"--", b"\x00" * 8, b"\xff" * 8, b"99999999", b"-1", b"\r\n\r\n",
                                b'filename="../../token"', b"Content-Length: 99999999999\r\n"])
            data[position:position + len(token)] = token
    return bytes(data)


def _nrrd_with_lying_header(rng: random.Random, nrrd: bytes) -> bytes:
    header, _, body = nrrd.partition(b"\n\n")
    lines = header.split(b"\n")
    replacements = {b"sizes": [b"sizes: 99999 99999 99999", b"sizes: 0 0 0", b"sizes: -1 32 32", b"sizes: 32 32"],
                    b"type": [b"type: banana", b"type: double", b"type: block"],
                    b"encoding": [b"encoding: gzip", b"encoding: text", b"encoding: bzip2"],
                    b"space directions": [b"space directions: (nan,0,0) (0,1,0) (0,0,1)",
                                          b"space directions: (0,0,0) (0,0,0) (0,0,0)", b"space directions: none"],
                    b"dimension": [b"dimension: 7", b"dimension: 0", b"dimension: 99999999999"]}
    key = rng.choice(list(replacements))
    lines = [rng.choice(replacements[key]) if line.startswith(key) else line for line in lines]
    return b"\n".join(lines) + b"\n\n" + body


def one_case(http: httpx.Client, inputs: dict, seed: int) -> httpx.Response:
    """Build and send fuzz case ``seed``; returns the answer."""
    rng = random.Random(seed)
    source, mask = inputs["source"].read_bytes(), inputs["mask"].read_bytes()
    kind = rng.choice(["parameters", "parameters", "framing", "files", "export"])
    parameters = _parameters_text(rng) if kind == "parameters" else json.dumps(job_parameters(num_inference_steps=1))
    if kind == "files":
        if rng.random() < 0.5:
            source = _nrrd_with_lying_header(rng, source)
        else:
            source, mask = _mutate_bytes(rng, source), _mutate_bytes(rng, mask) if rng.random() < 0.5 else mask
    if kind == "export":
        body = _parameters_text(rng).encode("utf-8", "surrogatepass")
        job_id = rng.choice(["0" * 32, "x", "..", "%00"])
        return http.post(f"/v1/jobs/{job_id}/export", content=body, headers={"Content-Type": "application/json"})
    request = http.build_request("POST", "/v1/jobs", data={"parameters": parameters},
                                 files=[("source", ("ct.nrrd", source)), ("mask", ("m.nrrd", mask))])
    body, headers = request.read(), dict(request.headers)
    if kind == "framing":
        body = _mutate_bytes(rng, body)
        if rng.random() < 0.3:
            headers["content-type"] = rng.choice(["multipart/form-data", "multipart/form-data; boundary=",
                                                  "multipart/form-data; boundary=" + "x" * 300, "application/json",
                                                  "text/plain", "multipart/mixed; boundary=abc"])
    headers.pop("content-length", None)
    headers.pop("Content-Length", None)
    return http.post("/v1/jobs", content=body, headers=headers)


def run_cases(server: ServerProcess, inputs: dict, seeds: range) -> None:
    problems = []
    with client(server) as http:
        http.timeout = httpx.Timeout(CASE_TIMEOUT_S)
        for seed in seeds:
            try:
                response = one_case(http, inputs, seed)
            except httpx.TimeoutException:
                problems.append(f"seed {seed}: no answer within {CASE_TIMEOUT_S} s")
                continue
            if response.status_code >= 500:
                problems.append(f"seed {seed}: HTTP {response.status_code} {response.text[:200]}")
            elif response.status_code >= 400:
                assert response.json()["error"]["message"], f"seed {seed}: an error without a message"
        assert http.get("/v1/health").json()["status"] == "ok"
        deadline = time.monotonic() + 300
        while (created := post_job(http, inputs, num_inference_steps=1)).status_code == 429:
            assert time.monotonic() < deadline, "the queue of fuzzed jobs never drained"
            time.sleep(1.0)  # fuzz cases that were valid jobs fill the queue; the worker drains it
        assert created.status_code == 202, created.text
        status = wait_for(http, created.json()["id"], timeout=300)
    assert not problems, "\n".join(problems)
    assert status["state"] == "succeeded", status
    assert "Exception in thread" not in server.log()
