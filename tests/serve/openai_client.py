"""gptpipe serve through the openai Python package (tests/serve/openai_client.rs runs it).

Usage: openai_client.py PORT MODEL EXPECTED_JSON

EXPECTED_JSON holds the samples 0 and 1 that `gptpipe generate --format jsonl` printed for
prefix "The fox", length 12, seed 5 and the served stage's sampling keys (prefix dropped).
"""

import json
import sys

import openai

port, model, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(expected_path) as f:
    expected = json.load(f)
assert len(expected) == 2, expected

client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
ASK = dict(model=model, prompt="The fox", max_tokens=12, seed=5)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# /v1/models names the served model.
models = [m.id for m in client.models.list()]
check(models == [model], f"models.list() gave {models}, not [{model!r}]")

# Two samples, as `gptpipe generate` makes them, with usage that adds up.
done = client.completions.create(n=2, **ASK)
check(done.object == "text_completion", done)
check(done.model == model, done)
check([c.index for c in done.choices] == [0, 1], done.choices)
for choice, sample in zip(done.choices, expected):
    check(
        choice.text == sample["text"],
        f"choice {choice.index}: served {choice.text!r}, gptpipe generate printed {sample['text']!r}",
    )
    want = "stop" if sample["truncated"] else "length"
    check(choice.finish_reason == want, f"finish_reason {choice.finish_reason!r}, not {want!r}")
u = done.usage
check(u.prompt_tokens == 2, f"'The fox' is 2 GPT-2 tokens, usage says {u}")
check(u.completion_tokens == sum(len(s["tokens"]) for s in expected), f"usage {u} vs {expected}")
check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage does not add up: {u}")
print("completions:", [c.text for c in done.choices], u)

# Streamed: the chunks of each choice add up to the same text, and a finish_reason ends it.
texts, reasons, usage, chunks = ["", ""], [None, None], None, 0
for chunk in client.completions.create(
    n=2, stream=True, stream_options={"include_usage": True}, **ASK
):
    chunks += 1
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        check(reasons[c.index] is None, f"choice {c.index} went on after its finish_reason")
        texts[c.index] += c.text
        reasons[c.index] = c.finish_reason
check(texts == [c.text for c in done.choices], f"streamed {texts}, not {done.choices}")
check(reasons == [c.finish_reason for c in done.choices], f"finish reasons {reasons}")
check(usage is not None and usage.total_tokens == u.total_tokens, f"streamed usage {usage}")
check(chunks > 4, f"only {chunks} chunks: the text did not stream")
print("streamed in", chunks, "chunks")

# A list of prompts: one choice per prompt (and n), indices from 0; each prompt samples
# with the request's seed, so "The fox" gives sample 0 again.
many = client.completions.create(model=model, prompt=["The fox", "The dog"], max_tokens=12, seed=5)
check([c.index for c in many.choices] == [0, 1], many.choices)
check(many.choices[0].text == expected[0]["text"], many.choices)
many = client.completions.create(
    model=model, prompt=["The fox", "The dog"], max_tokens=4, seed=5, n=2
)
check(sorted(c.index for c in many.choices) == [0, 1, 2, 3], many.choices)

# echo keeps the prompt.
echoed = client.completions.create(echo=True, **ASK)
check(echoed.choices[0].text == "The fox" + expected[0]["text"], echoed.choices)

# stop: the text ends before the stop string (and the rest is as without it).
full = expected[1]["text"]
words = full.split()
check(len(words) >= 3, f"sample 1 is too short to pick a stop string from: {full!r}")
stop = " " + words[2]
cut = client.completions.create(n=2, stop=[stop, "never seen"], **ASK).choices[1]
check(cut.text == full[: full.index(stop)], f"stop {stop!r}: {cut.text!r} from {full!r}")
check(cut.finish_reason == "stop", cut)
print("stop", repr(stop), "->", repr(cut.text))


# Bad values: 400, as openai.BadRequestError, naming the field.
def refused(field, **bad):
    try:
        client.completions.create(**{**ASK, **bad})
    except openai.BadRequestError as e:
        check(e.status_code == 400, e)
        check(field in str(e), f"the error does not name {field}: {e}")
        check(getattr(e, "param", None) == field, f"param {getattr(e, 'param', None)!r}: {e}")
        print("refused:", e)
        return
    raise AssertionError(f"{bad} was accepted")


refused("temperature", temperature="hot")
refused("temperature", extra_body={"temperature": "hot"})
refused("max_tokens", max_tokens=-1)
refused("n", n=0)
refused("top_p", top_p=7)

# Another model's name: 404.
try:
    client.completions.create(**{**ASK, "model": "gpt-4"})
    raise AssertionError("another model's name was accepted")
except openai.NotFoundError as e:
    check(model in str(e), e)

print("ok")
