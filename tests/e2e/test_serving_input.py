"""Every bad input to the live service gets a 4xx with a message, never a 5xx, and the next good request
is still answered: hand-picked cases (the ones seen in issue 13 among them), cross-site requests, and a
schemathesis fuzz of the OpenAPI spec."""

from __future__ import annotations

import io
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.e2e.serving_env import MAX_N

pytestmark = pytest.mark.e2e


def post(base: str, path: str, **kw) -> httpx.Response:
    return httpx.post(base + path, timeout=30, **kw)


def still_serving(base: str) -> None:
    assert httpx.get(base + "/readyz", timeout=10).status_code == 200
    assert post(base, "/generate", json={"n": 1, "seed": 0}).status_code == 200


def _json(body: bytes | str, **headers: str) -> dict:
    return {"content": body, "headers": {"content-type": "application/json", **headers}}


BAD_GENERATE = {
    "n-zero": ({"json": {"n": 0}}, 400),
    "n-over-max": ({"json": {"n": MAX_N + 1}}, 400),
    "n-negative": ({"json": {"n": -3}}, 400),
    "n-string": ({"json": {"n": "many"}}, 400),
    "n-float": ({"json": {"n": 2.5}}, 400),
    "n-bool": ({"json": {"n": True}}, 400),  # JSON true is not the integer 1 here
    "seed-bool": ({"json": {"seed": False}}, 400),
    "format-unknown": ({"json": {"format": "jpeg"}}, 400),
    "seed-negative": ({"json": {"seed": -1}}, 400),
    "seed-string": ({"json": {"seed": "abc"}}, 400),
    "seed-huge": ({"json": {"seed": 2**64}}, 400),
    "body-list": ({"json": [1, 2, 3]}, 400),
    "label-past-classes": ({"json": {"label": 10}}, 400),  # the champion knows classes 0..9
    "label-huge": ({"json": {"n": 1, "label": 9223372036854775808}}, 400),  # was a 500 (issue 13)
    "label-negative": ({"json": {"label": -1}}, 400),
    "label-string": ({"json": {"label": "seven"}}, 400),
    "not-json": (_json(b"{not json"), 400),
    "binary": (_json(b"\xff\xfe\x00garbage"), 400),
    "too-big": (_json(b"x" * 200_000), 413),
    # no Content-Length: the body is counted as it streams (was a 500, issue 13)
    "too-big-chunked": (_json(iter([b"x" * 50_000] * 4)), 413),
    "text-plain": ({"content": b'{"n": 1}', "headers": {"content-type": "text/plain"}}, 415),
    "form": ({"data": {"n": "1"}}, 415),
    "pickle": (
        {"content": b"\x80\x04K\x01.", "headers": {"content-type": "application/vnd.bentoml+pickle"}},
        415,
    ),
}


@pytest.mark.parametrize("kwargs,status", BAD_GENERATE.values(), ids=BAD_GENERATE.keys())
def test_bad_generate_requests_are_4xx_and_the_server_stays_up(server, kwargs, status):
    base, _ = server
    r = post(base, "/generate", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]  # a message, as JSON
    still_serving(base)


