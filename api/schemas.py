"""The API contract: pydantic models that generate the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vision.recommender import CHANNELS, EVENT_TYPES

PRODUCT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"


# Where a photo or an event came from, and what a shopper did: the shopper model's own lists
# (vision.recommender), less padding, so the API can never accept a value the model does not read.
Channel = Enum("Channel", {name: name for name in CHANNELS[1:]}, type=str)
Channel.__doc__ = "where the request came from"


class ErrorBody(BaseModel):
    code: str = Field(examples=["unreadable_image"])
    message: str
    details: list | dict | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CategoryRef(BaseModel):
    fine: str
    coarse: str


class Match(BaseModel):
    product_id: str
    name: str
    category: CategoryRef
    score: float = Field(
        description="ranking score: visual_score + head_weight x category_probability (the latter term only when the model knows the category) + personal_weight x personal_score (only for a shopper with history)"
    )
    visual_score: float = Field(description="cosine similarity of the photo to the product's best-matching photo")
    category_probability: float | None = Field(
        description="the model's probability for the product's fine category; null when the model does not know it"
    )
    personal_score: float | None = Field(
        None,
        description="the shopper model's share of this product among the candidates (user_id with history); null otherwise",
    )
    image_url: str = Field(description="the product photo that matched")
    thumbnail_url: str


class CategoryScore(BaseModel):
    name: str
    probability: float


class Categories(BaseModel):
    fine: list[CategoryScore]
    coarse: list[CategoryScore]


class Timings(BaseModel):
    sync: float = Field(description="catching up with the catalogue's change log (other replicas' writes)")
    decode: float
    detect: float | None = Field(None, description="objects=true: the crops' decode and the detector")
    embed: float
    search: float
    total: float


class ModelInfo(BaseModel):
    id: str
    version: str


class ObjectBox(BaseModel):
    x0: float = Field(ge=0, le=1, description="left edge, as a fraction of the upright photo's width")
    y0: float = Field(ge=0, le=1, description="top edge, as a fraction of the upright photo's height")
    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)


class SearchObject(BaseModel):
    box: ObjectBox = Field(description="where the product is, in the photo after its EXIF rotation")
    score: float = Field(description="the detector's confidence that a product is there")
    matched: bool = Field(description="whether the object's first match is judged to be it (as `matched`)")
    match_confidence: float
    matches: list[Match] = Field(description="the object's products, by the same rule as a whole-photo search")
    categories: Categories


class SearchResponse(BaseModel):
    matched: bool = Field(
        description="whether the first match is judged to be the photographed product: false means no exact "
        "match, the list holds similar products (the rule: vision/match_rule.py, calibrated on val)"
    )
    match_confidence: float = Field(description="what `matched` was decided on: the mean of the first match's "
                                    "visual score and the smaller of it and its category's probability")  # fmt: skip
    matches: list[Match]
    categories: Categories
    timings_ms: Timings
    model: ModelInfo
    personal_model: str | None = Field(
        None, description="the shopper model version (id:version) that re-ranked the matches; null when none did"
    )
    channel: Channel
    objects: list[SearchObject] | None = Field(
        None, description="objects=true: each product found in the photo, best first ([] when none)"
    )
    detector: str | None = Field(None, description="objects=true: the detector version (id:version) that found them")


class ProductBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=300)
    fine_category: str = Field(min_length=1, max_length=100)
    coarse_category: str = Field(min_length=1, max_length=100)
    description: str = Field("", max_length=10_000)
    attributes: dict[str, str] = Field(default_factory=dict)


class ProductCreate(ProductBase):
    product_id: str = Field(pattern=PRODUCT_ID_PATTERN, examples=["Granny-Smith"])


class ProductPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=300)
    fine_category: str | None = Field(None, min_length=1, max_length=100)
    coarse_category: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=10_000)
    attributes: dict[str, str] | None = None


class ImageOut(BaseModel):
    image_id: int
    url: str
    thumbnail_url: str
    content_type: str
    width: int
    height: int
    bytes: int
    created_at: float


class ProductOut(BaseModel):
    product_id: str
    name: str
    fine_category: str
    coarse_category: str
    description: str
    attributes: dict[str, str]
    images: list[ImageOut]
    created_at: float
    updated_at: float


class ProductPage(BaseModel):
    items: list[ProductOut]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null on the last page")


class ImagesAdded(BaseModel):
    product_id: str
    added: list[ImageOut]
    skipped_duplicates: int = Field(description="photos the product already had (same bytes)")


class FineCategory(BaseModel):
    name: str
    coarse: str
    products: int


class CoarseCategory(BaseModel):
    name: str
    products: int


class CategoryList(BaseModel):
    fine: list[FineCategory]
    coarse: list[CoarseCategory]
    model_fine_labels: list[str] = Field(description="fine categories the served model's heads predict")
    model_coarse_labels: list[str]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model_loaded: bool
    index_loaded: bool
    products: int
    vectors: int
    model: ModelInfo
    reason: str | None = None


# -- tagging jobs ---------------------------------------------------------------------------------


class TaggingJob(BaseModel):
    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    kind: Literal["zip", "csv"]
    total: int = Field(description="photos in the input")
    done: int = Field(description="photos tagged so far")
    rate: float = Field(description="photos per second while running")
    eta_s: float | None = Field(description="estimated seconds to completion while running")
    created: float = Field(description="Unix time")
    started: float | None
    finished: float | None
    error: str | None
    duplicate_groups: int | None = Field(description="near-duplicate groups found (when done)")
    results_url: str


class TaggingJobList(BaseModel):
    jobs: list[TaggingJob]


class DuplicateGroup(BaseModel):
    id: int
    photos: list[str]
    thumbnail_urls: list[str]


class DuplicateGroups(BaseModel):
    groups: list[DuplicateGroup]


# -- reviewing a tagging job -----------------------------------------------------------------------

ReviewReason = Literal["low_confidence", "flagged", "unmatched", "duplicate", "unreadable"]
ReviewFilter = Literal["all", "needs_review", "low_confidence", "flagged", "unmatched", "duplicate", "undecided"]


class NewProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: str = Field(pattern=PRODUCT_ID_PATTERN, examples=["Oatly-Oat-Milk"])
    name: str = Field(min_length=1, max_length=300)
    fine_category: str = Field(min_length=1, max_length=100)
    coarse_category: str = Field(min_length=1, max_length=100)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: str = Field(min_length=1, max_length=1000, description="the photo's path in the job")
    action: Literal["add_photo", "new_product", "skip"]
    product_id: str | None = Field(None, pattern=PRODUCT_ID_PATTERN, description="add_photo: the product")
    product: NewProductIn | None = Field(None, description="new_product: the product to create")


class DecisionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decisions: list[DecisionIn] = Field(min_length=1, max_length=5000)


class DecisionOut(BaseModel):
    action: Literal["add_photo", "new_product", "skip"]
    product_id: str | None
    product: NewProductIn | None
    decided_at: float
    outcome: Literal["applied", "skipped", "failed"] | None = Field(description="None until an apply settles it")
    error: str | None
    applied_at: float | None


class DecisionsRecorded(BaseModel):
    recorded: int
    pending: int = Field(description="decisions of the job that no apply has settled yet")


class TagMatch(BaseModel):
    product_id: str
    score: float


class ReviewRow(BaseModel):
    path: str
    status: str
    fine: str | None = None
    fine_probability: float | None = None
    coarse: str | None = None
    coarse_probability: float | None = None
    matches: list[TagMatch] = []
    matched: bool | None = Field(None, description="the first match judged to be the photographed product")
    match_confidence: float | None = None
    flags: list[str] = []
    duplicate_group: int | None = None
    error: str | None = None
    review_reasons: list[ReviewReason]
    thumbnail_url: str
    decision: DecisionOut | None


class ReviewPage(BaseModel):
    job_id: str
    total: int = Field(description="photos that pass the filter")
    offset: int
    rows: list[ReviewRow]
    counts: dict[str, int] = Field(description="photos per filter, for the filter buttons")


class AppliedProduct(BaseModel):
    product_id: str
    created: bool
    photos: list[str]
    added: int = Field(description="photos added (one the product already has is not added twice)")


class FailedProduct(BaseModel):
    product_id: str
    photos: list[str]
    error: str


class ApplyResult(BaseModel):
    applied: list[AppliedProduct]
    failed: list[FailedProduct]
    skipped: int
    remaining: int = Field(description="products still to apply after this call (with max_products)")


# -- shopper events and personal recommendations ----------------------------------------------------

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@\-]{0,127}$"
EventType = Literal[tuple(EVENT_TYPES[1:])]


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(pattern=USER_ID_PATTERN, examples=["shopper-42"])
    product_id: str = Field(pattern=PRODUCT_ID_PATTERN, examples=["Oatly-Oat-Milk"])
    type: EventType
    channel: Channel
    timestamp: datetime = Field(description="when it happened (ISO 8601; without an offset it is taken as UTC)")
    event_id: str | None = Field(
        None, min_length=1, max_length=128, description="idempotency key: an event_id seen before is ignored"
    )


class EventBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    events: list[EventIn] = Field(min_length=1, max_length=1000)


class EventsAccepted(BaseModel):
    accepted: int = Field(description="events stored")
    duplicates: int = Field(description="events ignored because their event_id was seen before")


class HistoryEvent(BaseModel):
    product_id: str
    type: EventType
    channel: Channel
    timestamp: datetime
    event_id: str | None


class UserHistory(BaseModel):
    user_id: str
    events: list[HistoryEvent] = Field(description="every channel merged, oldest first")


class Recommendation(BaseModel):
    product_id: str
    name: str
    category: CategoryRef
    score: float = Field(
        description="the shopper model's probability for this product among the catalogue (popularity share for 'popular')"
    )
    thumbnail_url: str | None


class Recommendations(BaseModel):
    user_id: str
    source: Literal["model", "popular"] = Field(
        description="'popular' when the shopper has no usable history or no shopper model is loaded"
    )
    model: str | None
    recommendations: list[Recommendation]
