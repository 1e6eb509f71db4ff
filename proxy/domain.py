"""The value types every layer shares: what was asked, what came back, what it took."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, Literal, Protocol

TIERS: tuple[str, ...] = ("0.5K", "1K", "2K", "4K")
# Long edge of a square image at each tier; other aspect ratios keep about the same pixel count.
TIER_EDGE: dict[str, int] = {"0.5K": 512, "1K": 1024, "2K": 2048, "4K": 4096}
ASPECT_RATIOS: tuple[str, ...] = (
    "1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
    "1:4", "4:1", "1:8", "8:1",
)
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

Kind = Literal["generate", "edit"]


@dataclass(frozen=True, slots=True)
class Geometry:
    """Requested shape: an aspect ratio and a resolution tier, plus the exact size if one was given.

    `source` names the request parameter the shape came from, so a route that cannot serve it
    is reported against that parameter.
    """

    aspect_ratio: str
    tier: str
    exact_size: str | None
    source: str


@dataclass(frozen=True, slots=True)
class InputImage:
    """A reference image: uploaded bytes, or a URL (https or data:) to hand on as given."""

    mime: str
    data: bytes | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    """How to choose among a model's routes: a strategy and optional constraints.

    None (or empty) means "not said here": policies from the request, the key and the model
    are layered with `over`, the first one that says something winning.
    """

    strategy: str | None = None
    max_price: Decimal | None = None  # USD per image
    max_latency_s: float | None = None  # a route's recent p95 must meet it
    only: frozenset[str] = frozenset()  # provider names
    ignore: frozenset[str] = frozenset()
    hedge: bool | None = None
    # "discount": only a discount lane (wait for the discount, never pay interactive prices);
    # "standard": never one; None: one only for a request that can wait (routing/planning.py)
    lane: str | None = None

    def over(self, fallback: Policy) -> Policy:
        """This policy, with what it leaves unsaid taken from `fallback`."""
        return Policy(
            strategy=self.strategy or fallback.strategy,
            max_price=self.max_price if self.max_price is not None else fallback.max_price,
            max_latency_s=self.max_latency_s if self.max_latency_s is not None
            else fallback.max_latency_s,
            only=self.only or fallback.only, ignore=self.ignore | fallback.ignore,
            hedge=self.hedge if self.hedge is not None else fallback.hedge,
            lane=self.lane or fallback.lane,
        )


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """One validated images request, independent of how it arrived (JSON or multipart)."""

    kind: Kind
    model: str
    prompt: str
    n: int
    geometry: Geometry
    output_format: str
    response_format: Literal["b64_json", "url"]
    quality: str = "auto"
    background: str = "auto"
    output_compression: int | None = None
    moderation: str | None = None
    style: str | None = None
    user: str | None = None
    seed: int | None = None
    input_fidelity: str | None = None
    images: tuple[InputImage, ...] = ()
    mask: InputImage | None = None
    policy: Policy = Policy()
    # How long the caller can wait for the result (a batch item: the rest of its completion
    # window); None for an interactive request. Only patient requests may take deferred routes.
    patience_s: float | None = None
    # A stable name for this piece of work across retries and restarts (the queued job's id):
    # a deferred host is given it, so a resumed job finds what it already submitted.
    ticket: str | None = None
    # The response cache (proxy/api/caching.py): how long an answer may be kept and reused,
    # in seconds, as the request asked (`cache: {"ttl_s": …}`; 0: not from or into the
    # cache); None: the request said nothing, and its key, model or seed decide.
    cache_ttl_s: int | None = None
    # A streamed request: how many partial images the client asked for (0 to 3), and where a
    # host that streams them relays them as they arrive (None: the client does not stream).
    partial_images: int = 0
    partials: Partials | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PartialImage:
    """A draft of an image that a host streamed before the final one: relayed to the client
    as it arrives, never billed, never kept."""

    b64: str
    index: int  # 0-based, per the host's count
    mime: str
    size: str | None = None
    quality: str | None = None
    background: str | None = None


class Partials(Protocol):
    """Where a streamed request's partial images go: the client's event stream. The first
    route to relay one owns the stream from then on (the client saw that host's drafts)."""

    def put(self, route_id: str, image: PartialImage) -> bool:
        """Relay `image`; False (and dropped) when the stream is another route's."""

    def on_commit(self, commit: Callable[[str], None]) -> None:
        """Have `commit(route_id)` called when the first image is relayed."""


@dataclass(frozen=True, slots=True)
class Image:
    """One delivered image, its base64 text passed through untouched; `data` holds its bytes
    only where they were needed (verified for a link: proxy.verify)."""

    mime: str
    b64: str
    revised_prompt: str | None = None
    data: bytes | None = field(default=None, repr=False)


# More tokens than any image request could use: a count past it is not one a host could bill.
MAX_TOKENS = 100_000_000


def token_count(value: Any) -> int:
    """A token count as a host reported it: a whole number from 0 to MAX_TOKENS. Anything
    else (negative, past it, not a number) is taken as not reported (0), so the bill falls
    back to the route's price per image; a bill never goes below zero or past the ledger's
    columns on a host's word."""
    whole = isinstance(value, float) and value.is_integer()
    if whole or (isinstance(value, str) and value.isascii() and value.isdigit()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS:
        return 0
    return value


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts as the upstream reported them (token-priced hosts bill from these)."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_image_tokens: int = 0
    output_image_tokens: int = 0

    @staticmethod
    def total(usages: Iterable[Usage | None]) -> Usage | None:
        """The counts of several calls' results added up (None if no call reported any). If
        some said their image tokens and others did not, the sum covers only some images:
        it holds none then, and the bill falls back to the price per image for all."""
        each = list(usages)
        known = [u for u in each if u is not None]
        if not known:
            return None
        summed = Usage(*(sum(getattr(u, f.name) for u in known) for f in fields(Usage)))
        if all(u is not None and u.output_image_tokens for u in each):
            return summed
        return Usage(summed.input_tokens, summed.output_tokens, summed.input_image_tokens, 0)


@dataclass(frozen=True, slots=True)
class ImageResult:
    """What an adapter returns: the images, and what the upstream said about them."""

    images: tuple[Image, ...]
    size: str | None = None
    upstream_id: str | None = None
    usage: Usage | None = None
    # The upstream's own format, when Switchyard converted the images to the asked one.
    converted_from: str | None = None
    # Words the host sent beside the images (Gemini's text parts): chat and Gemini answers
    # carry them; an images response has no place for them.
    text: str | None = None
    # How many images the host made, where it made more than were asked and the extra ones
    # were cut (proxy.verify): it bills them all, the tenant pays for those delivered.
    made: int | None = None
    # The host served it at another tier than the route is priced at (Gemini's Priority lane
    # past its limits serves, and bills, at the standard tier): its cost is the route's price
    # times this.
    price_factor: Decimal | None = None

    @property
    def images_made(self) -> int:
        return self.made if self.made is not None else len(self.images)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one route, successful or not: the response headers list every attempt.

    `failure` is a failure class, or "hedged" for an attempt cancelled because another won;
    `cost_usd` is what the upstream is expected to charge for it (a cancelled hedge that was
    already submitted is counted at its quote: hosts bill work they started).
    """

    route_id: str
    provider: str
    failure: str | None
    seconds: float
    cost_usd: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Served:
    """A request's successful outcome: the result, the route that produced it and its cost."""

    result: ImageResult
    route_id: str
    provider: str
    upstream_model: str
    cost_usd: Decimal
    attempts: tuple[Attempt, ...]
    # The upstream's own format, when Switchyard converted to the asked output_format.
    converted_from: str | None = None
    strategy: str = "cheapest"
    quote_usd: Decimal = Decimal(0)  # the chosen route's price for this request, before the call
    upstream_s: float = 0.0  # wall time spent waiting on upstream attempts

    @property
    def hedge_cost_usd(self) -> Decimal:
        """What attempts that lost a hedge are expected to cost on top of `cost_usd`."""
        return sum((a.cost_usd for a in self.attempts if a.failure == "hedged"), Decimal(0))