def test_an_empty_post_needs_no_content_type(server):
    base, facts = server
    r = httpx.post(base + "/model", timeout=30)  # curl -X POST .../model
    assert r.status_code == 200 and r.json()["version"] == facts["version"]
    r = httpx.post(base + "/generate", content=b"", headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415  # a typed body is a body: only JSON


def test_wrong_method_is_405(server):
    base, _ = server
    assert httpx.get(base + "/generate", timeout=10).status_code == 405


# ----------------------------------------------------------------------------- cross-site requests


def test_foreign_host_names_are_refused(server):
    """DNS rebinding: a page on evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    base, _ = server
    for host in ("evil.example", "evil.example:3000", "127.0.0.1.evil.example", "localhost.evil.example"):
        r = post(base, "/generate", json={"n": 1}, headers={"host": host})
        assert r.status_code == 400 and "not allowed" in r.json()["error"], host
        assert httpx.get(base + "/ui/", headers={"host": host}, timeout=10).status_code == 400
    for host in ("localhost", "127.0.0.1", "[::1]:1234", "LOCALHOST:80"):
        assert post(base, "/generate", json={"n": 1}, headers={"host": host}).status_code == 200, host
    assert (
        httpx.get(base + "/readyz", headers={"host": "10.0.0.7:3000"}, timeout=10).status_code == 200
    )  # probes


def test_cross_origin_posts_are_refused_same_origin_ones_pass(server):
    base, _ = server
    for origin in ("http://evil.example", "null", base.replace("127.0.0.1", "localhost")):
        r = post(base, "/generate", json={"n": 1}, headers={"origin": origin})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"], origin
        r = post(
            base,
            "/stylize",
            files=_upload(_image(20, 20)),
            data={"style": "waves"},
            headers={"origin": origin},
        )
        assert r.status_code == 403, origin
    assert post(base, "/generate", json={"n": 1}, headers={"origin": base}).status_code == 200


# ----------------------------------------------------------------------------- /stylize uploads


def _image(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _bomb(side: int = 13000) -> bytes:
    """A grey PNG of side x side zero pixels: ~164 KB on disk, side**2 bytes once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" * (side + 1)) for _ in range(side)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _upload(data: bytes, name: str = "photo.png") -> dict:
    return {"image": (name, data, "image/png")}


class _Witness(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Witness.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(_image(20, 20))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def witness():
    """A local HTTP server that records every request: the service must never fetch a URL it is handed."""
    srv = HTTPServer(("127.0.0.1", 0), _Witness)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/photo.png"
    srv.shutdown()


BAD_STYLIZE = {
    "unknown-style": (lambda u: {"files": _upload(_image(20, 20)), "data": {"style": "starry"}}, 400),
    "no-style": (lambda u: {"files": _upload(_image(20, 20))}, 400),
    "not-an-image": (
        lambda u: {"files": _upload(b"this is not an image", "notes.png"), "data": {"style": "waves"}},
        400,
    ),
    "empty": (lambda u: {"files": _upload(b"", "empty.png"), "data": {"style": "waves"}}, 400),
    "no-file": (lambda u: {"files": {"other": ("a.txt", b"a")}, "data": {"style": "waves"}}, 400),
    "1x1": (lambda u: {"files": _upload(_image(1, 1)), "data": {"style": "waves"}}, 400),
    "17x17": (
        lambda u: {"files": _upload(_image(17, 17)), "data": {"style": "waves"}},
        400,
    ),  # GANOPS_MIN_SIDE=18
    "1024x3": (lambda u: {"files": _upload(_image(1024, 3)), "data": {"style": "waves"}}, 400),
    "4000x20": (
        lambda u: {"files": _upload(_image(4000, 20)), "data": {"style": "waves"}},
        400,
    ),  # thin once scaled
    "tiff": (lambda u: {"files": _upload(_tiff(), "photo.tif"), "data": {"style": "waves"}}, 400),
    "text-field": (lambda u: {"files": {"style": (None, "waves")}, "data": {"image": "foo"}}, 400),
    "url-field": (lambda u: {"files": {"style": (None, "waves")}, "data": {"image": u}}, 400),
    "url-as-json": (lambda u: _json(f'"{u}"'), 415),
    "url-form-encoded": (lambda u: {"data": {"image": u, "style": "waves"}}, 415),
    "long-filename": (
        lambda u: {"files": _upload(_image(20, 20), "a" * 300 + ".png"), "data": {"style": "waves"}},
        400,
    ),
    "style-as-file": (lambda u: {"files": {**_upload(_image(20, 20)), "style": ("s.txt", b"waves")}}, 400),
    "too-big": (
        lambda u: {"files": _upload(b"x" * (9 * 1024 * 1024), "huge.png"), "data": {"style": "waves"}},
        413,
    ),
}


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, format="TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("make,status", BAD_STYLIZE.values(), ids=BAD_STYLIZE.keys())
def test_bad_uploads_are_4xx_and_no_url_is_fetched(server, witness, make, status):
    base, _ = server
    r = post(base, "/stylize", **make(witness))
    assert r.status_code == status, r.text
    assert r.json()["error"]
    assert _Witness.hits == []  # the URL handed over was never fetched
    still_serving(base)


def test_decompression_bomb_is_refused_from_its_header_fast(server):
    base, _ = server
    bomb = _bomb()
    assert len(bomb) < 200_000
    post(base, "/stylize", files=_upload(_image(20, 20)), data={"style": "waves"})  # warm
    took = []
    for _ in range(3):
        t = time.perf_counter()
        r = post(base, "/stylize", files=_upload(bomb, "bomb.png"), data={"style": "waves"})
        took.append(time.perf_counter() - t)
        assert r.status_code == 413 and "GANOPS_MAX_PIXELS" in r.json()["error"], r.text
    # the issue's bound; a decoded 13000^2 image takes seconds here. Best of 3: a shared CI machine stalls.
    assert min(took) < 0.1, took
    still_serving(base)


def test_a_slow_client_does_not_hold_the_body_check_forever(server):
    """A declared length that never arrives: the server answers nobody else less for it."""
    base, _ = server
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")  # fmt: skip
        still_serving(base)


# ----------------------------------------------------------------------------- property-based fuzzing


def test_schemathesis_fuzz_of_the_openapi_spec_finds_no_server_error(server, tmp_path):
    """schemathesis 4 draws requests (valid and invalid ones) from /docs.json for every API route and
    reports any 5xx. Bounded (examples per route, phases, a time cap) and seeded, so the e2e tier stays
    short and a failure repeats. Run through its CLI: its pytest plugin does not load under pytest 9."""
    base, _ = server
    cmd = [str(Path(sys.executable).parent / "schemathesis"), "run", base + "/docs.json", "--url", base,
           "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing", "--max-examples", "40",
           "--seed", "1", "--generation-deterministic", "--workers", "1",
           "--request-timeout", "30", "--max-time", "60", "--no-color",
           "--report", "junit", "--report-dir", str(tmp_path)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    # every route must be fuzzed (a "Schema Error" means one was not: `lt=2**63` on seed once made
    # OpenAPI 3.0's exclusiveMaximum without maximum) and every generated case free of server errors
    counts = re.search(r"(\d+) generated, (\d+) passed", r.stdout)
    assert counts and "Schema Error" not in r.stdout, r.stdout[-6000:] + r.stderr[-2000:]
    assert int(counts[1]) > 0 and counts[1] == counts[2], r.stdout[-6000:]
    still_serving(base)


def test_upload_filenames_never_choose_where_anything_is_written(server, tmp_path):
    base, _ = server
    up = "../" * 16  # from any working directory up to the root, then down into this test's folder
    names = {
        "relative": (
            up + str(tmp_path / "by-relative-name.png").lstrip("/"),
            tmp_path / "by-relative-name.png",
        ),
        "absolute": (str(tmp_path / "by-absolute-name.png"), tmp_path / "by-absolute-name.png"),
        "windows": ("..\\..\\" + "by-backslash-name.png", None),
    }
    for what, (name, target) in names.items():
        r = post(base, "/stylize", files=_upload(_image(20, 20), name), data={"style": "waves"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", (what, r.text)
        if target is not None:
            assert not target.exists(), what  # the name is a label: the service writes nothing by it
    assert list(tmp_path.iterdir()) == []
    still_serving(base)
