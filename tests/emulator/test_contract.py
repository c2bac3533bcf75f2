"""The API contract, row by row, sent with plain httpx (never clipnormals' client)."""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipnormals.emulator import (
    ENDPOINT,
    Emulator,
    EmulatorConfig,
    Faults,
    ServerLimit,
    start_in_thread,
)

from .conftest import FakeClock, image_bytes, post_image

pytestmark = pytest.mark.anyio

# The reference call from the API documentation, host aside.
DOCS_CURL = (
    "curl -X POST https://clipdrop-api.co/portrait-surface-normals/v1 "
    "-H 'x-api-key: YOUR_API_KEY' -F image_file=@portrait.jpg -o result.jpg"
)


def assert_json_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert isinstance(error, str)
    assert error
    return error


# -- success ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size"), [("PNG", (64, 48)), ("JPEG", (33, 71)), ("WEBP", (120, 80))]
)
async def test_success_is_a_jpeg_of_the_input_size_with_credit_headers(
    http: httpx.AsyncClient, emulator: Emulator, fmt: str, size: tuple[int, int]
) -> None:
    response = await post_image(http, image_bytes(fmt, size))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-remaining-credits"] == "4"
    assert response.headers["x-credits-consumed"] == "1"
    with Image.open(io.BytesIO(response.content)) as out:
        assert out.format == "JPEG"
        assert out.size == size
    assert emulator.credits("good") == 4


async def test_the_format_is_sniffed_not_taken_from_the_name_or_part_type(
    http: httpx.AsyncClient,
) -> None:
    files = {"image_file": ("photo.gif", image_bytes("PNG"), "image/gif")}
    response = await http.post(ENDPOINT, headers={"x-api-key": "good"}, files=files)
    assert response.status_code == 200


async def test_consumed_header_follows_the_configured_cost(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = Emulator(EmulatorConfig(keys={"k": 10}, cost=3, limit=None))
    async with make_http(emulator) as http:
        response = await post_image(http, image_bytes(), key="k")
    assert response.headers["x-credits-consumed"] == "3"
    assert response.headers["x-remaining-credits"] == "7"


async def test_credit_headers_can_be_turned_off_like_older_api_versions(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    config = EmulatorConfig(keys={"k": 10}, consumed_header=False, limit=None)
    async with make_http(Emulator(config)) as http:
        response = await post_image(http, image_bytes(), key="k")
    assert response.status_code == 200
    assert response.headers["x-remaining-credits"] == "9"
    assert "x-credits-consumed" not in response.headers


# -- 401 / 403 ----------------------------------------------------------------------------------


async def test_401_without_a_key(http: httpx.AsyncClient) -> None:
    error = assert_json_error(await post_image(http, image_bytes(), key=None), 401)
    assert error == "No api key provided"


async def test_401_with_an_empty_key(http: httpx.AsyncClient) -> None:
    assert_json_error(await post_image(http, image_bytes(), key=""), 401)


async def test_403_for_an_unknown_key(http: httpx.AsyncClient) -> None:
    assert_json_error(await post_image(http, image_bytes(), key="nobody"), 403)


async def test_403_for_a_revoked_key(http: httpx.AsyncClient) -> None:
    assert_json_error(await post_image(http, image_bytes(), key="gone"), 403)


async def test_403_after_revocation_at_run_time_and_200_after_restore(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.revoke("good")
    assert_json_error(await post_image(http, image_bytes(), key="good"), 403)
    emulator.restore("good")
    assert (await post_image(http, image_bytes(), key="good")).status_code == 200


# -- 400 ----------------------------------------------------------------------------------------


async def test_400_for_a_body_that_is_not_multipart(http: httpx.AsyncClient) -> None:
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": "good", "content-type": "image/png"},
        content=image_bytes(),
    )
    assert_json_error(response, 400)


async def test_400_for_no_body(http: httpx.AsyncClient) -> None:
    assert_json_error(await http.post(ENDPOINT, headers={"x-api-key": "good"}), 400)


async def test_400_for_a_missing_image_file_part(http: httpx.AsyncClient) -> None:
    # A multipart body whose only part is a text field (httpx needs one part to send multipart).
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": "good"},
        data={"prompt": "x"},
        files={"other": ("a.txt", b"", "text/plain")},
    )
    assert "image_file" in assert_json_error(response, 400)


async def test_400_for_a_wrong_field_name(http: httpx.AsyncClient) -> None:
    response = await http.post(
        ENDPOINT, headers={"x-api-key": "good"}, files={"image": ("p.png", image_bytes())}
    )
    error = assert_json_error(response, 400)
    assert "image_file" in error
    assert "'image'" in error


async def test_400_for_two_image_file_parts(http: httpx.AsyncClient) -> None:
    files = [("image_file", ("a.png", image_bytes())), ("image_file", ("b.png", image_bytes()))]
    response = await http.post(ENDPOINT, headers={"x-api-key": "good"}, files=files)
    assert_json_error(response, 400)


async def test_400_for_an_extra_file_part(http: httpx.AsyncClient) -> None:
    files = {"image_file": ("a.png", image_bytes()), "mask_file": ("m.png", image_bytes())}
    response = await http.post(ENDPOINT, headers={"x-api-key": "good"}, files=files)
    assert "'mask_file'" in assert_json_error(response, 400)


async def test_400_for_an_extra_text_field(http: httpx.AsyncClient) -> None:
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": "good"},
        data={"target_width": "100"},
        files={"image_file": ("a.png", image_bytes())},
    )
    assert "'target_width'" in assert_json_error(response, 400)


