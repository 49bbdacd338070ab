"""Per-request bounds: what one request may make the server hold (prompt bytes, merge size, slot memory).

Every check runs before the work it bounds (tokenizing, reading adapter files, growing the slot
stacks) and raises a one-line error naming the field, its value and the limit: `BadRequest`
(INVALID_ARGUMENT) for a request that can never be served as sent, `TooLarge` (RESOURCE_EXHAUSTED)
for one that exceeds a configured memory limit.
"""

from __future__ import annotations

import math
import re

from registry.errors import TooLarge
from registry.modeling.merge import check_merge_options

from .errors import BadRequest

PROMPT_BYTES_PER_TOKEN = 8  # --max-prompt-bytes 0: this many bytes per token of the base's context
MESSAGE_OVERHEAD_BYTES = 16  # what one chat message adds to the templated prompt, counted against the byte limit
MAX_REQUEST_ID_CHARS = 128
MAX_ROUTING_KEY_CHARS = 256
FEEDBACK_SCORE_LIMIT = 1e6
FEEDBACK_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
REQUEST_SLACK_BYTES = 64 * 2**10  # params, stop strings, merge entries and protobuf framing of one GenerateRequest


def max_prompt_bytes(configured: int, context_len: int) -> int:
    return configured or context_len * PROMPT_BYTES_PER_TOKEN


def max_request_bytes(prompt_bytes: int) -> int:
    """The largest GenerateRequest the limits allow (the gRPC receive limit of an inference-only server)."""
    return 2 * prompt_bytes + REQUEST_SLACK_BYTES


def check_prompt_size(req, limit: int, context_len: int) -> None:
    """Refuse a prompt (or the messages' contents together) longer than `limit` bytes, before it is tokenized."""
    if req.messages:
        size = sum(len(m.content.encode()) + len(m.role) + MESSAGE_OVERHEAD_BYTES for m in req.messages)
        what = (f"messages are {size:,} bytes together ({len(req.messages):,} messages, "
                f"{MESSAGE_OVERHEAD_BYTES} bytes each for the template)")
    else:
        size, what = len(req.prompt.encode()), f"prompt is {len(req.prompt.encode()):,} bytes"
    if size > limit:
        raise BadRequest(f"{what}, more than --max-prompt-bytes {limit:,} (the base's context is {context_len} tokens); "
                         "shorten it")


def check_request_ids(req) -> None:
    for field, value, limit in (("request_id", req.request_id, MAX_REQUEST_ID_CHARS),
                                ("routing_key", req.routing_key, MAX_ROUTING_KEY_CHARS)):
        if len(value) > limit:
            raise BadRequest(f"{field} is {len(value):,} characters; at most {limit}")


def check_merge_request(req, max_adapters: int) -> tuple[float | None, str]:
    """The merge entries' count and the density/majority-sign options; returns (density or None, sign method)."""
    if len(req.merge) > max_adapters:
        raise BadRequest(f"merge has {len(req.merge)} entries; at most {max_adapters} (--max-merge-adapters)")
    density, sign = req.merge_density or None, req.merge_majority_sign_method or "total"
    check_merge_options(req.merge_method or "cat", len(req.merge), density, sign,
                        ("merge_method", "merge_density", "merge_majority_sign_method"))
    return density, sign


def merged_rank(method: str, ranks: list[int]) -> int:
    """The rank `merge_adapters` gives: cat sums the ranks; svd keeps the largest; the others need one rank."""
    if len(ranks) == 1:
        return ranks[0]
    return sum(ranks) if method == "cat" else max(ranks)


def check_merge_rank(key: str, rank: int, limit: int) -> None:
    if rank > limit:
        raise TooLarge(f"{key[:200]} has rank {rank}, more than --max-merge-rank {limit}; merge fewer or smaller adapters "
                       "(or use an *_svd method, which keeps the largest input rank)")


def slot_bytes(lora, rank: int) -> int:
    """Bytes of every adapter slot's storage (slot 0 included) with the stacks at `rank`."""
    per_rank = sum((layer.in_features + layer.out_features) * layer.stacked_A.element_size() for layer in lora.layers.values())
    return per_rank * rank * (lora.max_slots + 1)


def check_slot_memory(lora, key: str, rank: int, max_bytes: int) -> None:
    """Adapter slots are padded to the largest rank loaded: refuse an adapter whose rank would take them past `max_bytes`."""
    if rank <= lora.max_rank:
        return
    needed = slot_bytes(lora, rank)
    if needed > max_bytes:
        raise TooLarge(
            f"{key[:200]} has rank {rank}: the {lora.max_slots + 1} adapter slots at that rank take "
            f"{needed / 2**20:.0f} MB, more than --adapter-memory-mb {max_bytes / 2**20:.0f}; "
            f"serve adapters of rank {max_rank_within(lora, max_bytes)} or less, or raise --adapter-memory-mb"
        )


def max_rank_within(lora, max_bytes: int) -> int:
    return max_bytes // max(1, slot_bytes(lora, 1))


MAX_CORRECTION_CHARS = 64 * 1024  # a corrected response sent with feedback


def check_feedback(score: float, label: str, correction: str = "") -> None:
    if not (math.isfinite(score) and -FEEDBACK_SCORE_LIMIT <= score <= FEEDBACK_SCORE_LIMIT):
        raise BadRequest(f"score={score}: must be a finite number between -{FEEDBACK_SCORE_LIMIT:g} and {FEEDBACK_SCORE_LIMIT:g}")
    if label and not FEEDBACK_LABEL.fullmatch(label):
        raise BadRequest(f"label={label[:64]!r}{'...' if len(label) > 64 else ''}: use 1-64 characters of "
                         "letters, digits and _ . : - (e.g. good, bad, thumbs_up)")
    if len(correction) > MAX_CORRECTION_CHARS:
        raise BadRequest(f"correction: {len(correction):,} characters, more than {MAX_CORRECTION_CHARS:,}")
