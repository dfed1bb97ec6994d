"""The OpenAI-compatible adapter against a real HTTP server on loopback (FastAPI + uvicorn, started here)."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from support.reasoning import Behaviour, blob_volume, closed_port

from MedSegReasoning.reasoning import (
    ReasonerOutputError,
    ReasoningCancelled,
    ReasoningStrategy,
    create_reasoner,
    run_reasoning,
)
from MedSegReasoning.reasoning.openai_compat import API_KEY_ENV, is_loopback_url
from MedSegReasoning.reasoning.views import refine_views
from MedSegReasoning.volume.windowing import default_window
from MedSegReasoning.wire.errors import InputError, ServiceError

# Qwen2.5-VL convention on a 300x217 slice: the adapter sends it resized to 308x224 and boxes come in those pixels
ANSWER = (
    '{"reasoning": "A bright blob.", "targets": [{"slice": 7, "bbox": [77, 56, 154, 112], "points": [[115, 84]], '
    '"label": "blob", "ref": null}], "clarification": null}'
)
EXPECTED_BOX = (75, 54, 150, 108)
UNPADDED = ReasoningStrategy(pad_to_multiple=0)  # odd-sized views: the adapter must resize them itself


@pytest.fixture(scope="module")
def views():
    volume = blob_volume()
    return refine_views(volume, default_window(volume), UNPADDED, "axial", 7)


def reasoner_for(server, model="qwen2.5vl:7b", **options):
    options.setdefault("backoff_s", 0.01)
    return create_reasoner(f"openai:{server.base_url}#{model}", **options)


def test_non_streaming_success_sends_images_inline_and_converts(chat_server, views):
    chat_server.queue(Behaviour("json", ANSWER))
    reasoner = reasoner_for(chat_server, stream=False)
    answer = reasoner.reason(views, "where is the blob?")
    assert answer.targets[0].box == EXPECTED_BOX
    assert answer.stats.prompt_tokens == 100
    (body,) = chat_server.requests
    assert body["model"] == "qwen2.5vl:7b" and body["temperature"] == 0.0 and body["stream"] is False
    image_part, text_part = body["messages"][0]["content"]
    assert text_part["type"] == "text" and "where is the blob?" in text_part["text"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    from PIL import Image

    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert png.size == (308, 224)  # pre-resized: any server's smart_resize leaves it alone
    assert body["response_format"]["type"] == "json_schema"
    assert "Authorization" not in chat_server.headers[0] and "authorization" not in chat_server.headers[0]


def test_streaming_delivers_chunks_and_reasoning_content(chat_server, views):
    chunks = [ANSWER[i : i + 17] for i in range(0, len(ANSWER), 17)]
    chat_server.queue(Behaviour("stream", chunks=chunks, reasoning="The blob is bright."))
    received: list[str] = []
    answer = reasoner_for(chat_server).reason(views, "where?", on_text=received.append)
    assert answer.targets[0].box == EXPECTED_BOX
    assert "".join(received) == "<think>The blob is bright.</think>" + ANSWER
    assert len(received) == len(chunks) + 1
    assert answer.reasoning.startswith("The blob is bright.")
    assert answer.stats.finish_reason == "stop" and answer.stats.first_token_seconds is not None
    assert chat_server.requests[0]["stream"] is True


def test_api_key_comes_from_the_environment(chat_server, views, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "secret-token")
    chat_server.queue(Behaviour("json", ANSWER))
    reasoner_for(chat_server, stream=False).reason(views, "where?")
    assert chat_server.headers[0]["authorization"] == "Bearer secret-token"


def test_server_without_json_schema_support_is_asked_again_without_it(chat_server, views):
    chat_server.queue(
        Behaviour("status", "response_format json_schema is not supported by this server", status=400),
        Behaviour("json", ANSWER),
    )
    reasoner = reasoner_for(chat_server, stream=False)
    assert reasoner.reason(views, "where?").targets[0].box == EXPECTED_BOX
    assert ["response_format" in body for body in chat_server.requests] == [True, False]
    assert reasoner.identity.decoding["structured_output"] is False
    chat_server.queue(Behaviour("json", ANSWER))
    reasoner.reason(views, "where?")
    assert "response_format" not in chat_server.requests[0]  # remembered


def test_segzero_style_models_are_not_constrained_to_our_schema(chat_server, views):
    raw = '<think>blob</think><answer>{"bbox": [210, 210, 420, 420], "points_1": [315, 315], "points_2": [320, 320]}</answer>'
    chat_server.queue(Behaviour("json", raw))
    reasoner = reasoner_for(chat_server, model="MedReasoner-7B", stream=False)
    assert (reasoner.identity.convention, reasoner.identity.prompt_version) == ("fixed-840", "segzero-v1")
    assert reasoner.reason(views, "where?").targets[0].box == EXPECTED_BOX
    assert "response_format" not in chat_server.requests[0]


def test_http_500_is_retried_then_a_service_error(chat_server, views):
    chat_server.queue(Behaviour("status", "CUDA out of memory", status=500))
    with pytest.raises(ServiceError) as info:
        reasoner_for(chat_server, retries=2).reason(views, "where?")
    assert len(chat_server.requests) == 3
    assert "HTTP 500: CUDA out of memory" in str(info.value) and "3 attempts" in str(info.value)
    assert info.value.exit_code == 4


def test_a_transient_500_is_recovered_by_a_retry(chat_server, views):
    chat_server.queue(Behaviour("status", "busy", status=503), Behaviour("json", ANSWER))
    answer = reasoner_for(chat_server, stream=False, retries=1).reason(views, "where?")
    assert answer.targets[0].box == EXPECTED_BOX and len(chat_server.requests) == 2


@pytest.mark.parametrize(
    ("status", "detail"),
    [(401, "MEDSEG_REASONER_API_KEY"), (404, "usually ends in /v1"), (413, r"rejected the request \(HTTP 413")],
)
def test_client_errors_are_not_retried_and_say_what_to_do(chat_server, views, status, detail):
    chat_server.queue(Behaviour("status", "nope", status=status))
    with pytest.raises(ServiceError, match=detail):
        reasoner_for(chat_server, retries=3).reason(views, "where?")
    assert len(chat_server.requests) == 1


@pytest.mark.parametrize(
    ("behaviour", "detail"),
    [
        (Behaviour("raw", "this is not json"), "the server's reply is not a chat completion"),
        (Behaviour("raw", '{"choices": []}'), "the server's reply is not a chat completion"),
        (Behaviour("raw", '{"choices": [{"message": {"content": 42}}]}'), "message content is not text"),
        (Behaviour("stream-raw", chunks=["data: {not json\n\n", "data: [DONE]\n\n"]), "stream event that is not JSON"),
        (Behaviour("json", "I think it is the liver."), "contains no JSON object or list"),
    ],
    ids=["not-json", "no-choices", "content-not-text", "bad-sse", "model-garbage"],
)
def test_malformed_responses_are_reasoner_output_errors(chat_server, views, behaviour, detail):
    chat_server.queue(behaviour)
    with pytest.raises(ReasonerOutputError) as info:
        reasoner_for(chat_server).reason(views, "where?")
    assert detail in info.value.detail
    assert info.value.exit_code == 3


def test_stream_cut_without_finish_is_a_service_error(chat_server, views):
    event = '{"choices": [{"index": 0, "delta": {"content": "{\\"targets\\": ["}, "finish_reason": null}]}'
    chat_server.queue(Behaviour("stream-raw", chunks=[f"data: {event}\n\n"]))
    with pytest.raises(ServiceError, match="closed the stream before the answer was complete"):
        reasoner_for(chat_server).reason(views, "where?")


def test_timeout_is_a_service_error_naming_the_url(chat_server, views):
    chat_server.queue(Behaviour("json", ANSWER, delay_s=2.0))
    start = time.monotonic()
    with pytest.raises(ServiceError) as info:
        reasoner_for(chat_server, timeout_s=0.3).reason(views, "where?")
    assert time.monotonic() - start < 1.8
    assert f"{chat_server.base_url} timed out after 0.3 s" in str(info.value)


def test_refused_connection_is_a_service_error_after_bounded_retries(views):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    reasoner = create_reasoner(f"openai:{url}#m", retries=2, backoff_s=0.01)
    with pytest.raises(ServiceError) as info:
        reasoner.reason(views, "where?")
    message = str(info.value)
    assert url in message and "connection refused" in message and "after 3 attempts" in message
    assert info.value.exit_code == 4


def test_cancel_while_streaming(chat_server, views):
    chunks = ["thinking "] * 50 + [ANSWER]
    chat_server.queue(Behaviour("stream", chunks=chunks))
    cancel = threading.Event()
    received: list[str] = []

    def on_text(chunk: str) -> None:
        received.append(chunk)
        if len(received) == 3:
            cancel.set()

    with pytest.raises(ReasoningCancelled):
        reasoner_for(chat_server).reason(views, "where?", on_text=on_text, cancel=cancel)
    assert len(received) == 3


def test_two_step_run_over_http(chat_server):
    volume = blob_volume()
    pick = '{"reasoning": "slice 7", "targets": [{"slice": 7, "label": "blob", "ref": null}], "clarification": null}'
    chat_server.queue(Behaviour("json", pick), Behaviour("json", ANSWER))
    answer = run_reasoning(volume, reasoner_for(chat_server, stream=False), "segment the blob", UNPADDED)
    assert answer.targets[0].to_voxel_prompt().box == EXPECTED_BOX
    first, second = chat_server.requests
    answering = first["response_format"]["json_schema"]["schema"]["anyOf"][0]  # targets, or (anyOf[1]) a question
    assert answering["properties"]["targets"]["items"]["required"] == ["slice", "label", "ref"]
    answering = second["response_format"]["json_schema"]["schema"]["anyOf"][0]
    assert "bbox" in answering["properties"]["targets"]["items"]["required"]


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:8000/v1", "https://gpu.example.org/v1", "http://192.168.1.20:11434/v1"]
)
def test_remote_url_needs_allow_remote(url):
    with pytest.raises(InputError) as info:
        create_reasoner(f"openai:{url}#qwen2.5vl:7b")
    message = str(info.value)
    assert "--allow-remote" in message and "pixels only, no DICOM header" in message
    assert url.split("//")[1].split(":")[0].split("/")[0] in message
    reasoner = create_reasoner(f"openai:{url}#qwen2.5vl:7b", allow_remote=True)
    assert reasoner.model == "qwen2.5vl:7b"


def test_loopback_detection():
    for url in ("http://localhost:8000/v1", "http://127.0.0.1/v1", "http://127.8.9.1:1/v1", "http://[::1]:8000/v1"):
        assert is_loopback_url(url)
    for url in ("http://10.0.0.1/v1", "http://example.org/v1", "http://localhost.example.org/v1"):
        assert not is_loopback_url(url)


def test_spec_splits_at_the_first_hash_only():
    reasoner = create_reasoner("openai:http://127.0.0.1:11434/v1#hf.co/org/model:Q4#variant")
    assert reasoner.base_url == "http://127.0.0.1:11434/v1"
    assert reasoner.model == "hf.co/org/model:Q4#variant"
    with pytest.raises(InputError, match="separated by '#'"):
        create_reasoner("openai:http://127.0.0.1:11434/v1")
    with pytest.raises(InputError, match="not an http"):
        create_reasoner("openai:ftp://127.0.0.1/v1#m")


def test_grey_images_travel_as_one_channel_png():
    from PIL import Image

    from MedSegReasoning.reasoning.openai_compat import png_data_url

    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    png = Image.open(io.BytesIO(base64.b64decode(png_data_url(grey).split(",", 1)[1])))
    assert png.mode == "L" and np.array_equal(np.asarray(png), grey[..., 0])


def test_text_only_sends_the_prompt_alone_as_a_string_and_says_so_in_the_identity(chat_server, views):
    chat_server.queue(Behaviour("json", ANSWER))
    reasoner = reasoner_for(chat_server, stream=False, text_only=True)
    assert reasoner.identity.decoding["text_only"] is True
    assert reasoner.reason(views, "where is the blob?").targets[0].box == EXPECTED_BOX
    (body,) = chat_server.requests
    content = body["messages"][0]["content"]
    assert isinstance(content, str) and "where is the blob?" in content  # no image parts: a text model's template
    assert "text_only" not in reasoner_for(chat_server).identity.decoding  # the default identity is unchanged


def test_an_answer_leaves_the_reasoner_unchanged_so_threads_can_share_it(chat_server, views):
    """The total deadline was an attribute set per answer: a second thread's answer moved the first one's."""
    chat_server.queue(Behaviour("stream", chunks=[ANSWER]))
    reasoner = reasoner_for(chat_server)
    before = dict(vars(reasoner))
    reasoner.reason(views, "where?")
    assert vars(reasoner) == before


def test_a_refusal_naming_json_object_is_asked_again_in_that_form(chat_server, views):
    """llama-cpp-python's server: HTTP 500 for ``json_schema``, naming the one form it knows (not retried as a 500)."""
    refusal = "1 validation error: response_format.type: Input should be 'text' or 'json_object'"
    chat_server.queue(Behaviour("status", refusal, status=500), Behaviour("json", ANSWER))
    reasoner = reasoner_for(chat_server, stream=False, retries=2)
    assert reasoner.reason(views, "where?").targets[0].box == EXPECTED_BOX
    first, second = chat_server.requests
    assert first["response_format"]["type"] == "json_schema"
    assert second["response_format"]["type"] == "json_object" and "anyOf" in second["response_format"]["schema"]
    assert reasoner.identity.decoding["response_format"] == "json_object"


def test_a_stream_ended_by_done_without_a_finish_reason_is_a_service_error(chat_server, views):
    """llama-cpp-python's server interrupts a running answer with [DONE] when another request arrives."""
    event = {"choices": [{"index": 0, "delta": {"content": '{"reasoning": "a'}, "finish_reason": None}]}
    chat_server.queue(Behaviour("stream-raw", chunks=[f"data: {json.dumps(event)}\n\n", "data: [DONE]\n\n"]))
    with pytest.raises(ServiceError, match="ended the stream before the answer was complete.*--interrupt_requests"):
        reasoner_for(chat_server).reason(views, "where?")