async def test_extra_text_fields_pass_when_allowed(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    emulator = Emulator(EmulatorConfig(keys={"k": 1}, allow_extra_fields=True, limit=None))
    async with make_http(emulator) as http:
        response = await http.post(
            ENDPOINT,
            headers={"x-api-key": "k"},
            data={"note": "ignored"},
            files={"image_file": ("a.png", image_bytes())},
        )
    assert response.status_code == 200


async def test_400_for_image_file_sent_as_a_text_field(http: httpx.AsyncClient) -> None:
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": "good"},
        data={"image_file": "not a file"},
        files={"other": ("a.txt", b"x")},
    )
    assert "text field" in assert_json_error(response, 400)


async def test_400_for_a_malformed_multipart_body(http: httpx.AsyncClient) -> None:
    response = await http.post(
        ENDPOINT,
        headers={"x-api-key": "good", "content-type": "multipart/form-data"},  # no boundary
        content=b"--x\r\n\r\n",
    )
    assert_json_error(response, 400)


async def test_400_for_a_file_that_is_not_an_image(http: httpx.AsyncClient) -> None:
    response = await post_image(http, b"just some text, not pixels")
    assert "not a valid image" in assert_json_error(response, 400)


async def test_400_for_an_empty_file(http: httpx.AsyncClient) -> None:
    assert "empty" in assert_json_error(await post_image(http, b""), 400)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
async def test_400_for_an_unsupported_format(http: httpx.AsyncClient, fmt: str) -> None:
    error = assert_json_error(await post_image(http, image_bytes(fmt)), 400)
    assert f"Unsupported image format {fmt}" in error


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
async def test_400_for_a_corrupt_image(http: httpx.AsyncClient, fmt: str) -> None:
    data = image_bytes(fmt, (200, 150))
    truncated = data[: len(data) // 2]
    assert "could not be decoded" in assert_json_error(await post_image(http, truncated), 400)


@pytest.fixture(scope="module")
def over_25_megapixels() -> bytes:
    return image_bytes("PNG", (5001, 5000), mode="L")


@pytest.fixture(scope="module")
def exactly_25_megapixels() -> bytes:
    return image_bytes("PNG", (5000, 5000), mode="L")


async def test_400_over_25_megapixels(http: httpx.AsyncClient, over_25_megapixels: bytes) -> None:
    error = assert_json_error(await post_image(http, over_25_megapixels), 400)
    assert "5001x5000" in error


async def test_exactly_25_megapixels_is_accepted(
    make_http: Callable[[Emulator], httpx.AsyncClient], exactly_25_megapixels: bytes
) -> None:
    # Canned output: the point is the input check, not building a 25 MP map.
    emulator = Emulator(EmulatorConfig(keys={"k": 1}, synth="canned", limit=None))
    async with make_http(emulator) as http:
        response = await post_image(http, exactly_25_megapixels, key="k")
    assert response.status_code == 200


def padded_jpeg(total: int) -> bytes:
    # Decoders stop at the end-of-image marker: trailing bytes only make the file bigger.
    data = image_bytes("JPEG", (16, 16))
    return data + b"\0" * (total - len(data))


@pytest.mark.parametrize("total", [30_000_001, 33_000_000])
async def test_400_over_30_megabytes(http: httpx.AsyncClient, total: int) -> None:
    # 30_000_001: the file part is measured; 33 MB: the body is cut off while streaming.
    error = assert_json_error(await post_image(http, padded_jpeg(total)), 400)
    assert "too large" in error


async def test_400_when_a_body_without_content_length_streams_past_the_limit(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    boundary = b"b0undary"
    head = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="image_file"; filename="big.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield head + image_bytes("JPEG", (16, 16))
        for _ in range(40):  # 40 MB if it were all read
            sent += 1
            yield b"\0" * 1_000_000
        yield b"\r\n--" + boundary + b"--\r\n"

    response = await http.post(
        ENDPOINT,
        headers={
            "x-api-key": "good",
            "content-type": "multipart/form-data; boundary=" + boundary.decode(),
        },
        content=chunks(),
    )
    assert "too large" in assert_json_error(response, 400)
    assert "content-length" not in response.request.headers
    assert sent < 40  # the server stopped reading once past the limit
    assert emulator.credits("good") == 5


async def test_exactly_30_megabytes_is_accepted(http: httpx.AsyncClient) -> None:
    response = await post_image(http, padded_jpeg(30_000_000))
    assert response.status_code == 200


# -- 402 ----------------------------------------------------------------------------------------


async def test_402_when_the_key_has_no_credits(http: httpx.AsyncClient) -> None:
    assert_json_error(await post_image(http, image_bytes(), key="broke"), 402)


async def test_402_once_the_last_credit_is_spent(
    http: httpx.AsyncClient, emulator: Emulator
) -> None:
    emulator.set_credits("good", 1)
    first = await post_image(http, image_bytes())
    assert first.status_code == 200
    assert first.headers["x-remaining-credits"] == "0"
    assert_json_error(await post_image(http, image_bytes()), 402)


# -- 406 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept", ["application/json", "image/png", "text/html, image/webp", "image/jpeg;q=0"]
)
async def test_406_for_an_unacceptable_accept_header(http: httpx.AsyncClient, accept: str) -> None:
    assert_json_error(await post_image(http, image_bytes(), accept=accept), 406)


@pytest.mark.parametrize(
    "accept",
    [
        "image/jpeg",
        "*/*",
        "image/*",
        "image/jpeg, application/json;q=0.9",
        "application/json, */*;q=0.1",
        "IMAGE/JPEG",
    ],
)
async def test_acceptable_accept_headers(http: httpx.AsyncClient, accept: str) -> None:
    assert (await post_image(http, image_bytes(), accept=accept)).status_code == 200


async def test_no_accept_header_at_all_is_fine(http: httpx.AsyncClient) -> None:
    request = http.build_request(
        "POST",
        ENDPOINT,
        headers={"x-api-key": "good"},
        files={"image_file": ("a.png", image_bytes())},
    )
    del request.headers["accept"]
    assert (await http.send(request)).status_code == 200


# -- 429 ----------------------------------------------------------------------------------------


async def test_429_from_the_limiter_with_retry_after(
    make_http: Callable[[Emulator], httpx.AsyncClient], clock: FakeClock
) -> None:
    limit = ServerLimit(requests=2, per=60.0, policy="sliding")
    emulator = Emulator(EmulatorConfig(keys={"k": 10}, limit=limit, clock=clock))
    async with make_http(emulator) as http:
        clock.now = 100.0
        assert (await post_image(http, image_bytes(), key="k")).status_code == 200
        clock.now = 130.0
        assert (await post_image(http, image_bytes(), key="k")).status_code == 200
        clock.now = 140.5
        refused = await post_image(http, image_bytes(), key="k")
    assert_json_error(refused, 429)
    assert refused.headers["retry-after"] == "20"  # ceil(100 + 60 - 140.5)
    assert emulator.credits("k") == 8


# -- 5xx ----------------------------------------------------------------------------------------


async def test_500_from_the_server_costs_nothing(
    make_http: Callable[[Emulator], httpx.AsyncClient],
) -> None:
    faults = Faults(script=("500", "503"))
    emulator = Emulator(EmulatorConfig(keys={"k": 2}, faults=faults, limit=None))
    async with make_http(emulator) as http:
        assert_json_error(await post_image(http, image_bytes(), key="k"), 500)
        assert_json_error(await post_image(http, image_bytes(), key="k"), 503)
        assert (await post_image(http, image_bytes(), key="k")).status_code == 200
    assert emulator.credits("k") == 1


# -- order of checks, and what costs credits -------------------------------------------------------


async def test_only_successes_cost_credits(http: httpx.AsyncClient, emulator: Emulator) -> None:
    await post_image(http, b"not an image")
    await post_image(http, image_bytes("GIF"))
    await post_image(http, image_bytes(), accept="application/json")
    assert emulator.credits("good") == 5
    ok = await post_image(http, image_bytes())
    assert ok.headers["x-remaining-credits"] == "4"
    assert emulator.stats.credits_charged == 1


async def test_auth_comes_before_everything(http: httpx.AsyncClient) -> None:
    response = await post_image(http, b"junk", key=None, accept="application/json")
    assert response.status_code == 401
    response = await post_image(http, b"junk", key="gone", accept="application/json")
    assert response.status_code == 403


async def test_accept_before_credits_before_the_body(http: httpx.AsyncClient) -> None:
    assert (await post_image(http, b"junk", key="broke", accept="text/html")).status_code == 406
    assert (await post_image(http, b"junk", key="broke")).status_code == 402


async def test_the_limiter_counts_requests_that_fail_later(
    make_http: Callable[[Emulator], httpx.AsyncClient], clock: FakeClock
) -> None:
    emulator = Emulator(
        EmulatorConfig(keys={"k": 10}, limit=ServerLimit(requests=2, per=60.0), clock=clock)
    )
    async with make_http(emulator) as http:
        assert (await post_image(http, b"junk", key="k")).status_code == 400
        assert (await post_image(http, image_bytes(), key="k", accept="x/y")).status_code == 406
        limited = await post_image(http, b"junk", key="k", accept="x/y")
    assert limited.status_code == 429  # the limiter answers before Accept and the body


async def test_unknown_paths_and_methods_get_json_errors(http: httpx.AsyncClient) -> None:
    assert_json_error(await http.get(ENDPOINT, headers={"x-api-key": "good"}), 405)
    assert_json_error(await http.post("/portrait-depth-estimation/v1"), 404)


async def test_every_response_says_it_comes_from_the_emulator(http: httpx.AsyncClient) -> None:
    assert (await post_image(http, image_bytes())).headers["x-emulator"] == "clipnormals"
    assert (await post_image(http, image_bytes(), key=None)).headers["x-emulator"] == "clipnormals"


# -- the documentation's curl call, against a real loopback server ---------------------------------


@pytest.mark.loopback
def test_the_docs_curl_example_works_against_the_loopback_server(
    tmp_path: Path, portrait_jpeg: bytes
) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "this test needs curl on PATH"
    (tmp_path / "portrait.jpg").write_bytes(portrait_jpeg)
    with start_in_thread(EmulatorConfig(keys={"s3cret-key": 100})) as server:
        command = DOCS_CURL.replace("https://clipdrop-api.co", server.url).replace(
            "YOUR_API_KEY", "s3cret-key"
        )
        # The documented arguments unchanged; -sS and -D only report what came back.
        args = [*shlex.split(command), "-sS", "-D", "headers.txt"]
        args[0] = curl
        done = subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert server.emulator.credits("s3cret-key") == 99
    raw_headers = (tmp_path / "headers.txt").read_text().lower().splitlines()
    assert raw_headers[0].startswith("http/1.1 200")
    headers = dict(line.split(": ", 1) for line in raw_headers[1:] if ": " in line)
    assert headers["content-type"] == "image/jpeg"
    assert headers["x-remaining-credits"] == "99"
    assert headers["x-credits-consumed"] == "1"
    with Image.open(tmp_path / "result.jpg") as result:
        assert result.format == "JPEG"
        assert result.size == (512, 512)
